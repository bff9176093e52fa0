"""Block header hashing with a cached midstate.

A Hathor mining header is 64 bytes: exactly one SHA-256 block. Hashing it once and keeping the
hash object (the midstate) leaves two compressions per nonce: the nonce block of the inner SHA-256
and the outer SHA-256 of the 32-byte digest.

This module deliberately uses plain ``hashlib`` (OpenSSL): share validation calls it once per share,
and the nonce scanner (:mod:`hashing.scan`, which may pick another SHA-256 implementation for speed)
is checked against it in the tests.
"""

from __future__ import annotations

import hashlib

from hashing.pow import HASH_SIZE, weight_compare_key

HEADER_SIZE = 64
NONCE_SIZE = 16
MAX_NONCE = 2 ** (8 * NONCE_SIZE) - 1

_sha256 = hashlib.sha256


class HeaderHasher:
    """Hashes one 64-byte mining header with many nonces; the header's compression is done once."""

    __slots__ = ("header", "_mid")

    def __init__(self, header: bytes) -> None:
        if len(header) != HEADER_SIZE:
            raise ValueError(f"mining header must be {HEADER_SIZE} bytes, got {len(header)}")
        self.header = bytes(header)
        self._mid = _sha256(self.header)

    def hash_nonce_bytes(self, nonce: bytes) -> bytes:
        """The block hash (big-endian, as Hathor shows it) for a 16-byte nonce."""
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
        h = self._mid.copy()
        h.update(nonce)
        return _sha256(h.digest()).digest()[::-1]

    def hash_nonce(self, nonce: int) -> bytes:
        """The block hash (big-endian) for an integer nonce in [0, 2**128)."""
        if not 0 <= nonce <= MAX_NONCE:
            raise ValueError(f"nonce must lie in [0, 2**128), got {nonce!r}")
        return self.hash_nonce_bytes(nonce.to_bytes(NONCE_SIZE, "big"))


def block_hash(header: bytes, nonce: int) -> bytes:
    """sha256d(header || nonce as 16 big-endian bytes), byte-reversed (big-endian), as Hathor does."""
    return HeaderHasher(header).hash_nonce(nonce)


def check_pow(hash_be: bytes, weight: float) -> bool:
    """Compare a big-endian hash with the target for ``weight`` as bytes (same result as ints)."""
    if len(hash_be) != HASH_SIZE:
        raise ValueError(f"hash must be {HASH_SIZE} bytes, got {len(hash_be)}")
    return hash_be < weight_compare_key(weight)
