"""Addresses, scripts and networks, checked against hathorlib (test oracle) and real vectors."""

from __future__ import annotations

import base58
import pytest
from hathor_vectors import MAINNET_GENESIS, PRIVATENET_ADDRESS, PRIVATENET_SCRIPT
from hathorlib.scripts import P2PKH, MultiSig, parse_address_script
from hathorlib.utils.address import (
    decode_address as h_decode_address,
)
from hathorlib.utils.address import (
    get_address_b58_from_redeem_script_hash,
    get_address_from_public_key_hash,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from miningproxy.hathor.addresses import (
    Address,
    AddressError,
    b58decode,
    b58encode,
    decode_address,
    encode_address,
)
from miningproxy.hathor.networks import MAINNET, TESTNET, Network, network_for_name
from miningproxy.hathor.scripts import p2pkh_script, p2sh_script, parse_output_script

h160s = st.binary(min_size=20, max_size=20)
HATHOR_VERSIONS = {0x28: "p2pkh", 0x64: "p2sh", 0x49: "p2pkh", 0x87: "p2sh"}
B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def hathorlib_address(version: int, h160: bytes) -> str:
    if HATHOR_VERSIONS[version] == "p2pkh":
        return base58.b58encode(get_address_from_public_key_hash(h160, bytes([version]))).decode()
    return get_address_b58_from_redeem_script_hash(h160, bytes([version]))


# -- agreement with hathorlib ---------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(sorted(HATHOR_VERSIONS)), h160s)
def test_addresses_agree_with_hathorlib(version: int, h160: bytes) -> None:
    text = encode_address(version, h160)
    assert text == hathorlib_address(version, h160)
    assert h_decode_address(text) == bytes([version]) + h160 + h_decode_address(text)[21:]
    addr = decode_address(text)
    assert addr == Address(version, h160, HATHOR_VERSIONS[version])
    assert addr.base58 == text == str(addr)
    # the reward script is the one hathorlib builds for the address
    expected_script = (P2PKH if addr.kind == "p2pkh" else MultiSig).create_output_script(
        h_decode_address(text)
    )
    assert addr.script == expected_script
    network = MAINNET if version in MAINNET.versions else TESTNET
    assert decode_address(text, network) == addr


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_base58_agrees_with_the_base58_package(raw: bytes) -> None:
    text = b58encode(raw)
    assert text == base58.b58encode(raw).decode()
    assert b58decode(text) == raw


@settings(max_examples=300, deadline=None)
@given(h160s)
def test_scripts_agree_with_hathorlib(h160: bytes) -> None:
    p2pkh = p2pkh_script(h160)
    p2sh = p2sh_script(h160)
    assert p2pkh == P2PKH.create_output_script(b"\x28" + h160 + b"\0" * 4)
    assert p2sh == MultiSig.create_output_script(b"\x64" + h160 + b"\0" * 4)
    assert parse_output_script(p2pkh) == ("p2pkh", h160)
    assert parse_output_script(p2sh) == ("p2sh", h160)
    # hathorlib (mainnet settings) reads the same kind and hash back
    assert isinstance(parse_address_script(p2pkh), P2PKH)
    assert isinstance(parse_address_script(p2sh), MultiSig)
    assert decode_address(parse_address_script(p2pkh).address).hash160 == h160
    assert decode_address(parse_address_script(p2sh).address).hash160 == h160


@pytest.mark.parametrize(
    "script",
    [
        b"",
        bytes.fromhex("76a914") + b"\1" * 20 + bytes.fromhex("88"),  # truncated
        bytes.fromhex("76a914") + b"\1" * 20 + bytes.fromhex("88ac00"),  # trailing byte
        bytes.fromhex("76a913") + b"\1" * 19 + bytes.fromhex("88ac"),  # 19-byte push
        bytes.fromhex("a914") + b"\1" * 20 + bytes.fromhex("88"),  # wrong final opcode
        bytes.fromhex("0461fbf6cc6f") + p2pkh_script(b"\1" * 20),  # timelocked: not a reward script
    ],
)
def test_non_standard_scripts_are_not_parsed(script: bytes) -> None:
    assert parse_output_script(script) is None


@pytest.mark.parametrize("h160", [b"\0" * 19, b"\0" * 21, "00" * 20])
def test_scripts_need_a_20_byte_hash(h160) -> None:
    with pytest.raises(ValueError):
        p2pkh_script(h160)
    with pytest.raises(ValueError):
        p2sh_script(h160)


# -- real vectors ---------------------------------------------------------------------------------


def test_privatenet_genesis_address() -> None:
    addr = decode_address(PRIVATENET_ADDRESS, network_for_name("privatenet"))
    assert addr.kind == "p2pkh" and addr.version == 0x49
    assert addr.script == PRIVATENET_SCRIPT
    assert parse_output_script(PRIVATENET_SCRIPT) == ("p2pkh", addr.hash160)


def test_mainnet_genesis_address() -> None:
    kind, h160 = parse_output_script(MAINNET_GENESIS["script"])
    text = encode_address(MAINNET.p2pkh_version, h160)
    assert text.startswith("H")
    assert parse_address_script(MAINNET_GENESIS["script"]).address == text  # hathorlib, mainnet settings
    assert decode_address(text, MAINNET).script == MAINNET_GENESIS["script"]


@pytest.mark.parametrize(("version", "prefix"), [(0x28, "H"), (0x64, "h"), (0x49, "W"), (0x87, "w")])
@given(h160=h160s)
def test_version_bytes_give_the_documented_first_letter(version: int, prefix: str, h160: bytes) -> None:
    assert encode_address(version, h160)[0] == prefix


# -- errors -----------------------------------------------------------------------------------------


def test_wrong_network_names_the_network_and_the_version_seen() -> None:
    testnet_addr = PRIVATENET_ADDRESS
    with pytest.raises(
        AddressError,
        match=r"not a mainnet address: version byte 0x49 \(testnet/privatenet\), "
        r"expected 0x28 \(P2PKH\) or 0x64 \(P2SH\)",
    ):
        decode_address(testnet_addr, MAINNET)
    mainnet_addr = encode_address(0x28, b"\1" * 20)
    with pytest.raises(
        AddressError,
        match=r"not a privatenet address: version byte 0x28 \(mainnet\), "
        r"expected 0x49 \(P2PKH\) or 0x87 \(P2SH\)",
    ):
        decode_address(mainnet_addr, network_for_name("privatenet"))
    with pytest.raises(AddressError, match="not a testnet-golf address"):
        decode_address(encode_address(0x64, b"\1" * 20), network_for_name("testnet-golf"))


def test_unknown_version_byte_is_rejected() -> None:
    text = encode_address(0x00, b"\1" * 20)  # a Bitcoin-style version byte
    with pytest.raises(AddressError, match="unknown address version byte 0x00"):
        decode_address(text)
    with pytest.raises(AddressError, match=r"version byte 0x00 \(no known network\)"):
        decode_address(text, MAINNET)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "address is empty"),
        ("WY1URKUnqCTyiixW1Dw29vmeG99hNN4EW0", r"invalid base58 character '0' at position 33"),
        ("WY1URKUnqCTyiixW1Dw29vmeG99hNN4EWl", "invalid base58 character 'l' at position 33"),
        (" WY1URKUnqCTyiixW1Dw29vmeG99hNN4EW6", "invalid base58 character ' ' at position 0"),
        ("WY1URKUnqCTyiixW1Dw29vmeG99hNN4E", "address decodes to 24 bytes, expected 25"),
        ("WY1URKUnqCTyiixW1Dw29vmeG99hNN4EW", "checksum mismatch"),  # still 25 bytes
        ("WY1URKUnqCTyiixW1Dw29vmeG99hNN4EW66", "address decodes to 26 bytes, expected 25"),
        ("WY1URKUnqCTyiixW1Dw29vmeG99hNN4EW7", "checksum mismatch"),
        ("W" * 41, r"too long \(41 characters"),
    ],
)
def test_bad_addresses_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(AddressError, match=message):
        decode_address(text)


def test_non_string_address_is_rejected() -> None:
    with pytest.raises(AddressError, match="must be a string, got bytes"):
        decode_address(PRIVATENET_ADDRESS.encode())  # type: ignore[arg-type]


@pytest.mark.parametrize(("version", "h160"), [(256, b"\0" * 20), (-1, b"\0" * 20), (0x28, b"\0" * 19)])
def test_encode_address_rejects_bad_input(version: int, h160: bytes) -> None:
    with pytest.raises(AddressError):
        encode_address(version, h160)


def test_address_value_is_validated() -> None:
    with pytest.raises(AddressError, match="kind"):
        Address(0x28, b"\0" * 20, "p2wpkh")  # type: ignore[arg-type]
    with pytest.raises(AddressError, match="20 bytes"):
        Address(0x28, b"\0" * 21, "p2pkh")


@settings(max_examples=1000, deadline=None)
@given(st.one_of(st.text(max_size=60), st.text(alphabet=B58_ALPHABET, max_size=45)))
def test_fuzzed_text_only_ever_raises_address_error(text: str) -> None:
    try:
        addr = decode_address(text)
    except AddressError:
        return
    assert addr.base58 == text  # anything accepted is canonical


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(sorted(HATHOR_VERSIONS)), h160s, st.data())
def test_a_mistyped_character_is_caught(version: int, h160: bytes, data: st.DataObject) -> None:
    text = encode_address(version, h160)
    at = data.draw(st.integers(0, len(text) - 1))
    replacement = data.draw(st.sampled_from(B58_ALPHABET).filter(lambda c: c != text[at]))
    with pytest.raises(AddressError):
        decode_address(text[:at] + replacement + text[at + 1 :])


# -- networks -------------------------------------------------------------------------------------


def test_network_for_name() -> None:
    assert network_for_name("mainnet") is MAINNET
    assert (MAINNET.p2pkh_version, MAINNET.p2sh_version) == (0x28, 0x64)
    assert network_for_name("testnet") == TESTNET
    for name in (
        "testnet-golf",
        "nano-testnet-bravo",
        "privatenet",
        "privatenet-fastmine",
        "localnet",
        "unittests",
    ):
        net = network_for_name(name)
        assert net == Network(name, 0x49, 0x87, 100)
    with pytest.raises(ValueError):
        network_for_name("")
