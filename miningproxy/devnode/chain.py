"""The dev node's blockchain: templates and block validation, as a Hathor full node does them. Pure.

What is mirrored from hathor-core (hathor/manager.py, hathor/verification/, hathor/mining/):
- templates: one template on the best block, parents ``[tip, tx, tx]`` (txs sorted), ``data`` is the
  minimal block (one output of ``reward`` with an EMPTY script, no block data) stamped
  ``timestamp_min = max(tip_ts, txs_ts) + 1``; ``timestamp_max = min(tip_ts + MAX_DISTANCE - 1,
  now + MAX_FUTURE)`` (no distance limit on the genesis block); ``weight`` is computed for
  ``clamp(now, timestamp_min, timestamp_max)``; ``score`` = parent score + work(weight).
- submit: a block whose first parent is not the best block is ignored with result ``false``
  (duplicates and blocks on stale parents alike; nothing is stored); a block on the tip is
  fully validated and any failure is an error (which the mining websocket turns into its fatal
  Internal error); bytes that do not parse are an error too.
- add_block: a block as a peer relays it, on ANY known block. It is validated against its own
  parent and stored; it becomes the best block when its score beats the best block's (a reorg
  when its parent is not the best block: the old blocks leave the best chain, are orphaned but
  stay known), otherwise it sits on a side chain. A tie keeps the current best chain.
Weights below the rules' minimum are reported with the node's own words:
``weight (x) is smaller than the minimum weight (y)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from hashing.header import check_pow
from miningproxy.devnode.genesis import Genesis
from miningproxy.hathor.block import Block, BlockParseError, TxOutput, parse_block
from miningproxy.hathor.template import BlockTemplate

WEIGHT_TOL = 1e-10
MAX_FUTURE_TIMESTAMP_ALLOWED = 300
MAX_DISTANCE_BETWEEN_BLOCKS = 4500
TIMESTAMP_LIMIT = 0xFFFFFFFF
REGULAR_BLOCK = 0
MERGE_MINED_BLOCK = 3
TEMPLATE_VERSIONS = (REGULAR_BLOCK, MERGE_MINED_BLOCK)
TX_VERSIONS = (1, 2)  # regular transaction, token creation: the node answers ``false`` to these
KNOWN_SIGNAL_BITS = 0x0F  # hathor-core's default feature activation uses at most 4 signal bits
BLOCK_TX_PARENTS = 2


def weight_to_work(weight: float) -> int:
    """hathor-core's rounding: floor(0.5 + 2**weight)."""
    return math.floor(0.5 + 2.0**weight)


def json_number(value: float) -> int | float:
    """Integral weights go out as JSON integers (``8``, not ``8.0``), as the real node sends them."""
    return int(value) if float(value).is_integer() else float(value)


@dataclass(frozen=True)
class ChainRules:
    block_weight: float = 8.0
    min_block_weight: float = 1.0
    weight_decay_seconds: float = 0.0  # 0 = no decay
    reward: int = 6400
    max_future_timestamp: int = MAX_FUTURE_TIMESTAMP_ALLOWED
    max_distance_between_blocks: int = MAX_DISTANCE_BETWEEN_BLOCKS

    def required_weight(self, seconds_since_parent: int) -> float:
        """One unit of weight less for every full ``weight_decay_seconds`` since the parent block."""
        if self.weight_decay_seconds <= 0:
            return float(self.block_weight)
        steps = math.floor(max(0, seconds_since_parent) / self.weight_decay_seconds)
        return float(max(self.min_block_weight, self.block_weight - steps))


@dataclass(frozen=True)
class ChainBlock:
    """A block in the chain with the metadata the node keeps for it."""

    hash: bytes
    block: Block  # with nonce
    height: int
    score: int  # accumulated work, as hathor-core's integer score
    is_genesis: bool = False

    @property
    def hash_hex(self) -> str:
        return self.hash.hex()

    @property
    def timestamp(self) -> int:
        return self.block.timestamp

    @property
    def parent_hash(self) -> bytes | None:
        return self.block.parents[0] if self.block.parents else None

    @property
    def struct(self) -> bytes:
        return self.block.struct()


class SubmitStatus(Enum):
    ACCEPTED = "accepted"  # stored, and the new best block
    NOT_TIP = "not_tip"  # first parent is not the best block (stale or duplicate): ignored, ``false``
    NOT_A_BLOCK = "not_a_block"  # a transaction was submitted: ignored, ``false``
    INVALID = "invalid"  # does not parse or fails validation: the node raises


@dataclass(frozen=True)
class SubmitResult:
    status: SubmitStatus
    reason: str = ""
    block: ChainBlock | None = None  # the stored block when accepted
    block_hash: bytes | None = None  # when the bytes parsed

    @property
    def accepted(self) -> bool:
        return self.status is SubmitStatus.ACCEPTED


@dataclass(frozen=True)
class ChainChange:
    """What storing one block did to the best chain (``DevChain.add_block``)."""

    block: ChainBlock  # the stored block
    best: bool  # it is the new best block
    orphaned: tuple[ChainBlock, ...] = ()  # blocks that left the best chain, oldest first
    joined: tuple[ChainBlock, ...] = ()  # blocks that joined it, oldest first (ends with ``block``)

    @property
    def is_reorg(self) -> bool:
        return bool(self.orphaned)


class BlockRejected(ValueError):
    """``DevChain.add_block`` refused a block; the message is the node's reason."""


class DevChain:
    """A tree of blocks from a genesis with one best chain (the heaviest).

    Miners (``submit``) may only extend the best block; ``add_block`` takes blocks on any known
    block, so a test can grow a competing branch and make it win.
    """

    def __init__(self, genesis: Genesis, rules: ChainRules | None = None) -> None:
        self.genesis = genesis
        self.rules = rules or ChainRules()
        first = ChainBlock(
            genesis.block_hash, genesis.block, 0, weight_to_work(genesis.block.weight), is_genesis=True
        )
        self._chain: list[ChainBlock] = [first]  # the best chain, genesis first
        self._by_hash: dict[bytes, ChainBlock] = {first.hash: first}  # every block, orphans too
        self._latest_block_ts = first.timestamp
        self._tx_timestamps = {tx.hash: tx.timestamp for tx in genesis.txs}
        self._tx_work = sum(weight_to_work(tx.weight) for tx in genesis.txs)
        # Tx parents of every template: the two genesis transactions, sorted as the node sorts them.
        self._tx_parents = tuple(sorted(self._tx_timestamps))

    # -- reading -------------------------------------------------------------------------------
    @property
    def tip(self) -> ChainBlock:
        return self._chain[-1]

    @property
    def height(self) -> int:
        return self.tip.height

    @property
    def blocks(self) -> tuple[ChainBlock, ...]:
        """The chain from genesis (height 0) to the tip."""
        return tuple(self._chain)

    def get(self, block_hash: bytes) -> ChainBlock | None:
        """Any known block, on the best chain or not."""
        return self._by_hash.get(block_hash)

    def in_best_chain(self, block_hash: bytes) -> bool:
        """Whether ``block_hash`` is a block of the best chain."""
        block = self._by_hash.get(block_hash)
        if block is None or block.height >= len(self._chain):
            return False  # (a side chain can be longer than the best one, yet lighter)
        return self._chain[block.height].hash == block_hash

    @property
    def orphans(self) -> tuple[ChainBlock, ...]:
        """Known blocks off the best chain (side chains and orphaned blocks), by height."""
        best = {b.hash for b in self._chain}
        return tuple(
            sorted((b for b in self._by_hash.values() if b.hash not in best), key=lambda b: b.height)
        )

    def __contains__(self, block_hash: object) -> bool:
        return block_hash in self._by_hash or block_hash in self._tx_timestamps

    @property
    def first_timestamp(self) -> int:
        return self.genesis.block.timestamp

    @property
    def latest_timestamp(self) -> int:
        """The newest timestamp of any vertex (orphans included, as the node's storage counts)."""
        return max(self._latest_block_ts, *self._tx_timestamps.values())

    def block_score(self, parent: ChainBlock, weight: float) -> int:
        """The score of a block of ``weight`` on ``parent``."""
        return self.branch_score(parent, (weight,))

    def branch_score(self, parent: ChainBlock, weights: Iterable[float]) -> int:
        """The score of the last of a run of blocks of ``weights`` stacked on ``parent``."""
        score = parent.score
        for i, weight in enumerate(weights):
            score += weight_to_work(weight)
            if i == 0 and parent.is_genesis:
                score += self._tx_work  # the first block confirms the genesis transactions
        return score

    def best_blockchain(self, n: int = 10) -> list[ChainBlock]:
        """The ``n`` best blocks, tip first (the node's /status ``best_blockchain``)."""
        return list(reversed(self._chain[-n:]))

    # -- templates -----------------------------------------------------------------------------
    def required_weight(self, parent: ChainBlock, timestamp: int) -> float:
        return self.rules.required_weight(timestamp - parent.timestamp)

    def timestamp_bounds(self, parent: ChainBlock, now: int) -> tuple[int, int]:
        """(timestamp_min, timestamp_max) of a template on ``parent`` at wall-clock ``now``."""
        ts_min = max(parent.timestamp, *self._tx_timestamps.values()) + 1
        ts_abs_max = (
            TIMESTAMP_LIMIT
            if parent.is_genesis
            else parent.timestamp + self.rules.max_distance_between_blocks - 1
        )
        return ts_min, min(ts_abs_max, int(now) + self.rules.max_future_timestamp)

    def template_json(self, now: int, parent: ChainBlock | None = None) -> dict[str, Any] | None:
        """The node's template dict for a block on ``parent`` (default: the tip); None when no
        timestamp is available (the node then fails to make a template)."""
        parent = parent or self.tip
        now = int(now)
        ts_min, ts_max = self.timestamp_bounds(parent, now)
        if ts_max < ts_min:
            return None
        timestamp = min(max(now, ts_min), ts_max)
        weight = self.required_weight(parent, timestamp)
        parents = (parent.hash, *self._tx_parents)
        minimal = Block(
            0, REGULAR_BLOCK, (TxOutput(self.rules.reward, 0, b""),), weight, ts_min, parents, b""
        )
        return {
            "data": minimal.struct_without_nonce().hex(),
            "versions": list(TEMPLATE_VERSIONS),
            "reward": self.rules.reward,
            "weight": json_number(weight),
            "timestamp_now": now,
            "timestamp_min": ts_min,
            "timestamp_max": ts_max,
            "parents": [p.hex() for p in parents],
            "parents_any": [],
            "height": parent.height + 1,
            "score": parent.score + weight_to_work(weight),
            "signal_bits": 0,
        }

    def templates_json(self, now: int) -> list[dict[str, Any]]:
        """``mining.notify`` params / ``mining.refresh`` result: a list (one template on the tip)."""
        template = self.template_json(now)
        return [] if template is None else [template]

    def templates(self, now: int) -> list[BlockTemplate]:
        return [BlockTemplate.from_json(t) for t in self.templates_json(now)]

    # -- submit --------------------------------------------------------------------------------
    def submit(self, data: bytes, now: int) -> SubmitResult:
        """Validate and store a block struct (with nonce), as the node's ``submit_block``."""
        if len(data) >= 2 and data[1] in TX_VERSIONS:
            return SubmitResult(SubmitStatus.NOT_A_BLOCK, "expected Block, received Transaction")
        try:
            block = parse_block(data)
        except (BlockParseError, ValueError) as exc:
            return SubmitResult(SubmitStatus.INVALID, f"cannot parse block: {exc}")
        block_hash = block.hash()
        if not block.parents:
            return SubmitResult(SubmitStatus.INVALID, "block has no parents", block_hash=block_hash)
        if block.parents[0] != self.tip.hash:
            if block_hash in self._by_hash:
                reason = f"block {block_hash.hex()} already exists"
            else:
                reason = f"parent {block.parents[0].hex()} is not the best block {self.tip.hash_hex}"
            return SubmitResult(SubmitStatus.NOT_TIP, reason, block_hash=block_hash)
        problem = self._problem(block, block_hash, int(now), self.tip)
        if problem:
            return SubmitResult(SubmitStatus.INVALID, problem, block_hash=block_hash)
        return SubmitResult(
            SubmitStatus.ACCEPTED, block=self._store(block, block_hash).block, block_hash=block_hash
        )

    def add_block(self, data: bytes, now: int) -> ChainChange:
        """Validate and store a block (struct with nonce) on any known block, as a block relayed by a
        peer; raises :class:`BlockRejected` with the node's reason when it is invalid or known."""
        try:
            block = parse_block(data)
        except (BlockParseError, ValueError) as exc:
            raise BlockRejected(f"cannot parse block: {exc}") from None
        block_hash = block.hash()
        if block_hash in self._by_hash:
            raise BlockRejected(f"block {block_hash.hex()} already exists")
        if not block.parents:
            raise BlockRejected("block has no parents")
        parent = self._by_hash.get(block.parents[0])
        if parent is None:
            raise BlockRejected(f"parent {block.parents[0].hex()} is not a known block")
        problem = self._problem(block, block_hash, int(now), parent)
        if problem:
            raise BlockRejected(problem)
        return self._store(block, block_hash)

    def _problem(self, block: Block, block_hash: bytes, now: int, parent: ChainBlock) -> str | None:
        """Why the node would refuse this block on ``parent``, its first parent (None: valid)."""
        if block.version == MERGE_MINED_BLOCK:
            return "merge-mined blocks are not supported by the dev node"
        if block.version != REGULAR_BLOCK:
            return f"invalid vertex version: {block.version}"
        if block.timestamp - now > self.rules.max_future_timestamp:
            return f"Ignoring transaction in the future {block_hash.hex()} (timestamp={block.timestamp})"
        if len(set(block.parents)) != len(block.parents):
            return "Tx has duplicated parents"
        n_blocks = 0
        n_txs = 0
        for parent_hash in block.parents:
            if parent_hash in self._by_hash:
                parent_ts = self._by_hash[parent_hash].timestamp
                if n_txs:
                    return "Parents which are blocks must come before transactions"
                n_blocks += 1
            elif parent_hash in self._tx_timestamps:
                parent_ts = self._tx_timestamps[parent_hash]
                n_txs += 1
            else:
                return f"parent {parent_hash.hex()} does not exist"
            if block.timestamp <= parent_ts:
                return (
                    f"tx={block_hash.hex()} timestamp={block.timestamp}, "
                    f"parent={parent_hash.hex()} timestamp={parent_ts}"
                )
        if n_blocks != 1:
            return f"wrong number of parents (block type): {n_blocks}, expecting 1"
        if n_txs != BLOCK_TX_PARENTS:
            return f"wrong number of parents (tx type): {n_txs}, expecting {BLOCK_TX_PARENTS}"
        if (
            not parent.is_genesis
            and block.timestamp - parent.timestamp > self.rules.max_distance_between_blocks
        ):
            return f"Distance between blocks is too big ({block.timestamp - parent.timestamp} seconds)"
        if block.signal_bits & ~KNOWN_SIGNAL_BITS:
            return f"vertex has unknown signal bits: {bin(block.signal_bits)}"
        min_weight = self.required_weight(parent, block.timestamp)
        if block.weight < min_weight - WEIGHT_TOL:
            return (
                f"Invalid new block {block_hash.hex()}: weight ({block.weight}) is "
                f"smaller than the minimum weight ({min_weight})"
            )
        for output in block.outputs:
            if output.token_data != 0:
                return f"block output carries a token (token_data={output.token_data})"
        issued = sum(output.value for output in block.outputs)
        if issued != self.rules.reward:
            return (
                f"Invalid number of issued tokens tag=invalid_issued_tokens tx.hash={block_hash.hex()} "
                f"issued={issued} allowed={self.rules.reward}"
            )
        if not check_pow(block_hash, block.weight):
            return (
                f"Transaction has invalid data (hash {block_hash.hex()} does not meet weight {block.weight})"
            )
        return None

    def _store(self, block: Block, block_hash: bytes) -> ChainChange:
        parent = self._by_hash[block.parents[0]]
        stored = ChainBlock(block_hash, block, parent.height + 1, self.block_score(parent, block.weight))
        self._by_hash[block_hash] = stored
        self._latest_block_ts = max(self._latest_block_ts, stored.timestamp)
        tip = self.tip
        if parent is tip:
            self._chain.append(stored)
            return ChainChange(stored, True, joined=(stored,))
        if stored.score <= tip.score:  # a side chain (a tie keeps the current best chain)
            return ChainChange(stored, False)
        # A reorg: walk the new branch down to the best chain, then cut the best chain there.
        joined = [stored]
        while not self.in_best_chain(joined[-1].block.parents[0]):
            joined.append(self._by_hash[joined[-1].block.parents[0]])
        common = self._by_hash[joined[-1].block.parents[0]]
        orphaned = tuple(self._chain[common.height + 1 :])
        joined.reverse()
        del self._chain[common.height + 1 :]
        self._chain.extend(joined)
        return ChainChange(stored, True, orphaned=orphaned, joined=tuple(joined))
