"""Hathor proof-of-work arithmetic: weight <-> target, log-work sums, hashrate.

Hathor measures work in "weight": log2 of the expected number of hashes. A hash (read as a
big-endian 256-bit integer) meets weight ``w`` when it is below ``int(2**(256 - w) - 1)``, which is
exactly hathorlib's ``BaseTransaction.get_target``. Note the float arithmetic: for most weights the
``- 1`` is lost to rounding, and for ``w == 0`` the target is 2**256 (every hash meets it).
"""

from __future__ import annotations

import functools
import math

MAX_WEIGHT = 256.0
HASH_SIZE = 32
MAX_HASH = 2**256 - 1

# Largest exponent whose power of two is still a finite float.
_MAX_FLOAT_EXP = 1023.0


def weight_to_target(weight: float) -> int:
    """The target a hash must stay strictly below for ``weight`` (Hathor's own definition)."""
    if not math.isfinite(weight):
        raise ValueError(f"weight must be finite, got {weight!r}")
    if weight < 0 or weight > MAX_WEIGHT:
        raise ValueError(f"weight must lie in [0, 256], got {weight!r}")
    return int(2 ** (256 - weight) - 1)


def target_to_bytes(target: int) -> bytes:
    """The target as 32 big-endian bytes, clamped into [0, 2**256 - 1].

    Clamping loses one case: a target above 2**256 - 1 (weight 0) is met by every hash, including
    0xff..ff; :func:`target_compare_key` keeps that case exact.
    """
    return max(0, min(target, MAX_HASH)).to_bytes(HASH_SIZE, "big")


def target_compare_key(target: int) -> bytes:
    """Bytes ``k`` such that, for every 32-byte big-endian hash ``h``, ``h < k`` iff the hash meets ``target``.

    32 bytes normally; when the target exceeds every hash the key is 33 bytes (``ff * 32 + 00``),
    which sorts above every 32-byte string, so the single bytes comparison stays exact.
    """
    if target > MAX_HASH:
        return b"\xff" * HASH_SIZE + b"\x00"
    return max(0, target).to_bytes(HASH_SIZE, "big")


@functools.lru_cache(maxsize=512)
def weight_compare_key(weight: float) -> bytes:
    """:func:`target_compare_key` of the target for ``weight`` (cached: jobs reuse a few weights)."""
    return target_compare_key(weight_to_target(weight))


def target_to_weight(target: int) -> float:
    """Inverse of :func:`weight_to_target` (exact up to float rounding)."""
    if target <= 0:
        return MAX_WEIGHT
    return 256.0 - math.log2(target + 1)


def hash_weight(hash_be: bytes) -> float:
    """The weight a big-endian hash actually achieved: log2(2**256 / (hash + 1))."""
    return 256.0 - math.log2(int.from_bytes(hash_be, "big") + 1)


def meets_weight(hash_be: bytes, weight: float) -> bool:
    """True when a big-endian 32-byte hash meets ``weight`` (integer comparison, as hathorlib does)."""
    return int.from_bytes(hash_be, "big") < weight_to_target(weight)


def sum_weights(a: float, b: float) -> float:
    """log2(2**a + 2**b) without overflow; 0 counts as "no work" as in Hathor.

    Mirrors hathorlib's ``sum_weights`` (``aux_calc_weight`` with multiplier 1): the larger weight
    plus log2(1 + 2**(smaller - larger)), where the power is at most 1 so nothing overflows.
    """
    hi, lo = (a, b) if a >= b else (b, a)
    if lo == 0.0:
        return hi
    return hi + math.log2(1.0 + 2.0 ** (lo - hi))


def work_of(weight: float) -> float:
    """Expected hashes for one share at ``weight`` (2**weight; inf beyond the float range)."""
    if weight > _MAX_FLOAT_EXP:
        return math.inf
    return 2.0**weight


def hashrate(total_weight: float, seconds: float) -> float:
    """Hashes per second from an accumulated log-work ``total_weight`` over ``seconds``.

    Computed in the log domain so huge accumulated weights give ``inf`` instead of OverflowError.
    """
    if seconds <= 0 or total_weight <= 0:
        return 0.0
    exponent = total_weight - math.log2(seconds)
    if exponent > _MAX_FLOAT_EXP:
        return math.inf
    return 2.0**exponent
