"""PoW arithmetic and header hashing, checked against hathorlib (test oracle only)."""

from __future__ import annotations

import hashlib
import math

import pytest
from hathorlib import Block, TxOutput
from hathorlib.base_transaction import sum_weights as hathor_sum_weights
from hypothesis import example, given
from hypothesis import strategies as st

from hashing.header import HeaderHasher, block_hash, check_pow
from hashing.pow import (
    MAX_HASH,
    hash_weight,
    hashrate,
    meets_weight,
    sum_weights,
    target_compare_key,
    target_to_bytes,
    target_to_weight,
    weight_to_target,
    work_of,
)

GENESIS_SCRIPT = bytes.fromhex("76a9147fd4ae0e4fb2d2854e76d359029d8078bb99649e88ac")
GENESIS_HASH = bytes.fromhex("000006cb93385b8b87a545a1cbb6197e6caff600c12cc12fc54250d39c8088fc")

weights = st.floats(min_value=0.0, max_value=256.0, allow_nan=False, allow_infinity=False)
hashes = st.binary(min_size=32, max_size=32)


def hathor_block(weight: float, nonce: int = 0) -> Block:
    block = Block()
    block.weight = weight
    block.timestamp = 1578075305
    block.outputs = [TxOutput(100000000000, GENESIS_SCRIPT)]
    block.parents = []
    block.data = b""
    block.nonce = nonce
    return block


def test_mainnet_genesis_vector() -> None:
    header = hathor_block(21.0).get_mining_header_without_nonce()
    h = block_hash(header, 2591358)
    assert h == GENESIS_HASH
    assert check_pow(h, 21.0)
    assert meets_weight(h, 21.0)
    assert not check_pow(h, hash_weight(h) + 0.01)


@given(weights)
@example(0.0)
@example(256.0)
@example(8.0)
@example(1e-300)
def test_weight_to_target_is_hathorlib_get_target(weight: float) -> None:
    assert weight_to_target(weight) == hathor_block(weight).get_target()


@pytest.mark.parametrize("bad", [-0.5, 256.5, math.nan, math.inf])
def test_weight_to_target_rejects_out_of_range(bad: float) -> None:
    with pytest.raises(ValueError):
        weight_to_target(bad)


def hashes_near_target(draw: st.DrawFn) -> tuple[bytes, float]:
    weight = draw(weights)
    target = weight_to_target(weight)
    value = draw(
        st.integers(min_value=max(0, target - 3), max_value=min(MAX_HASH, target + 3))
        | st.integers(0, MAX_HASH)
    )
    return value.to_bytes(32, "big"), weight


@given(st.composite(hashes_near_target)())
@example((b"\xff" * 32, 0.0))  # weight 0: the target is 2**256, even 0xff..ff meets it
@example((b"\x00" * 32, 256.0))  # weight 256: the target is 0, nothing meets it
def test_check_pow_bytes_compare_agrees_with_int_compare(case: tuple[bytes, float]) -> None:
    hash_be, weight = case
    expected = int.from_bytes(hash_be, "big") < weight_to_target(weight)
    assert check_pow(hash_be, weight) is expected
    assert meets_weight(hash_be, weight) is expected


@given(hashes, weights)
def test_check_pow_agrees_with_hathorlib_verify_pow(hash_be: bytes, weight: float) -> None:
    block = hathor_block(weight)
    block.hash = hash_be
    assert check_pow(hash_be, weight) is block.verify_pow()


@given(st.integers(min_value=-(2**10), max_value=2**257), hashes)
def test_target_compare_key_is_exact_for_any_int_target(target: int, hash_be: bytes) -> None:
    assert (hash_be < target_compare_key(target)) is (int.from_bytes(hash_be, "big") < target)


def test_check_pow_rejects_wrong_hash_length() -> None:
    with pytest.raises(ValueError):
        check_pow(b"\x00" * 31, 1.0)


def test_target_to_bytes_clamps() -> None:
    assert target_to_bytes(-5) == bytes(32)
    assert target_to_bytes(2**300) == b"\xff" * 32
    assert target_to_bytes(1) == bytes(31) + b"\x01"


@given(st.floats(min_value=0.0, max_value=200.0))
def test_target_to_weight_inverts_weight_to_target(weight: float) -> None:
    # Exact up to the truncation to an integer target, negligible while the target is large.
    assert target_to_weight(weight_to_target(weight)) == pytest.approx(weight, abs=1e-6)
    assert target_to_weight(0) == 256.0


pos_weights = st.floats(min_value=0.0, max_value=3000.0, allow_nan=False)


@given(pos_weights, pos_weights)
@example(0.0, 0.0)
@example(0.0, 21.0)
@example(2000.0, 2000.0)
@example(2000.0, 1.0)
def test_sum_weights_is_hathorlib_sum_weights(a: float, b: float) -> None:
    ours = sum_weights(a, b)
    assert math.isfinite(ours)
    assert ours == pytest.approx(hathor_sum_weights(a, b), rel=1e-12, abs=1e-12)
    assert sum_weights(b, a) == ours


def test_sum_weights_large_and_zero() -> None:
    assert sum_weights(2000.0, 2000.0) == pytest.approx(2001.0)
    assert sum_weights(0.0, 2000.0) == 2000.0
    assert sum_weights(10.0, 0.0) == 10.0
    assert sum_weights(20.0, 20.0) == pytest.approx(21.0)


def test_hashrate_of_summed_shares() -> None:
    total = 0.0
    for _ in range(1000):
        total = sum_weights(total, 20.0)
    # 1000 shares at weight 20 over 10 s: 1000 * 2**20 / 10 hashes per second.
    assert hashrate(total, 10.0) == pytest.approx(1000 * 2**20 / 10, rel=1e-9)
    assert hashrate(total, 0.0) == 0.0
    assert hashrate(0.0, 10.0) == 0.0
    assert hashrate(2000.0, 1.0) == math.inf  # huge accumulated work: no OverflowError
    assert work_of(20.0) == 2.0**20
    assert work_of(2000.0) == math.inf


def test_hash_weight() -> None:
    assert hash_weight(bytes(32)) == 256.0
    assert hash_weight(b"\xff" * 32) == pytest.approx(0.0, abs=1e-12)
    assert hash_weight((2**236 - 1).to_bytes(32, "big")) == pytest.approx(20.0)
    assert hash_weight(GENESIS_HASH) > 21.0


@given(st.binary(min_size=64, max_size=64), st.integers(min_value=0, max_value=2**128 - 1))
def test_header_hasher_matches_hathorlib_calculate_hash(header: bytes, nonce: int) -> None:
    hasher = HeaderHasher(header)
    block = hathor_block(1.0, nonce)
    # hathorlib's second stage (nonce, sha256 again, reverse) from a midstate over our header.
    assert hasher.hash_nonce(nonce) == block.calculate_hash2(hashlib.sha256(header))
    assert hasher.hash_nonce_bytes(nonce.to_bytes(16, "big")) == hasher.hash_nonce(nonce)


def test_header_hasher_validates_inputs() -> None:
    with pytest.raises(ValueError):
        HeaderHasher(b"\x00" * 63)
    hasher = HeaderHasher(bytes(64))
    with pytest.raises(ValueError):
        hasher.hash_nonce(2**128)
    with pytest.raises(ValueError):
        hasher.hash_nonce(-1)
    with pytest.raises(ValueError):
        hasher.hash_nonce_bytes(b"\x00" * 15)
