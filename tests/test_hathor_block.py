"""Block serialization, parsing, mining header, hash and PoW, checked against hathorlib (test oracle)."""

from __future__ import annotations

import hashlib
import math
import struct

import pytest
from hathor_vectors import MAINNET_GENESIS, event_blocks, hathorlib_block
from hathorlib.block import Block as HBlock
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hashing.header import check_pow
from miningproxy.hathor.block import (
    MAX_OUTPUT_VALUE,
    MAX_OUTPUT_VALUE_32,
    Block,
    BlockParseError,
    TxOutput,
    decode_output_value,
    encode_output_value,
    parse_block,
)
from miningproxy.hathor.scripts import p2pkh_script, p2sh_script

# -- strategies ---------------------------------------------------------------------------------

h160s = st.binary(min_size=20, max_size=20)
output_values = st.one_of(
    st.integers(1, MAX_OUTPUT_VALUE_32),  # 4-byte encoding
    st.integers(MAX_OUTPUT_VALUE_32 + 1, MAX_OUTPUT_VALUE),  # 8-byte encoding
    st.sampled_from(
        [1, 6400, MAX_OUTPUT_VALUE_32, MAX_OUTPUT_VALUE_32 + 1, 100_000_000_000, MAX_OUTPUT_VALUE]
    ),
)
scripts = st.one_of(h160s.map(p2pkh_script), h160s.map(p2sh_script), st.binary(max_size=40))
outputs = st.builds(TxOutput, value=output_values, token_data=st.integers(0, 255), script=scripts)
hashes = st.binary(min_size=32, max_size=32)


ANY_WEIGHT = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def blocks(draw, *, weights=ANY_WEIGHT):
    return Block(
        signal_bits=draw(st.integers(0, 255)),
        version=draw(st.sampled_from([0, 0, 0, 3]) | st.integers(0, 255)),
        outputs=tuple(draw(st.lists(outputs, max_size=3))),
        weight=draw(weights),
        timestamp=draw(st.integers(0, 2**32 - 1)),
        parents=tuple(draw(st.lists(hashes, max_size=4))),
        data=draw(st.binary(max_size=100)),
        nonce=draw(st.integers(0, 2**128 - 1)),
    )


def from_hathorlib(hb: HBlock) -> Block:
    return Block(
        signal_bits=hb.signal_bits,
        version=hb.version,
        outputs=tuple(TxOutput(o.value, o.token_data, o.script) for o in hb.outputs),
        weight=hb.weight,
        timestamp=hb.timestamp,
        parents=tuple(hb.parents),
        data=hb.data,
        nonce=hb.nonce,
    )


# -- agreement with hathorlib ---------------------------------------------------------------------


EDGE_BLOCK = Block(
    signal_bits=255,
    version=0,
    outputs=(TxOutput(MAX_OUTPUT_VALUE_32, 0, b""), TxOutput(MAX_OUTPUT_VALUE_32 + 1, 255, b"s" * 300)),
    weight=256.0,
    timestamp=2**32 - 1,
    parents=(b"\xff" * 32,) * 3,
    data=b"d" * 100,
    nonce=2**128 - 1,
)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks())
@example(EDGE_BLOCK)
def test_serialization_header_hash_and_parse_agree_with_hathorlib(block: Block) -> None:
    hb = hathorlib_block(block)
    assert block.funds_struct() == hb.get_funds_struct()
    assert block.graph_struct() == hb.get_graph_struct()
    assert block.struct_without_nonce() == hb.get_struct_without_nonce()
    raw = block.struct()
    assert raw == hb.get_struct()
    assert block.mining_header() == hb.get_mining_header_without_nonce()
    assert block.hash() == hb.calculate_hash()
    # parse both ways: hathorlib's bytes with ours, ours with hathorlib
    assert parse_block(hb.get_struct()) == block
    back = HBlock.create_from_struct(raw)
    assert from_hathorlib(back) == block
    assert back.hash == block.hash()


@settings(max_examples=300, deadline=None)
@given(blocks(weights=st.floats(0.0, 12.0)))
def test_pow_verdict_agrees_with_hathorlib(block: Block) -> None:
    hb = hathorlib_block(block)
    hb.update_hash()
    for weight in (block.weight, block.weight / 2, 1.0):
        assert check_pow(block.hash(), weight) is hb.verify_pow(weight)
    assert block.verify_pow() is hb.verify_pow()


def test_pow_verdict_flips_at_the_weight_the_hash_reaches() -> None:
    block = Block(0, 0, (TxOutput(6400, 0, b""),), 8.0, 1643902668, (b"\1" * 32,) * 3, b"", nonce=0)
    h = int.from_bytes(block.hash(), "big")
    reached = 256 - math.log2(h + 1)
    assert block.verify_pow(reached - 0.01)
    assert not block.verify_pow(reached + 0.01)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, MAX_OUTPUT_VALUE))
def test_output_value_encoding_agrees_with_hathorlib(value: int) -> None:
    from hathorlib.base_transaction import bytes_to_output_value, output_value_to_bytes

    encoded = encode_output_value(value)
    assert encoded == output_value_to_bytes(value)
    assert len(encoded) == (4 if value <= MAX_OUTPUT_VALUE_32 else 8)
    assert decode_output_value(encoded + b"rest", 0) == (value, len(encoded))
    assert bytes_to_output_value(encoded) == (value, b"")


@pytest.mark.parametrize("value", [0, -1, MAX_OUTPUT_VALUE + 1, True, 1.5])
def test_encode_output_value_rejects_out_of_range(value) -> None:
    with pytest.raises(ValueError):
        encode_output_value(value)


# -- real vectors ---------------------------------------------------------------------------------


def test_mainnet_genesis_hash() -> None:
    g = MAINNET_GENESIS
    block = Block(
        0, 0, (TxOutput(g["value"], 0, g["script"]),), g["weight"], g["timestamp"], (), b"", g["nonce"]
    )
    assert block.hash() == g["hash"]
    assert block.verify_pow()  # the genesis meets its own weight (mainnet MIN_BLOCK_WEIGHT 21)
    raw = block.struct()
    assert raw[3:11] == (-g["value"]).to_bytes(8, "big", signed=True)  # 8-byte value encoding
    assert parse_block(raw) == block
    assert HBlock.create_from_struct(raw).hash == g["hash"]


@pytest.mark.parametrize("announced", event_blocks(), ids=lambda b: b["hash"][:12])
def test_blocks_announced_by_the_node_hash_to_their_ids(announced) -> None:
    """Every block of the event_ws transcript (incl. the privatenet genesis, 8-byte value) rebuilt."""
    block = Block(
        signal_bits=announced["signal_bits"],
        version=announced["version"],
        outputs=tuple(TxOutput(o["value"], o["token_data"], o["script"]) for o in announced["outputs"]),
        weight=announced["weight"],
        timestamp=announced["timestamp"],
        parents=tuple(bytes.fromhex(p) for p in announced["parents"]),
        data=b"",  # events do not carry block data; these blocks have none
        nonce=announced["nonce"],
    )
    assert block.hash().hex() == announced["hash"]
    assert block.verify_pow()


# -- parse errors ---------------------------------------------------------------------------------

SAMPLE = Block(
    signal_bits=0,
    version=0,
    outputs=(TxOutput(6400, 0, p2pkh_script(b"\x11" * 20)),),
    weight=8.0,
    timestamp=1643902669,
    parents=(b"\xaa" * 32, b"\xbb" * 32, b"\xcc" * 32),
    data=b"hello",
    nonce=25,
)


def test_every_truncation_is_rejected() -> None:
    raw = SAMPLE.struct()
    for n in range(len(raw)):
        with pytest.raises(BlockParseError, match="truncated"):
            parse_block(raw[:n])
    without_nonce = SAMPLE.struct_without_nonce()
    for n in range(len(without_nonce)):
        with pytest.raises(BlockParseError, match="truncated"):
            parse_block(without_nonce[:n], has_nonce=False)


def test_truncation_names_the_part_and_position() -> None:
    raw = SAMPLE.struct()
    with pytest.raises(BlockParseError, match=r"nonce needs 16 bytes at byte \d+, only 15 left"):
        parse_block(raw[:-1])
    funds = SAMPLE.funds_struct()
    with pytest.raises(BlockParseError, match=r"parent 1 of 3 needs 32 bytes"):
        parse_block(raw[: len(funds) + 13 + 32 + 10])


def test_trailing_bytes_are_rejected() -> None:
    with pytest.raises(BlockParseError, match="1 trailing bytes after the nonce"):
        parse_block(SAMPLE.struct() + b"\0")
    with pytest.raises(BlockParseError, match="16 trailing bytes after the block data"):
        parse_block(SAMPLE.struct(), has_nonce=False)


def test_wrong_parent_count_is_rejected() -> None:
    raw = bytearray(SAMPLE.struct())
    n_parents_at = len(SAMPLE.funds_struct()) + 12
    assert raw[n_parents_at] == 3
    raw[n_parents_at] = 4  # claims a fourth parent that is not there
    with pytest.raises(BlockParseError, match="truncated"):
        parse_block(bytes(raw))
    raw[n_parents_at] = 2  # the third parent's bytes are then read as data_len/data/nonce
    with pytest.raises(BlockParseError):
        parse_block(bytes(raw))


def _with_value_bytes(value_bytes: bytes) -> bytes:
    funds = bytes([0, 0, 1]) + value_bytes + b"\x00\x00\x00"  # token_data 0, empty script
    return funds + SAMPLE.graph_struct() + (25).to_bytes(16, "big")


def test_eight_byte_value_that_fits_in_four_bytes_is_rejected_like_hathorlib() -> None:
    raw = _with_value_bytes((-6400).to_bytes(8, "big", signed=True))
    with pytest.raises(BlockParseError, match="uses the 8-byte encoding but fits in 4 bytes"):
        parse_block(raw)
    with pytest.raises(ValueError, match="fits in 4 bytes"):
        HBlock.create_from_struct(raw)
    # the smallest value that needs 8 bytes is fine
    ok = _with_value_bytes((-(MAX_OUTPUT_VALUE_32 + 1)).to_bytes(8, "big", signed=True))
    assert parse_block(ok).outputs[0].value == MAX_OUTPUT_VALUE_32 + 1


def test_zero_value_is_rejected() -> None:
    raw = _with_value_bytes(b"\0\0\0\0")
    with pytest.raises(BlockParseError, match="zero"):
        parse_block(raw)
    with pytest.raises(Exception):  # noqa: B017 - hathorlib raises its own InvalidOutputValue
        HBlock.create_from_struct(raw)


def test_data_over_100_bytes_is_rejected() -> None:
    graph = struct.pack("!dIB", 8.0, 1, 0) + bytes([101]) + b"x" * 101
    raw = SAMPLE.funds_struct() + graph + bytes(16)
    with pytest.raises(BlockParseError, match="block data is 101 bytes, the maximum is 100"):
        parse_block(raw)
    with pytest.raises(ValueError, match="maximum is 100"):
        Block(0, 0, (), 8.0, 1, (), b"x" * 101)


@pytest.mark.parametrize("weight", [math.nan, math.inf, -math.inf])
def test_non_finite_weight_is_rejected(weight: float) -> None:
    raw = SAMPLE.funds_struct() + struct.pack("!dIB", weight, 1, 0) + b"\0" + bytes(16)
    with pytest.raises(BlockParseError, match="weight is not a finite number"):
        parse_block(raw)


def test_parse_rejects_non_bytes() -> None:
    with pytest.raises(BlockParseError, match="must be bytes"):
        parse_block("00")  # type: ignore[arg-type]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_junk_is_rejected_or_parses_canonically(raw: bytes) -> None:
    """Our encoding is canonical: whatever parses serializes back to the very same bytes."""
    try:
        block = parse_block(raw)
    except BlockParseError:
        return
    assert block.struct() == raw


@settings(max_examples=500, deadline=None)
@given(blocks(), st.data())
def test_mutated_blocks_are_rejected_or_parse_canonically(block: Block, data: st.DataObject) -> None:
    raw = bytearray(block.struct())
    op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
    at = data.draw(st.integers(0, len(raw) - 1))
    if op == "flip":
        raw[at] ^= data.draw(st.integers(1, 255))
    elif op == "insert":
        raw.insert(at, data.draw(st.integers(0, 255)))
    else:
        del raw[at]
    try:
        parsed = parse_block(bytes(raw))
    except BlockParseError:
        return
    assert parsed.struct() == bytes(raw)


# -- the Block value itself -------------------------------------------------------------------------


def test_mining_header_is_sha256_of_funds_and_graph() -> None:
    header = SAMPLE.mining_header()
    assert (
        header
        == hashlib.sha256(SAMPLE.funds_struct()).digest() + hashlib.sha256(SAMPLE.graph_struct()).digest()
    )
    assert SAMPLE.struct() == SAMPLE.struct_without_nonce() + (25).to_bytes(16, "big")
    assert SAMPLE.struct(7)[-16:] == (7).to_bytes(16, "big")
    inner = hashlib.sha256(header + (7).to_bytes(16, "big")).digest()
    assert SAMPLE.hash(7) == hashlib.sha256(inner).digest()[::-1]


def test_block_without_nonce_needs_one_to_hash() -> None:
    block = parse_block(SAMPLE.struct_without_nonce(), has_nonce=False)
    assert block.nonce is None
    with pytest.raises(ValueError, match="no nonce"):
        block.struct()
    assert block.hash(25) == SAMPLE.hash()


@pytest.mark.parametrize(
    "changes",
    [
        {"signal_bits": 256},
        {"version": -1},
        {"weight": math.nan},
        {"weight": 10**400},
        {"weight": "8"},
        {"timestamp": 2**32},
        {"parents": (b"\0" * 31,)},
        {"nonce": 2**128},
        {"data": b"x" * 101},
    ],
)
def test_block_rejects_unencodable_fields(changes) -> None:
    fields = {f: getattr(SAMPLE, f) for f in SAMPLE.__dataclass_fields__}
    with pytest.raises(ValueError):
        Block(**(fields | changes))


@pytest.mark.parametrize("changes", [{"value": 0}, {"token_data": 256}, {"script": b"x" * 65536}])
def test_output_rejects_unencodable_fields(changes) -> None:
    with pytest.raises(ValueError):
        TxOutput(**({"value": 1, "token_data": 0, "script": b""} | changes))
