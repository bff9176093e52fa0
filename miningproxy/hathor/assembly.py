"""Turning a template and a payout script into mining headers and block structs.

The TRAP (protocol/HATHOR.md): the node's ``weight`` is computed for ``timestamp_now`` while its
``data`` is stamped with ``timestamp_min``. Blocks are therefore assembled from the template's fields
(weight, parents, reward, versions, signal_bits) with a timestamp chosen by :func:`clamp_timestamp`,
never from ``data`` as given.

Per (template, script) everything but the graph's timestamp and data is constant, so
:class:`BlockAssembler` serializes the funds part and hashes it once, and keeps the graph up to the
data for the latest timestamp: each block is one concatenation and one sha256.
"""

from __future__ import annotations

import hashlib
import math

from hashing.header import NONCE_SIZE, block_hash
from miningproxy.hathor.block import Block, TxOutput
from miningproxy.hathor.networks import BLOCK_DATA_MAX_SIZE
from miningproxy.hathor.template import BLOCK_PARENTS, BlockTemplate

_sha256 = hashlib.sha256


def clamp_timestamp(template: BlockTemplate, now: float) -> int:
    """The block timestamp for clock time ``now``: whole seconds, clamped into [timestamp_min, timestamp_max]."""
    if not math.isfinite(now):
        raise ValueError(f"now must be a finite time, got {now!r}")
    return min(max(math.floor(now), template.timestamp_min), template.timestamp_max)


def choose_parents(template: BlockTemplate) -> tuple[bytes, ...]:
    """The required parents, then ``parents_any`` in the node's order until there are three."""
    missing = max(0, BLOCK_PARENTS - len(template.parents))
    return template.parents + template.parents_any[:missing]


def choose_version(template: BlockTemplate) -> int:
    """0 (a regular block) when the template allows it, else the first version it allows."""
    return 0 if 0 in template.versions else template.versions[0]


class AssembledBlock:
    """One job's block: its 64-byte mining header, and its struct for any nonce.

    Built on the hot path, so only the header is computed eagerly; the Block object and the
    struct are made on demand (when a share meets the block weight, which is rare).
    """

    __slots__ = ("header", "timestamp", "data", "graph", "assembler")

    def __init__(self, header: bytes, timestamp: int, data: bytes, graph: bytes, assembler: BlockAssembler):
        self.header = header
        self.timestamp = timestamp
        self.data = data
        self.graph = graph
        self.assembler = assembler

    @property
    def struct_without_nonce(self) -> bytes:
        return self.assembler.funds + self.graph

    def struct(self, nonce: int) -> bytes:
        """The full block struct to submit, with ``nonce`` as 16 big-endian bytes."""
        return self.assembler.funds + self.graph + nonce.to_bytes(NONCE_SIZE, "big")

    def hash(self, nonce: int) -> bytes:
        """The block hash (big-endian) for ``nonce``."""
        return block_hash(self.header, nonce)

    @property
    def block(self) -> Block:
        a = self.assembler
        return Block(
            signal_bits=a.template.signal_bits,
            version=a.version,
            outputs=(a.output,),
            weight=a.template.weight,
            timestamp=self.timestamp,
            parents=a.parents,
            data=self.data,
        )

    def __repr__(self) -> str:
        return f"AssembledBlock(header={self.header.hex()}, timestamp={self.timestamp}, data={self.data!r})"


class BlockAssembler:
    """Builds the blocks of one template that pay one output script (P2PKH or P2SH)."""

    __slots__ = (
        "template",
        "script",
        "version",
        "parents",
        "output",
        "funds",
        "funds_hash",
        "data_max",
        "_weight_bytes",
        "_parents_part",
        "_funds_head",
        "_head",
        "_head_timestamp",
        "_head_data_len",
    )

    def __init__(self, template: BlockTemplate, script: bytes, *, data_max: int = BLOCK_DATA_MAX_SIZE):
        self.template = template
        self.script = bytes(script)
        self.version = choose_version(template)
        self.parents = choose_parents(template)
        self.output = TxOutput(template.reward, 0, self.script)
        self.data_max = min(data_max, BLOCK_DATA_MAX_SIZE)
        prototype = Block(
            signal_bits=template.signal_bits,
            version=self.version,
            outputs=(self.output,),
            weight=template.weight,
            timestamp=template.timestamp_min,
            parents=self.parents,
            data=b"",
        )
        self.funds = prototype.funds_struct()
        self.funds_hash = _sha256(self.funds).digest()
        self._funds_head = self.funds[: -len(self.output.encode())]  # signal bits, version, one output
        # graph = weight | timestamp | n_parents | parents | data_len | data: split around the timestamp.
        graph = prototype.graph_struct()
        self._weight_bytes = graph[:8]
        self._parents_part = graph[12:-1]  # n_parents | parents
        self._head = b""
        self._head_timestamp = self._head_data_len = -1

    def for_script(self, script: bytes) -> BlockAssembler:
        """The assembler of the same template paying ``script``. Only the funds part differs, so
        the template's checked and serialized parts are shared: a solo pool makes one assembler per
        rig on every new template (built from scratch, ~40 µs each; this, a few)."""
        other = object.__new__(BlockAssembler)
        other.template = self.template
        other.version = self.version
        other.parents = self.parents
        other.data_max = self.data_max
        other.output = TxOutput(self.output.value, 0, script)  # (checks the script)
        other.script = other.output.script
        other._funds_head = self._funds_head
        other.funds = self._funds_head + other.output.encode()
        other.funds_hash = _sha256(other.funds).digest()
        other._weight_bytes = self._weight_bytes
        other._parents_part = self._parents_part
        other._head = b""
        other._head_timestamp = other._head_data_len = -1
        return other

    def graph_head(self, timestamp: int, data_len: int) -> bytes:
        """The graph struct up to its data, for a block at ``timestamp`` with ``data_len`` bytes of
        data: append the data to have the whole graph. The latest one is kept (a fan-out asks for
        the same one for every rig)."""
        if timestamp != self._head_timestamp or data_len != self._head_data_len:
            t = self.template
            if not t.timestamp_min <= timestamp <= t.timestamp_max:
                raise ValueError(
                    f"timestamp {timestamp} outside the template's [{t.timestamp_min}, {t.timestamp_max}]"
                )
            if not 0 <= data_len <= self.data_max:
                raise ValueError(f"block data is {data_len} bytes, the maximum is {self.data_max}")
            self._head = b"".join(
                (
                    self._weight_bytes,
                    timestamp.to_bytes(4, "big"),
                    self._parents_part,
                    data_len.to_bytes(1, "big"),
                )
            )
            self._head_timestamp, self._head_data_len = timestamp, data_len
        return self._head

    def build(self, timestamp: int, data: bytes = b"") -> AssembledBlock:
        """The block at ``timestamp`` (see clamp_timestamp) carrying ``data`` in its data field."""
        data = bytes(data)
        graph = self.graph_head(timestamp, len(data)) + data
        return AssembledBlock(self.funds_hash + _sha256(graph).digest(), timestamp, data, graph, self)
