"""The nonce scanner never reports a false nonce, never misses one, and splits the space cleanly."""

from __future__ import annotations

import pytest
from hathorlib import Block, TxOutput
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hashing.header import HeaderHasher, check_pow
from hashing.pow import weight_to_target
from hashing.scan import NONCE_SPACE, Scanner, available_impls, fastest_impl, scan, split_nonce_space

headers = st.binary(min_size=64, max_size=64)
low_weights = st.floats(min_value=0.0, max_value=10.0, allow_nan=False)


def brute_force(header: bytes, weight: float, start: int, count: int) -> list[int]:
    hasher = HeaderHasher(header)
    return [n for n in range(start, start + count) if check_pow(hasher.hash_nonce(n), weight)]


@settings(max_examples=40, deadline=None)
@given(
    headers,
    low_weights,
    st.integers(min_value=0, max_value=2**128 - 600),
    st.integers(min_value=0, max_value=300),
)
@example(bytes(64), 8.0, 65536 - 150, 300)  # crosses a 65536-nonce block boundary
@example(bytes(64), 3.0, 2**128 - 300, 300)  # the very top of the nonce space
def test_hits_are_exactly_the_brute_force_hits(header: bytes, weight: float, start: int, count: int) -> None:
    expected = brute_force(header, weight, start, count)
    hasher = HeaderHasher(header)
    hits = Scanner(header, weight).hits(start, count)
    assert [n for n, _ in hits] == expected
    assert all(hasher.hash_nonce(n) == h for n, h in hits)
    assert scan(header, weight, start, count) == (expected[0] if expected else None)


@pytest.mark.parametrize("impl", available_impls(), ids=lambda impl: impl.name)
def test_every_sha256_implementation_finds_the_same_hits(impl) -> None:
    header = bytes(range(64))
    start = 65536 * 7 - 500
    expected = brute_force(header, 9.0, start, 1000)
    assert expected  # ~2 expected hits at weight 9, and this header has some
    assert [n for n, _ in Scanner(header, 9.0, impl=impl).hits(start, 1000)] == expected


def hathor_block(weight: float, timestamp: int) -> Block:
    block = Block()
    block.weight = weight
    block.timestamp = timestamp
    block.outputs = [TxOutput(6400, bytes.fromhex("76a914") + bytes(20) + bytes.fromhex("88ac"))]
    block.parents = [bytes(32), bytes([1]) * 32, bytes([2]) * 32]
    block.data = b""
    return block


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=1, max_value=10), st.integers(min_value=1_600_000_000, max_value=1_900_000_000))
def test_scanned_nonce_makes_a_block_hathorlib_accepts(weight: int, timestamp: int) -> None:
    block = hathor_block(float(weight), timestamp)
    header = block.get_mining_header_without_nonce()
    nonce = scan(header, float(weight), 0, 1 << 16)
    assert nonce is not None  # 2**16 tries at weight <= 10: missing is a ~1e-28 event
    block.nonce = nonce
    block.update_hash()
    assert block.verify_pow()
    assert HeaderHasher(header).hash_nonce(nonce) == block.hash
    parsed = Block.create_from_struct(bytes(block))  # round trip through the wire format
    assert parsed.hash == block.hash and parsed.verify_pow()


def test_int_target_and_float_weight() -> None:
    header = bytes(range(64))
    target = weight_to_target(6.0)
    assert scan(header, target, 0, 5000) == scan(header, 6.0, 0, 5000) is not None
    assert scan(header, 2**256, 0, 10) == 0  # every hash is below 2**256
    assert scan(header, 0.0, 5, 10) == 5  # weight 0: target 2**256
    with pytest.raises(TypeError):
        scan(header, True, 0, 10)


@pytest.mark.parametrize("target", [0, 256.0, 1, 2**200])
def test_a_target_nobody_meets_gives_none(target: int | float) -> None:
    assert scan(bytes(64), target, 0, 20000) is None


def test_range_validation() -> None:
    with pytest.raises(ValueError):
        scan(bytes(64), 1.0, -1, 10)
    with pytest.raises(ValueError):
        scan(bytes(64), 1.0, 2**128 - 5, 10)
    with pytest.raises(ValueError):
        scan(bytes(63), 1.0, 0, 10)
    assert scan(bytes(64), 0.0, 0, 0) is None
    assert scan(bytes(64), 0.0, 2**128 - 1, 1) == 2**128 - 1


def test_fastest_impl_is_one_of_the_available() -> None:
    assert fastest_impl().name in {impl.name for impl in available_impls()}


@given(st.integers(min_value=1, max_value=64), st.integers(min_value=0, max_value=2))
def test_split_nonce_space_is_a_partition(n_workers: int, nonce_size: int) -> None:
    space = 2 ** (8 * nonce_size)
    shares = [split_nonce_space(i, n_workers, nonce_size) for i in range(n_workers)]
    # contiguous, in order, disjoint, covering: each starts where the previous ended
    position = 0
    for start, count in shares:
        assert start == position and count >= 0
        position += count
    assert position == space
    counts = [c for _, c in shares]
    assert max(counts) - min(counts) <= 1  # fair
    if nonce_size <= 1:  # small enough to check membership exhaustively
        owners = [sum(1 for s, c in shares if s <= n < s + c) for n in range(space)]
        assert owners == [1] * space


@given(st.integers(min_value=1, max_value=10_000), st.data())
def test_split_full_nonce_space(n_workers: int, data: st.DataObject) -> None:
    i = data.draw(st.integers(min_value=0, max_value=n_workers - 1))
    start, count = split_nonce_space(i, n_workers)
    assert 0 <= start < start + count <= NONCE_SPACE
    if i + 1 < n_workers:
        assert split_nonce_space(i + 1, n_workers)[0] == start + count
    else:
        assert start + count == NONCE_SPACE


def test_split_nonce_space_validates() -> None:
    with pytest.raises(ValueError):
        split_nonce_space(0, 0)
    with pytest.raises(ValueError):
        split_nonce_space(3, 3)
    with pytest.raises(ValueError):
        split_nonce_space(-1, 3)
