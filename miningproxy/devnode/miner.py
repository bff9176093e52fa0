"""A tiny CPU miner for the dev node's low weights: builds a block from a node template dict and
finds a nonce. Used by the dev node's ``mine_block`` hook (a block "found elsewhere") and by tests.
Fine for weights up to ~16 (2**16 hashes); it is not the proxy's hashing path."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hashing.header import HeaderHasher, check_pow
from miningproxy.hathor.block import Block, TxOutput

DEFAULT_MAX_TRIES = 1 << 22


def build_block(
    template: Mapping[str, Any],
    *,
    script: bytes = b"",
    timestamp: int | None = None,
    data: bytes = b"",
    weight: float | None = None,
    reward: int | None = None,
) -> Block:
    """A block (without nonce) from a template dict. The timestamp defaults to ``timestamp_now``
    clamped into ``[timestamp_min, timestamp_max]`` (never ``data``'s timestamp_min: see HATHOR.md)."""
    if timestamp is None:
        timestamp = min(max(template["timestamp_now"], template["timestamp_min"]), template["timestamp_max"])
    parents = [bytes.fromhex(p) for p in template["parents"]]
    parents += [bytes.fromhex(p) for p in sorted(template["parents_any"])][: 3 - len(parents)]
    return Block(
        signal_bits=template.get("signal_bits", 0),
        version=0,
        outputs=(TxOutput(template["reward"] if reward is None else reward, 0, script),),
        weight=float(template["weight"] if weight is None else weight),
        timestamp=timestamp,
        parents=tuple(parents),
        data=data,
    )


def find_nonce(
    block: Block, *, weight: float | None = None, start: int = 0, max_tries: int = DEFAULT_MAX_TRIES
) -> int:
    """The first nonce from ``start`` whose hash meets ``weight`` (default: the block's weight)."""
    target_weight = block.weight if weight is None else weight
    hasher = HeaderHasher(block.mining_header())
    for nonce in range(start, start + max_tries):
        if check_pow(hasher.hash_nonce(nonce), target_weight):
            return nonce
    raise RuntimeError(f"no nonce in {max_tries} tries for weight {target_weight}")


def find_bad_nonce(block: Block, *, start: int = 0) -> int:
    """A nonce whose hash does NOT meet the block's weight (to exercise PoW rejection)."""
    hasher = HeaderHasher(block.mining_header())
    nonce = start
    while check_pow(hasher.hash_nonce(nonce), block.weight):
        nonce += 1
    return nonce


def mine(block: Block, *, start: int = 0, max_tries: int = DEFAULT_MAX_TRIES) -> Block:
    """``block`` with a nonce that meets its weight."""
    nonce = find_nonce(block, start=start, max_tries=max_tries)
    return Block(
        block.signal_bits,
        block.version,
        block.outputs,
        block.weight,
        block.timestamp,
        block.parents,
        block.data,
        nonce,
    )


def mine_template(template: Mapping[str, Any], **options: Any) -> bytes:
    """The full struct (with nonce) of a valid block on ``template``; options as :func:`build_block`."""
    return mine(build_block(template, **options)).struct()
