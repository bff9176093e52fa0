"""The node's event sequence for a chain of blocks, for the dev node's ``/v1a/event_ws``. Pure.

:class:`ChainEventSource` is told what happens to a chain -- the genesis is loaded, a block is
accepted -- and answers with the events a hathor-core node emits for it, as event dicts
(``{"id", "timestamp", "type", "data", "group_id"}``) with ids counting from 0. ``data`` is the
node's ``TxData`` (vertex fields, decoded outputs and metadata) in the node's field order, so
``stream.dumps(event)`` is the text a node sends. The sequences follow a real node (hathor-core
v0.69, transcripts in ``protocol/transcripts/event_ws.jsonl`` and its reorg tests):

- load: ``LOAD_STARTED``, ``NEW_VERTEX_ACCEPTED`` for the genesis block and transactions,
  ``LOAD_FINISHED``;
- a block extending the best chain: ``VERTEX_METADATA_CHANGED`` for the block, then for each
  transaction it is the first block to confirm (``first_block`` set) and, when it confirmed any,
  for its parent block; then ``NEW_VERTEX_ACCEPTED`` for the block;
- a block on a side chain that does not outweigh the best chain: ``VERTEX_METADATA_CHANGED`` and
  ``NEW_VERTEX_ACCEPTED`` with the block voided (``voided_by`` = its own hash);
- a block whose chain outweighs the best one: a reorg group -- ``REORG_STARTED`` (reorg_size,
  previous_best_block, new_best_block, common_block) with a new ``group_id``, metadata changes
  for the blocks leaving the best chain (newest first, now voided), for the blocks joining it
  (newest first) and for transactions whose ``first_block`` moved, ``REORG_FINISHED`` -- then
  ``NEW_VERTEX_ACCEPTED`` for the new block outside the group.

Known simplification: when a side block exactly ties the best chain's score, a node voids both
tips until the tie breaks; here the current best chain simply stays best.

Score and weight metadata follow the node: work is ``floor(0.5 + 2**weight)``; a block's score is
its parent's plus its own work plus the work of the transactions it is first (in its own
ancestry) to confirm; ``score`` is ``log2(score_raw)``.
"""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from miningproxy.events.log import StoredEvent
from miningproxy.events.stream import dumps
from miningproxy.hathor.addresses import encode_address
from miningproxy.hathor.block import Block
from miningproxy.hathor.networks import Network, network_for_name
from miningproxy.hathor.scripts import parse_output_script

BLOCK_VERSIONS = (0, 3)  # regular and merge-mined blocks; 1 and 2 are transactions


def weight_to_work(weight: float) -> int:
    return math.floor(0.5 + 2**weight)


def work_to_weight(work: int) -> float:
    return 0.0 if work <= 1 else math.log2(work)


@dataclass(frozen=True)
class VertexOutput:
    value: int
    script: bytes
    token_data: int = 0


@dataclass(frozen=True)
class Vertex:
    """The fields of a block or transaction that its events show."""

    hash: str  # hex
    nonce: int
    timestamp: int
    weight: float
    version: int = 0
    parents: tuple[str, ...] = ()  # hex; a block's first parent is its parent block
    outputs: tuple[VertexOutput, ...] = ()
    signal_bits: int = 0

    @property
    def is_block(self) -> bool:
        return self.version in BLOCK_VERSIONS

    @classmethod
    def from_block(cls, block: Block, *, nonce: int | None = None) -> Vertex:
        """From a parsed block (its nonce, or ``nonce``)."""
        n = block.nonce if nonce is None else nonce
        if n is None:
            raise ValueError("the block has no nonce")
        return cls(
            hash=block.hash(n).hex(),
            nonce=n,
            timestamp=block.timestamp,
            weight=block.weight,
            version=block.version,
            parents=tuple(p.hex() for p in block.parents),
            outputs=tuple(VertexOutput(o.value, o.script, o.token_data) for o in block.outputs),
            signal_bits=block.signal_bits,
        )


@dataclass
class _State:
    vertex: Vertex
    height: int
    score: int
    voided: bool = False
    first_block: str | None = None  # transactions: the best-chain block that first confirmed it
    accepted: bool = False  # spent_outputs lists the outputs once the node has accepted the vertex
    parent: str | None = None  # blocks: the parent block
    confirms: tuple[str, ...] = ()  # blocks: transactions this block is first (in its ancestry) to confirm
    confirmed: frozenset[str] = field(default_factory=frozenset)  # blocks: confirmed by it and its ancestors


class ChainError(ValueError):
    """A block that cannot be placed (unknown parent, already known, load twice)."""


class ChainEventSource:
    """Turns chain happenings into the node's events (see the module docstring)."""

    def __init__(
        self, network: str | Network, *, clock: Callable[[], float] = time.time, first_id: int = 0
    ) -> None:
        self.network = network if isinstance(network, Network) else network_for_name(network)
        self.clock = clock
        self.next_id = first_id
        self.best: str | None = None
        self._states: dict[str, _State] = {}
        self._group: int | None = None  # the open reorg group
        self._last_group = -1

    # --- happenings ------------------------------------------------------------------------------

    def load(self, genesis_block: Vertex, genesis_txs: Sequence[Vertex] = ()) -> list[dict[str, Any]]:
        """The node's start: LOAD_STARTED, the genesis vertices, LOAD_FINISHED."""
        if self._states:
            raise ChainError("the chain is already loaded")
        events = [self._event("LOAD_STARTED", {})]
        block = _State(genesis_block, 0, weight_to_work(genesis_block.weight), accepted=False)
        self._states[genesis_block.hash] = block
        self.best = genesis_block.hash
        events.append(self._vertex_event("NEW_VERTEX_ACCEPTED", block))
        for tx in genesis_txs:
            state = _State(tx, 0, weight_to_work(tx.weight))
            self._states[tx.hash] = state
            events.append(self._vertex_event("NEW_VERTEX_ACCEPTED", state))
        events.append(self._event("LOAD_FINISHED", {}))
        return events

    def add_block(self, block: Vertex) -> list[dict[str, Any]]:
        """A new valid block: it extends the best chain, sits on a side chain, or wins a reorg."""
        if self.best is None:
            raise ChainError("load() the genesis first")
        if block.hash in self._states:
            raise ChainError(f"block {block.hash} is already known")
        if not block.is_block or not block.parents:
            raise ChainError(f"{block.hash} is not a block with parents")
        parent = self._states.get(block.parents[0])
        if parent is None or not parent.vertex.is_block:
            raise ChainError(f"block {block.hash}: unknown parent block {block.parents[0]}")
        confirms = tuple(
            h
            for h in block.parents[1:]
            if h in self._states and not self._states[h].vertex.is_block and h not in parent.confirmed
        )
        score = parent.score + weight_to_work(block.weight) + sum(self._states[h].score for h in confirms)
        state = _State(
            block,
            parent.height + 1,
            score,
            parent=parent.vertex.hash,
            confirms=confirms,
            confirmed=parent.confirmed | frozenset(confirms),
        )
        self._states[block.hash] = state
        best = self._states[self.best]
        if parent.vertex.hash == self.best:
            return self._extend(state, parent)
        if score > best.score:
            return self._reorg(state, best)
        state.voided = True
        events = [self._vertex_event("VERTEX_METADATA_CHANGED", state)]
        state.accepted = True
        events.append(self._vertex_event("NEW_VERTEX_ACCEPTED", state))
        return events

    @property
    def best_height(self) -> int:
        return self._states[self.best].height if self.best else -1

    # --- sequences -------------------------------------------------------------------------------

    def _extend(self, state: _State, parent: _State) -> list[dict[str, Any]]:
        events = [self._vertex_event("VERTEX_METADATA_CHANGED", state)]
        for tx_hash in state.confirms:
            tx = self._states[tx_hash]
            tx.first_block = state.vertex.hash
            events.append(self._vertex_event("VERTEX_METADATA_CHANGED", tx))
        if state.confirms:
            events.append(self._vertex_event("VERTEX_METADATA_CHANGED", parent))
        self.best = state.vertex.hash
        state.accepted = True
        events.append(self._vertex_event("NEW_VERTEX_ACCEPTED", state))
        return events

    def _reorg(self, state: _State, best: _State) -> list[dict[str, Any]]:
        old_branch = self._branch(best.vertex.hash)
        new_branch = self._branch(state.vertex.hash)
        common = next(h for h in new_branch if h in set(old_branch))
        old_branch = old_branch[: old_branch.index(common)]  # newest first, common excluded
        new_branch = new_branch[: new_branch.index(common)]
        self._last_group += 1
        self._group = self._last_group
        events = [
            self._event(
                "REORG_STARTED",
                {
                    "reorg_size": len(old_branch),
                    "previous_best_block": best.vertex.hash,
                    "new_best_block": state.vertex.hash,
                    "common_block": common,
                },
            )
        ]
        for block_hash in old_branch:
            self._states[block_hash].voided = True
            events.append(self._vertex_event("VERTEX_METADATA_CHANGED", self._states[block_hash]))
        for block_hash in new_branch:
            self._states[block_hash].voided = False
            events.append(self._vertex_event("VERTEX_METADATA_CHANGED", self._states[block_hash]))
        moved: dict[str, str | None] = {}
        for block_hash in old_branch:
            for tx_hash in self._states[block_hash].confirms:
                moved[tx_hash] = None
        for block_hash in reversed(new_branch):  # oldest first: the first block to confirm wins
            for tx_hash in self._states[block_hash].confirms:
                if moved.get(tx_hash, "") in ("", None):
                    moved[tx_hash] = block_hash
        for tx_hash, first_block in moved.items():
            tx = self._states[tx_hash]
            if tx.first_block != first_block:
                tx.first_block = first_block
                events.append(self._vertex_event("VERTEX_METADATA_CHANGED", tx))
        events.append(self._event("REORG_FINISHED", {}))
        self._group = None
        self.best = state.vertex.hash
        state.accepted = True
        events.append(self._vertex_event("NEW_VERTEX_ACCEPTED", state))
        return events

    def _branch(self, block_hash: str) -> list[str]:
        """Block hashes from ``block_hash`` down to the genesis block."""
        chain = []
        current: str | None = block_hash
        while current is not None:
            chain.append(current)
            current = self._states[current].parent
        return chain

    # --- event shapes ----------------------------------------------------------------------------

    def _event(self, event_type: str, data: dict[str, Any]) -> dict[str, Any]:
        event = {
            "id": self.next_id,
            "timestamp": self.clock(),
            "type": event_type,
            "data": data,
            "group_id": self._group,
        }
        self.next_id += 1
        return event

    def _vertex_event(self, event_type: str, state: _State) -> dict[str, Any]:
        return self._event(event_type, self.tx_data(state))

    def tx_data(self, state: _State) -> dict[str, Any]:
        v = state.vertex
        is_block = v.is_block
        spent = (
            [{"index": i, "tx_ids": []} for i in range(len(v.outputs))]
            if state.accepted and state.parent
            else []
        )
        work = weight_to_work(v.weight)
        return {
            "hash": v.hash,
            "nonce": v.nonce,
            "timestamp": v.timestamp,
            "signal_bits": v.signal_bits,
            "version": v.version,
            "weight": float(v.weight),
            "inputs": [],
            "outputs": [self._output(o) for o in v.outputs],
            "parents": list(v.parents),
            "tokens": [],
            "token_name": None,
            "token_symbol": None,
            "aux_pow": None,
            "headers": [],
            "name": None,
            "metadata": {
                "hash": v.hash,
                "spent_outputs": spent,
                "conflict_with": [],
                "voided_by": [v.hash] if state.voided else [],
                "received_by": [],
                "twins": [],
                "accumulated_weight": float(v.weight),
                "score": work_to_weight(state.score),
                "accumulated_weight_raw": str(work),
                "score_raw": str(state.score),
                "first_block": None if is_block else state.first_block,
                "height": state.height,
                "validation": "full",
                "nc_execution": None,
            },
        }

    def _output(self, output: VertexOutput) -> dict[str, Any]:
        parsed = parse_output_script(output.script)
        decoded: dict[str, Any] = {}
        if parsed is not None:
            kind, h160 = parsed
            if kind == "p2pkh":
                decoded = {
                    "type": "P2PKH",
                    "address": encode_address(self.network.p2pkh_version, h160),
                    "timelock": None,
                }
            else:
                decoded = {
                    "type": "MultiSig",
                    "address": encode_address(self.network.p2sh_version, h160),
                    "timelock": None,
                }
        return {
            "value": output.value,
            "token_data": output.token_data,
            "script": base64.b64encode(output.script).decode("ascii"),
            "decoded": decoded,
        }


def to_stored(events: Sequence[dict[str, Any]]) -> list[StoredEvent]:
    """Events as the log stores them (the node's JSON text), ready for ``EventFeed.append``."""
    return [StoredEvent(e["id"], float(e["timestamp"]), dumps(e)) for e in events]
