"""The PROXY protocol header (sans-IO): both versions, byte-exact limits, and property tests.

The encoders below are written here from haproxy.org's proxy-protocol.txt, not taken from the
product (which only reads headers).
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miningproxy.stratum.proxy_protocol import (
    MAX_HEADER,
    V1_MAX,
    V2_MAX,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    header_length,
    parse_header,
)


def v1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    proto = "TCP4" if ipaddress.ip_address(source[0]).version == 4 else "TCP6"
    return f"PROXY {proto} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n".encode()


def v2(
    source: tuple[str, int] | None,
    destination: tuple[str, int] | None,
    *,
    command: int = 0x21,
    family: int | None = None,
    tlvs: bytes = b"",
) -> bytes:
    body = b""
    if source is not None and destination is not None:
        src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
        family = family if family is not None else (0x11 if src.version == 4 else 0x21)
        body = src.packed + dst.packed + source[1].to_bytes(2, "big") + destination[1].to_bytes(2, "big")
    family = 0x00 if family is None else family
    body += tlvs
    return V2_SIGNATURE + bytes([command, family]) + len(body).to_bytes(2, "big") + body


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + len(value).to_bytes(2, "big") + value


# --- examples ------------------------------------------------------------------------------------


def test_version_1_names_the_rig_and_the_balancer_address_it_reached():
    data = b"PROXY TCP4 203.0.113.7 10.0.0.2 51234 8000\r\n"
    assert header_length(data + b'{"id": 1}\n') == len(data)
    assert parse_header(data) == ProxyHeader(1, len(data), ("203.0.113.7", 51234), ("10.0.0.2", 8000))
    six = b"PROXY TCP6 2001:DB8:0:0:0:0:0:7 2001:db8::2 443 8000\r\n"
    assert parse_header(six).source == ("2001:db8::7", 443)  # addresses come out in canonical form


def test_version_1_limits_are_the_specifications():
    # The spec's longest lines: TCP4 56 bytes, TCP6 104, UNKNOWN with addresses 107.
    tcp4 = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
    full6 = ":".join(["ffff"] * 8)
    tcp6 = f"PROXY TCP6 {full6} {full6} 65535 65535\r\n".encode()
    unknown = f"PROXY UNKNOWN {full6} {full6} 65535 65535\r\n".encode()
    assert (len(tcp4), len(tcp6), len(unknown)) == (56, 104, V1_MAX)
    assert parse_header(tcp4).source == ("255.255.255.255", 65535)
    assert parse_header(tcp6).source == ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)
    assert parse_header(unknown) == ProxyHeader(1, V1_MAX, None, None)
    assert parse_header(b"PROXY UNKNOWN\r\n") == ProxyHeader(1, 15, None, None)
    # One byte more and no CRLF yet: not a header.
    with pytest.raises(ProxyHeaderError, match="longer than 107"):
        header_length(unknown[:-2] + b"xx")


def test_version_2_with_tlvs_local_and_families_without_a_client():
    header = v2(("198.51.100.9", 40000), ("10.0.0.2", 8000), tlvs=tlv(0xEA, b"vpce-0123456789abcdef"))
    assert header_length(header + b"\x16\x03\x01") == len(header)  # a TLS ClientHello follows
    assert parse_header(header) == ProxyHeader(2, len(header), ("198.51.100.9", 40000), ("10.0.0.2", 8000))
    six = v2(("2001:db8::7", 1), ("2001:db8::2", 8000))
    assert parse_header(six).source == ("2001:db8::7", 1)
    # LOCAL (the balancer's health check), UNSPEC and AF_UNIX: no client, the connection's own stands.
    assert parse_header(v2(None, None, command=0x20)).source is None
    assert parse_header(v2(None, None, family=0x00)).source is None
    unix = V2_SIGNATURE + bytes([0x21, 0x31]) + (216).to_bytes(2, "big") + bytes(216)
    assert parse_header(unix).source is None


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"GET / HTTP/1.1\r\n", "no PROXY protocol header"),
        (b'{"id": 1, "method": "subscribe"}\n', "no PROXY protocol header"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 080 80\r\n", "not a port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 80 65536\r\n", "not a port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 80\r\n", "not a port"),
        (b"PROXY TCP4 ::1 5.6.7.8 80 80\r\n", "not an IPv4 address"),
        (b"PROXY TCP6 1.2.3.4 ::1 80 80\r\n", "not an IPv6 address"),
        (b"PROXY TCP4 1.2.3.04 5.6.7.8 80 80\r\n", "not an IPv4 address"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n", "expected 'PROXY TCP4|TCP6"),
        (b"PROXY TCP4  1.2.3.4 5.6.7.8 80 80\r\n", "expected 'PROXY TCP4|TCP6"),
        (b"PROXY UDP4 1.2.3.4 5.6.7.8 80 80\r\n", "expected 'PROXY TCP4|TCP6"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 80 80\n", "bare LF"),
        ("PROXY TCP4 1.2.3.4 5.6.7.8 8\u0660 80\r\n".encode(), "not ASCII"),
        (V2_SIGNATURE + bytes([0x11, 0x11, 0, 12]) + bytes(12), "version 1"),
        (V2_SIGNATURE + bytes([0x22, 0x11, 0, 12]) + bytes(12), "unknown command 2"),
        (V2_SIGNATURE + bytes([0x21, 0x12, 0, 12]) + bytes(12), "0x12"),  # UDP
        (V2_SIGNATURE + bytes([0x21, 0x11, 0, 11]) + bytes(11), "12 needed"),
        (V2_SIGNATURE + bytes([0x21, 0x21, 0, 12]) + bytes(12), "36 needed"),
        (V2_SIGNATURE + bytes([0x21, 0x11]) + (V2_MAX - 15).to_bytes(2, "big"), f"at most {V2_MAX}"),
    ],
)
def test_bad_headers_are_refused_with_the_reason(data, words):
    with pytest.raises(ProxyHeaderError, match=words.replace("+", r"\+").replace("|", r"\|")):
        parse_header(data)


def test_a_header_is_parsed_only_whole():
    data = b"PROXY TCP4 1.2.3.4 5.6.7.8 80 80\r\n"
    with pytest.raises(ProxyHeaderError, match="one whole PROXY header"):
        parse_header(data[:-1])
    with pytest.raises(ProxyHeaderError, match="one whole PROXY header"):
        parse_header(data + b"{")


# --- properties ----------------------------------------------------------------------------------

ports = st.integers(0, 65535)
endpoints4 = st.tuples(st.ip_addresses(v=4).map(str), ports)
endpoints6 = st.tuples(st.ip_addresses(v=6).map(str), ports)
pairs = st.tuples(endpoints4, endpoints4) | st.tuples(endpoints6, endpoints6)


def canonical(endpoint: tuple[str, int]) -> tuple[str, int]:
    return str(ipaddress.ip_address(endpoint[0])), endpoint[1]


headers = st.one_of(
    pairs.map(lambda p: (v1(*p), p)),
    st.tuples(pairs, st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=4)).map(
        lambda t: (v2(*t[0], tlvs=b"".join(tlv(k, v) for k, v in t[1])), t[0])
    ),
)


@given(headers, st.binary(max_size=64))
def test_every_header_is_found_whole_and_not_a_byte_more(header_and_ends, after):
    header, (source, destination) = header_and_ends
    # However little of it has arrived, the length is unknown yet (every byte given may still
    # be the header's) or exactly the header's: a reader never takes a byte of what follows.
    for cut in range(len(header)):
        assert header_length(header[:cut]) in (None, len(header))
    assert header_length(header + after) == len(header)
    parsed = parse_header(header)
    assert (parsed.source, parsed.destination) == (canonical(source), canonical(destination))
    assert parsed.version == (1 if header.startswith(b"PROXY ") else 2) and parsed.length == len(header)


@given(st.binary(max_size=MAX_HEADER + 8))
def test_any_bytes_give_a_length_or_a_header_error(data):
    try:
        length = header_length(data)
    except ProxyHeaderError:
        return
    if length is None:
        assert len(data) < MAX_HEADER
        return
    assert 0 < length
    if length <= len(data):
        try:
            parse_header(data[:length])
        except ProxyHeaderError:
            pass


@given(st.sampled_from([b"PROXY ", V2_SIGNATURE]), st.binary(max_size=200))
def test_bytes_after_a_signature_give_a_length_or_a_header_error(start, rest):
    data = start + rest
    try:
        length = header_length(data)
        if length is not None and length <= len(data):
            parse_header(data[:length])
    except ProxyHeaderError:
        pass
