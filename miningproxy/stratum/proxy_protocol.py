"""The PROXY protocol header a layer-4 load balancer puts before a rig's bytes (sans-IO).

Behind HAProxy (``send-proxy`` / ``send-proxy-v2``), an AWS Network Load Balancer or any balancer
that speaks it, every connection starts with a header naming the rig's own address. Without it
every rig seems to come from the balancer, and the per-IP limit and the ban list would treat all
rigs as one. Both versions of haproxy.org's ``proxy-protocol.txt`` are read:

- version 1, one text line of at most 107 bytes: ``PROXY TCP4 203.0.113.7 10.0.0.2 51234 8000``
  then CRLF (``TCP6`` for IPv6; ``PROXY UNKNOWN`` when the balancer does not know the client);
- version 2, binary: a 12-byte signature, a version and command byte, a family byte, a 2-byte
  length, then the addresses and optional TLVs (skipped here). The ``LOCAL`` command (the
  balancer's own health check) and families other than TCP over IPv4 / IPv6 carry no client.

:func:`header_length` says how long the header is once enough of it arrived (so a reader never
takes a byte past it: what follows is the rig's Stratum or TLS), :func:`parse_header` decodes it.
A header is only trusted from the balancers the operator names (``stratum.proxy_protocol_from``):
from anyone else, it would let a rig pick the address it is banned and counted under.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest version-1 line, CRLF included (TCP6 with the longest addresses)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16  # signature, version and command, family, length
# Addresses are 12 (IPv4) or 36 (IPv6) bytes; TLVs add a few hundred at most in practice (an AWS
# endpoint id, HAProxy's TLS details). A longer header is refused rather than buffered.
V2_MAX = 4096
MAX_HEADER = max(V1_MAX, V2_MAX)

_V2_LOCAL, _V2_PROXY = 0x20, 0x21
_V2_ADDRESSES: dict[int, tuple[str, int, type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address]]] = {
    0x11: ("IPv4", 4, ipaddress.IPv4Address),  # TCP over IPv4
    0x21: ("IPv6", 16, ipaddress.IPv6Address),  # TCP over IPv6
}
_V2_UNSPEC, _V2_UNIX = 0x00, 0x31  # no IP client: the connection's own address stands


class ProxyHeaderError(ValueError):
    """The bytes are not a valid PROXY protocol header (the connection is closed)."""


class ProxyHeader(NamedTuple):
    version: int  # 1 or 2
    length: int  # bytes the header took from the stream
    source: tuple[str, int] | None  # the client (the rig): None when the header names none
    destination: tuple[str, int] | None  # the address the client connected to, on the balancer


def header_length(data: bytes) -> int | None:
    """The header's length in bytes, given the stream's first bytes; None while every byte given
    may still be the header's (more must arrive). Raises ProxyHeaderError as soon as the bytes
    cannot start a header."""
    if not data:
        return None
    if data[: len(V1_PREFIX)] == V1_PREFIX[: len(data)]:
        end = data.find(b"\r\n", 0, V1_MAX)
        if end >= 0:
            return end + 2
        newline = data.find(b"\n", 0, V1_MAX)
        if newline >= 0:
            raise ProxyHeaderError("PROXY v1 line ends with a bare LF (CRLF expected)")
        if len(data) >= V1_MAX:
            raise ProxyHeaderError(f"PROXY v1 line longer than {V1_MAX} bytes")
        return None
    if data[: len(V2_SIGNATURE)] == V2_SIGNATURE[: len(data)]:
        if len(data) < V2_FIXED:
            return None
        length = V2_FIXED + int.from_bytes(data[14:16], "big")
        if length > V2_MAX:
            raise ProxyHeaderError(f"PROXY v2 header of {length} bytes (at most {V2_MAX} accepted)")
        return length
    raise ProxyHeaderError(f"no PROXY protocol header: the connection starts with {bytes(data[:16])!r}")


def parse_header(data: bytes) -> ProxyHeader:
    """Decode one whole header: ``data`` is exactly :func:`header_length` bytes long."""
    length = header_length(data)
    if length is None or length != len(data):
        raise ProxyHeaderError(f"expected one whole PROXY header, got {len(data)} bytes")
    if data.startswith(V1_PREFIX):
        return _parse_v1(data)
    return _parse_v2(data)


def _parse_v1(data: bytes) -> ProxyHeader:
    try:
        line = data[:-2].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 line is not ASCII") from None
    parts = line.split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":  # the rest of the line is to be ignored
        return ProxyHeader(1, len(data), None, None)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(
            f"PROXY v1 line {line!r}: expected 'PROXY TCP4|TCP6 SRC DST SPORT DPORT' or 'PROXY UNKNOWN'"
        )
    ip_version = 4 if parts[1] == "TCP4" else 6
    source = (_v1_address(ip_version, parts[2]), _v1_port(parts[4]))
    destination = (_v1_address(ip_version, parts[3]), _v1_port(parts[5]))
    return ProxyHeader(1, len(data), source, destination)


def _v1_address(ip_version: int, text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text) if ip_version == 4 else ipaddress.IPv6Address(text))
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1: {text!r} is not an IPv{ip_version} address") from None


def _v1_port(text: str) -> int:
    # Decimal, no sign, no leading zero, 0..65535 (int() alone would take "+80", "0080" or " 80").
    if not text.isascii() or not text.isdigit() or (len(text) > 1 and text[0] == "0") or int(text) > 65535:
        raise ProxyHeaderError(f"PROXY v1: {text!r} is not a port")
    return int(text)


def _parse_v2(data: bytes) -> ProxyHeader:
    command, family = data[12], data[13]
    if command >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2: version {command >> 4} (2 expected)")
    if command == _V2_LOCAL:  # the balancer's own connection (a health check): no client
        return ProxyHeader(2, len(data), None, None)
    if command != _V2_PROXY:
        raise ProxyHeaderError(f"PROXY v2: unknown command {command & 0x0F}")
    body = data[V2_FIXED:]
    address = _V2_ADDRESSES.get(family)
    if address is not None:  # source, destination, source port, destination port
        name, size, kind = address
        need = 2 * size + 4
        if len(body) < need:
            raise ProxyHeaderError(
                f"PROXY v2: {len(body)} bytes of addresses for TCP over {name} ({need} needed)"
            )
        ports = body[2 * size : need]
        return ProxyHeader(
            2,
            len(data),
            (str(kind(body[:size])), int.from_bytes(ports[:2], "big")),
            (str(kind(body[size : 2 * size])), int.from_bytes(ports[2:], "big")),
        )
    if family in (_V2_UNSPEC, _V2_UNIX):
        return ProxyHeader(2, len(data), None, None)
    raise ProxyHeaderError(f"PROXY v2: family and transport 0x{family:02x} (a Stratum rig speaks TCP)")
