"""Extended public keys (BIP32 xpub): parsing, public child derivation and Hathor addresses. Pure.

A wallet streams its history by sending its account-level xpub; the addresses are the P2PKH
addresses of the non-hardened children ``xpub/0, xpub/1, ...`` (Hathor wallets derive
``m/44'/280'/0'/0/i``; the xpub they send is the ``.../0`` chain key).

Elliptic-curve math on secp256k1 uses pycryptodome's C implementation when the installed version
knows the curve, and exact Python integer arithmetic otherwise (both are tested against each other
and against pycoin). RIPEMD-160 comes from pycryptodome because hashlib may lack it (OpenSSL 3).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property, lru_cache

from Crypto.Hash import RIPEMD160

from miningproxy.hathor.addresses import AddressError, b58decode, b58encode, encode_address
from miningproxy.hathor.networks import Network

# secp256k1 domain parameters (SEC 2).
P = 2**256 - 2**32 - 977
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
GX = 0x79BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798
GY = 0x483ADA7726A3C4655DA4FBFC0E1108A8FD17B448A68554199C47D08FFB10D4B8

HARDENED = 2**31
XPUB_SIZE = 78
# Public extended-key version bytes: mainnet "xpub" (what Hathor uses on every network) and testnet "tpub".
PUBLIC_VERSIONS = {bytes.fromhex("0488b21e"): "xpub", bytes.fromhex("043587cf"): "tpub"}
PRIVATE_VERSIONS = {bytes.fromhex("0488ade4"): "xprv", bytes.fromhex("04358394"): "tprv"}
_MAX_TEXT = 120  # 82 bytes are 111 base58 digits at most


class XPubError(ValueError):
    """An extended public key that cannot be used; the message says why."""


Point = tuple[int, int]  # affine (x, y); the point at infinity never escapes this module


def hash160(data: bytes) -> bytes:
    """RIPEMD-160 of SHA-256: the hash inside P2PKH addresses and key fingerprints."""
    return RIPEMD160.new(hashlib.sha256(data).digest()).digest()


# --- curve arithmetic: pure Python (Jacobian coordinates) ----------------------------------------


def _jacobian_double(x: int, y: int, z: int) -> tuple[int, int, int]:
    if y == 0:
        return 0, 0, 0
    ysq = y * y % P
    s = 4 * x * ysq % P
    m = 3 * x * x % P  # a = 0 on secp256k1
    nx = (m * m - 2 * s) % P
    ny = (m * (s - nx) - 8 * ysq * ysq) % P
    return nx, ny, 2 * y * z % P


def _jacobian_add_affine(x1: int, y1: int, z1: int, x2: int, y2: int) -> tuple[int, int, int]:
    """(x1:y1:z1) + (x2, y2); z1 == 0 is the point at infinity."""
    if z1 == 0:
        return x2, y2, 1
    z1z1 = z1 * z1 % P
    u2 = x2 * z1z1 % P
    s2 = y2 * z1 * z1z1 % P
    h = (u2 - x1) % P
    r = (s2 - y1) % P
    if h == 0:
        return _jacobian_double(x1, y1, z1) if r == 0 else (0, 0, 0)
    hh = h * h % P
    hhh = h * hh % P
    v = x1 * hh % P
    nx = (r * r - hhh - 2 * v) % P
    ny = (r * (v - nx) - y1 * hhh) % P
    return nx, ny, z1 * h % P


def _to_affine(x: int, y: int, z: int) -> Point | None:
    if z == 0:
        return None
    zinv = pow(z, -1, P)
    zinv2 = zinv * zinv % P
    return x * zinv2 % P, y * zinv2 * zinv % P


@lru_cache(maxsize=1)
def _g_powers() -> tuple[Point, ...]:
    """2**i * G for i in 0..255 (affine), so k*G is one mixed addition per set bit of k."""
    powers: list[Point] = []
    x, y, z = GX, GY, 1
    for _ in range(256):
        affine = _to_affine(x, y, z)
        assert affine is not None
        powers.append(affine)
        x, y, z = _jacobian_double(*affine, 1)
    return tuple(powers)


def _python_tweak(tweak: int, point: Point) -> Point | None:
    """tweak*G + point with Python integers; None for the point at infinity."""
    x, y, z = 0, 0, 0
    for i, g in enumerate(_g_powers()):
        if tweak >> i & 1:
            x, y, z = _jacobian_add_affine(x, y, z, *g)
    x, y, z = _jacobian_add_affine(x, y, z, *point)
    return _to_affine(x, y, z)


def _native_tweak_factory():
    """tweak*G + point with pycryptodome, when the installed version supports secp256k1."""
    try:
        from Crypto.PublicKey import ECC

        generator = ECC.EccPoint(GX, GY, curve="secp256k1")
    except (ImportError, ValueError, TypeError):
        return None

    def tweak_add(tweak: int, point: Point) -> Point | None:
        result = generator * tweak + ECC.EccPoint(point[0], point[1], curve="secp256k1")
        if result.is_point_at_infinity():
            return None
        return int(result.x), int(result.y)

    return tweak_add


_native_tweak = _native_tweak_factory()


def point_tweak_add(tweak: int, point: Point) -> Point | None:
    """``tweak*G + point`` (None: the point at infinity). ``point`` must be on the curve."""
    if _native_tweak is not None:
        return _native_tweak(tweak, point)
    return _python_tweak(tweak, point)


def decompress(sec: bytes) -> Point:
    """A 33-byte compressed SEC1 public key -> affine point; XPubError when it is not on the curve."""
    if len(sec) != 33 or sec[0] not in (2, 3):
        raise XPubError("public key must be 33 bytes starting with 02 or 03")
    x = int.from_bytes(sec[1:], "big")
    if x >= P:
        raise XPubError("public key x coordinate is not below the field size")
    y_squared = (pow(x, 3, P) + 7) % P
    y = pow(y_squared, (P + 1) // 4, P)
    if y * y % P != y_squared:
        raise XPubError("public key is not a point on secp256k1")
    if y & 1 != sec[0] & 1:
        y = P - y
    return x, y


def compress(point: Point) -> bytes:
    x, y = point
    return bytes([2 + (y & 1)]) + x.to_bytes(32, "big")


# --- extended public keys -----------------------------------------------------------------------


@dataclass(frozen=True)
class ExtendedPublicKey:
    version: bytes  # 4 bytes
    depth: int
    parent_fingerprint: bytes  # 4 bytes
    child_number: int
    chain_code: bytes  # 32 bytes
    public_key: bytes  # 33 bytes, compressed

    @cached_property
    def point(self) -> Point:
        return decompress(self.public_key)

    @property
    def fingerprint(self) -> bytes:
        return self.hash160[:4]

    @cached_property
    def hash160(self) -> bytes:
        return hash160(self.public_key)

    def serialize(self) -> bytes:
        return (
            self.version
            + bytes([self.depth])
            + self.parent_fingerprint
            + self.child_number.to_bytes(4, "big")
            + self.chain_code
            + self.public_key
        )

    def to_base58(self) -> str:
        raw = self.serialize()
        return b58encode(raw + _checksum(raw))

    def child(self, index: int) -> ExtendedPublicKey:
        """The non-hardened child ``index`` (BIP32 CKDpub). Raises XPubError for hardened indexes,
        a depth past 255, and the (about 2**-127 likely) invalid child."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < HARDENED:
            raise XPubError(f"child index must be an integer in [0, 2**31), got {index!r}")
        if self.depth >= 255:
            raise XPubError("cannot derive below depth 255")
        digest = hmac.new(
            self.chain_code, self.public_key + index.to_bytes(4, "big"), hashlib.sha512
        ).digest()
        tweak = int.from_bytes(digest[:32], "big")
        if tweak >= N:
            raise XPubError(f"child {index} is invalid (tweak >= n): use the next index")
        point = point_tweak_add(tweak, self.point)
        if point is None:
            raise XPubError(f"child {index} is the point at infinity: use the next index")
        return ExtendedPublicKey(
            self.version, self.depth + 1, self.fingerprint, index, digest[32:], compress(point)
        )

    def address(self, network: Network) -> str:
        """The P2PKH address of this key on ``network``."""
        return encode_address(network.p2pkh_version, self.hash160)


def _checksum(payload: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]


def parse_xpub(text: str) -> ExtendedPublicKey:
    """Decode and check a base58 extended public key (version, length, checksum, depth rules, point)."""
    if not isinstance(text, str):
        raise XPubError(f"xpub must be a string, got {type(text).__name__}")
    if not text:
        raise XPubError("xpub is empty")
    if len(text) > _MAX_TEXT:
        raise XPubError(f"xpub is too long ({len(text)} characters)")
    try:
        raw = b58decode(text)
    except AddressError as exc:
        raise XPubError(str(exc)) from None
    if len(raw) != XPUB_SIZE + 4:
        raise XPubError(f"xpub decodes to {len(raw)} bytes, expected {XPUB_SIZE + 4}")
    payload, checksum = raw[:-4], raw[-4:]
    if _checksum(payload) != checksum:
        raise XPubError("xpub checksum mismatch")
    version = payload[:4]
    if version in PRIVATE_VERSIONS:
        raise XPubError(f"this is an extended PRIVATE key ({PRIVATE_VERSIONS[version]}): send the xpub")
    if version not in PUBLIC_VERSIONS:
        raise XPubError(f"unknown extended key version {version.hex()}")
    depth = payload[4]
    fingerprint = payload[5:9]
    child_number = int.from_bytes(payload[9:13], "big")
    if depth == 0 and (fingerprint != b"\0\0\0\0" or child_number != 0):
        raise XPubError("a depth-0 key must have a zero parent fingerprint and child number")
    key = payload[45:78]
    decompress(key)  # validates prefix and point
    return ExtendedPublicKey(version, depth, fingerprint, child_number, payload[13:45], key)


def iter_addresses(
    xpub: ExtendedPublicKey, network: Network, first_index: int = 0
) -> Iterator[tuple[int, str]]:
    """``(index, address)`` of the children from ``first_index`` on; an invalid child is skipped."""
    index = first_index
    while index < HARDENED:
        try:
            yield index, xpub.child(index).address(network)
        except XPubError:
            pass  # BIP32: proceed with the next index
        index += 1


def derive_addresses(
    xpub: ExtendedPublicKey, network: Network, first_index: int, count: int
) -> list[tuple[int, str]]:
    """``count`` consecutive ``(index, address)`` pairs from ``first_index`` (fewer at the index limit)."""
    out: list[tuple[int, str]] = []
    for item in iter_addresses(xpub, network, first_index):
        if item[0] >= first_index + count:
            break
        out.append(item)
    return out
