"""Hathor addresses: base58check of ``version u8 | hash160 (20) | checksum (4)``.

Base58 is written here by hand (it is twenty lines) rather than pulled in as a dependency.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from miningproxy.hathor.networks import MAINNET, TESTNET, Network
from miningproxy.hathor.scripts import HASH160_SIZE, ScriptKind, p2pkh_script, p2sh_script

ADDRESS_SIZE = 1 + HASH160_SIZE + 4  # 25 bytes
# 25 bytes are at most 35 base58 digits; anything much longer is not worth decoding.
_MAX_TEXT_LENGTH = 40

_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_INDEX = {c: i for i, c in enumerate(_ALPHABET)}

# Every version byte a Hathor network uses, with the kind of script it pays to.
_KIND_BY_VERSION: dict[int, ScriptKind] = {
    MAINNET.p2pkh_version: "p2pkh",
    MAINNET.p2sh_version: "p2sh",
    TESTNET.p2pkh_version: "p2pkh",
    TESTNET.p2sh_version: "p2sh",
}
_NETWORKS_BY_VERSION = {
    MAINNET.p2pkh_version: "mainnet",
    MAINNET.p2sh_version: "mainnet",
    TESTNET.p2pkh_version: "testnet/privatenet",
    TESTNET.p2sh_version: "testnet/privatenet",
}


class AddressError(ValueError):
    """An address that cannot be used; the message says exactly why."""


def b58encode(raw: bytes) -> str:
    n = int.from_bytes(raw, "big")
    digits: list[str] = []
    while n:
        n, r = divmod(n, 58)
        digits.append(_ALPHABET[r])
    zeros = len(raw) - len(raw.lstrip(b"\0"))  # each leading zero byte is a leading "1"
    return "1" * zeros + "".join(reversed(digits))


def b58decode(text: str) -> bytes:
    n = 0
    for pos, ch in enumerate(text):
        digit = _INDEX.get(ch)
        if digit is None:
            raise AddressError(f"invalid base58 character {ch!r} at position {pos}")
        n = n * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return b"\0" * zeros + body


def _checksum(payload: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]


@dataclass(frozen=True)
class Address:
    version: int
    hash160: bytes
    kind: ScriptKind

    def __post_init__(self) -> None:
        if self.kind not in ("p2pkh", "p2sh"):
            raise AddressError(f"address kind must be 'p2pkh' or 'p2sh', got {self.kind!r}")
        _check_parts(self.version, self.hash160)

    @property
    def script(self) -> bytes:
        """The output script that pays this address."""
        return p2pkh_script(self.hash160) if self.kind == "p2pkh" else p2sh_script(self.hash160)

    @property
    def base58(self) -> str:
        return encode_address(self.version, self.hash160)

    def __str__(self) -> str:
        return self.base58


def _check_parts(version: int, h160: bytes) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version <= 0xFF:
        raise AddressError(f"address version must be a byte (0..255), got {version!r}")
    if not isinstance(h160, bytes | bytearray):
        raise AddressError(f"address hash160 must be bytes, got {type(h160).__name__}")
    if len(h160) != HASH160_SIZE:
        raise AddressError(f"address hash160 must be {HASH160_SIZE} bytes, got {len(h160)}")


def encode_address(version: int, h160: bytes) -> str:
    _check_parts(version, h160)
    payload = bytes([version]) + bytes(h160)
    return b58encode(payload + _checksum(payload))


def decode_address(text: str, network: Network | None = None) -> Address:
    """Decode and check a base58 address. With ``network``, the version byte must be one of its own."""
    if not isinstance(text, str):
        raise AddressError(f"address must be a string, got {type(text).__name__}")
    if not text:
        raise AddressError("address is empty")
    if len(text) > _MAX_TEXT_LENGTH:
        raise AddressError(f"address is too long ({len(text)} characters; Hathor addresses have 34)")
    raw = b58decode(text)
    if len(raw) != ADDRESS_SIZE:
        raise AddressError(f"address decodes to {len(raw)} bytes, expected {ADDRESS_SIZE}")
    payload, checksum = raw[:-4], raw[-4:]
    if _checksum(payload) != checksum:
        raise AddressError("address checksum mismatch (mistyped or truncated address?)")
    version = payload[0]
    if network is not None:
        if version == network.p2pkh_version:
            kind: ScriptKind = "p2pkh"
        elif version == network.p2sh_version:
            kind = "p2sh"
        else:
            seen = _NETWORKS_BY_VERSION.get(version, "no known network")
            raise AddressError(
                f"address is not a {network.name} address: version byte 0x{version:02x} ({seen}), "
                f"expected 0x{network.p2pkh_version:02x} (P2PKH) or 0x{network.p2sh_version:02x} (P2SH)"
            )
    else:
        found = _KIND_BY_VERSION.get(version)
        if found is None:
            raise AddressError(
                f"unknown address version byte 0x{version:02x}: expected one of "
                + ", ".join(f"0x{v:02x}" for v in _KIND_BY_VERSION)
            )
        kind = found
    return Address(version=version, hash160=payload[1:], kind=kind)
