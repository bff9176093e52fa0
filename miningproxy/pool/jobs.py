"""Jobs: one unique block header per consumer, built from the latest template.

A job fixes everything about a candidate block except the nonce: the template it came from, the
payout script, the timestamp (the clock clamped into the template's range, never the timestamp in
the template's ``data``: see the TRAP in HATHOR.md), and the block data, which carries the pool tag
and the job id so that no two jobs share a header and so that the pool's blocks are recognisable.
The job makes the header's SHA-256 midstate at its first share and keeps it, so checking a share
costs two compressions; a job that never sees a share (most of them) never pays for it.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, lru_cache
from types import SimpleNamespace
from typing import Any

from hashing.header import HeaderHasher
from hashing.pow import target_to_bytes, weight_to_target, work_of
from miningproxy.hathor.assembly import AssembledBlock, BlockAssembler, clamp_timestamp
from miningproxy.hathor.networks import BLOCK_DATA_MAX_SIZE
from miningproxy.hathor.template import BlockTemplate

JOB_ID_SIZE = 16  # bytes; 32 hex characters on the wire, as the node sends
_PREFIX_SIZE = 4  # of the job id: random per process
_COUNTER_SIZE = JOB_ID_SIZE - _PREFIX_SIZE  # of the job id: counts the process's jobs

_sha256 = hashlib.sha256


@dataclass(frozen=True)
class Generation:
    """One template as the pool uses it: numbered so jobs can tell which template they came from."""

    seq: int
    template: BlockTemplate
    node: str
    received_at: float  # trio time

    @cached_property
    def tip(self) -> bytes:
        return self.template.parents[0]

    @cached_property
    def tip_hex(self) -> str:
        return self.template.parents[0].hex()

    @cached_property
    def block_target(self) -> bytes:
        return target_bytes(self.template.weight)


class JobTerms:
    """What the jobs of one template, block timestamp, payout script and share weight have in
    common. A fan-out gives every rig at one weight a job on the same terms (one object, made
    once), so a job itself is little more than its id and its header."""

    __slots__ = (
        "generation", "tip", "block_target", "timestamp", "assembler", "share_weight",
        "share_target", "share_work", "tag", "funds_hash", "graph_prefix",
    )  # fmt: skip

    def __init__(
        self,
        generation: Generation,
        timestamp: int,
        assembler: BlockAssembler,
        share_weight: float,
        tag: bytes,
    ) -> None:
        self.generation = generation
        self.tip = generation.tip  # the template's first parent: every share compares it
        self.block_target = generation.block_target
        self.timestamp = timestamp
        self.assembler = assembler
        self.share_weight = share_weight
        self.share_target = target_bytes(share_weight)
        self.share_work = work_of(share_weight)  # what each accepted share credits (2**weight hashes)
        self.tag = tag
        self.funds_hash = assembler.funds_hash  # a job's header is this, then its graph hash
        # The graph struct up to the job id, the last bytes of the block's data: a job's graph
        # hash is this plus its id, hashed.
        self.graph_prefix = assembler.graph_head(timestamp, len(tag) + JOB_ID_SIZE) + tag


class Job:
    """One consumer's job. Built for every rig on every new block, so it is a slotted class that
    keeps only what is its own (id, header, when it was sent); what it shares with the other jobs
    of its fan-out is in its :class:`JobTerms`. What only a share or a block needs is computed on
    demand: the header's midstate, the set of nonces seen, the assembled block. Hot paths read
    ``job.terms`` directly; the properties are for everyone else."""

    # ``midstate`` and ``seen`` are made at the job's first share (check_share fills them in:
    # the share path reads them without a property call); most jobs never see one.
    __slots__ = ("job_id", "terms", "header", "created_at", "clean", "midstate", "seen")

    def __init__(self, job_id: str, terms: JobTerms, header: bytes, created_at: float, clean: bool) -> None:
        self.job_id = job_id
        self.terms = terms
        self.header = header
        self.created_at = created_at
        self.clean = clean
        self.midstate: HeaderHasher | None = None
        self.seen: set[int] | None = None

    @property
    def hasher(self) -> HeaderHasher:
        """The header's SHA-256 midstate, made at the first share (most jobs never see one)."""
        hasher = self.midstate
        if hasher is None:
            hasher = self.midstate = HeaderHasher(self.header)
        return hasher

    @property
    def seen_nonces(self) -> set[int]:
        """Normalized nonces already credited on this job (duplicate detection)."""
        seen = self.seen
        if seen is None:
            seen = self.seen = set()
        return seen

    @property
    def data(self) -> bytes:
        """The block's data field: the pool tag, then the job id's bytes."""
        return self.terms.tag + bytes.fromhex(self.job_id)

    @property
    def assembled(self) -> AssembledBlock:
        """The job's block, for any nonce (made when a share meets the block weight: rarely)."""
        terms = self.terms
        return terms.assembler.build(terms.timestamp, self.data)

    @property
    def generation(self) -> Generation:
        return self.terms.generation

    @property
    def template(self) -> BlockTemplate:
        return self.terms.generation.template

    @property
    def tip(self) -> bytes:
        return self.terms.tip

    @property
    def timestamp(self) -> int:
        return self.terms.timestamp

    @property
    def payout_script(self) -> bytes:
        return self.terms.assembler.script

    @property
    def share_weight(self) -> float:
        return self.terms.share_weight

    @property
    def share_target(self) -> bytes:
        return self.terms.share_target

    @property
    def block_target(self) -> bytes:
        return self.terms.block_target

    @property
    def block_weight(self) -> float:
        return self.terms.generation.template.weight

    def __repr__(self) -> str:
        return f"Job({self.job_id}, height={self.template.height}, weight={self.share_weight:g})"


@lru_cache(maxsize=1024)
def target_bytes(weight: float) -> bytes:
    """The 32-byte target for ``weight``; cached: a fan-out asks for the same few weights for every rig."""
    return target_to_bytes(weight_to_target(weight))


class JobFactory:
    """Builds jobs for the current generation; keeps the terms of the current block timestamp
    (one per payout script and share weight) and one assembler per payout script."""

    def __init__(
        self,
        tag: str,
        *,
        payout_script: bytes = b"",
        made: Any = None,
        wallclock: Callable[[], float] = time.time,
        max_assemblers: int = 65_536,  # one per solo rig (~550 bytes): fewer than rigs thrashes refreshes
        max_terms: int = 4096,
    ) -> None:
        self._tag = tag.encode()
        self.payout_script = payout_script  # the default: jobs that pay the pool
        # Counts the jobs made (``.value``; the pool's jobs_sent metric): once per rig per block.
        self._made = made if made is not None else SimpleNamespace(value=0)
        self._wallclock = wallclock
        # A random per-process prefix keeps job ids (and so block data) unique across restarts
        # and across several proxies mining for the same pool address.
        self._prefix = os.urandom(_PREFIX_SIZE)
        self._counter = itertools.count(1)
        if len(self._tag) + JOB_ID_SIZE > BLOCK_DATA_MAX_SIZE:
            raise ValueError(
                f"pool tag {tag!r} is {len(self._tag)} bytes; at most {BLOCK_DATA_MAX_SIZE - JOB_ID_SIZE} "
                f"fit in a block's data beside the job id"
            )
        # The block timestamp of the wall clock's current second: [_second, _second + 1) -> _timestamp.
        self._second = -math.inf
        self._timestamp = 0
        self._generation: Generation | None = None
        self.tip: bytes | None = None  # the generation's tip, read for every share
        self._assemblers: dict[bytes, BlockAssembler] = {}
        self._first_assembler: BlockAssembler | None = None  # the generation's, made from its template
        self._max_assemblers = max_assemblers
        # (payout script, share weight asked for) -> terms, for this generation and timestamp.
        self._terms: dict[tuple[bytes, float], JobTerms] = {}
        self._max_terms = max_terms

    @property
    def generation(self) -> Generation | None:
        return self._generation

    def set_generation(self, generation: Generation) -> None:
        self._generation = generation
        self.tip = generation.tip
        self._assemblers.clear()
        self._first_assembler = None
        self._terms.clear()
        self._second = -math.inf

    def _assembler(self, script: bytes) -> BlockAssembler:
        assembler = self._assemblers.get(script)
        if assembler is None:
            assert self._generation is not None
            if len(self._assemblers) >= self._max_assemblers:
                self._assemblers.clear()
            # The generation's first assembler is made from the template; the others (a solo
            # pool's, one per rig) from it, sharing what does not depend on the script.
            first = self._first_assembler
            if first is None:
                first = self._first_assembler = BlockAssembler(self._generation.template, script)
            assembler = self._assemblers[script] = (
                first if first.script == script else first.for_script(script)
            )
        return assembler

    def _new_terms(self, payout_script: bytes, share_weight: float) -> JobTerms:
        if not payout_script:  # (here, made once per script and weight, not in mint)
            raise ValueError("a job needs a payout script: none given, and the factory has no default")
        generation = self._generation
        assert generation is not None
        block_weight = generation.template.weight
        weight = share_weight if 0 < share_weight < block_weight else block_weight  # (NaN: the block's)
        terms = JobTerms(generation, self._timestamp, self._assembler(payout_script), weight, self._tag)
        if len(self._terms) >= self._max_terms:
            self._terms.clear()
        self._terms[payout_script, share_weight] = terms
        return terms

    def new_job(self, payout_script: bytes | None, share_weight: float, now: float, clean: bool) -> Job:
        """A fresh job for one consumer, paying ``payout_script`` (None: the pool's). ``now`` is
        trio time (for ages); the block timestamp comes from the wall clock, clamped into the
        template's range."""
        terms, job_id, header = self.mint(payout_script, share_weight)
        return Job(job_id, terms, header, now, clean)

    def mint(self, payout_script: bytes | None, share_weight: float) -> tuple[JobTerms, str, bytes]:
        """A fresh job's terms, id and header, paying ``payout_script`` (None: the pool's); a
        :class:`Job` is these plus when and how it was sent. Stratum sessions call this directly,
        once per rig per block, and make the job once its line is written; with arguments by
        position (keywords cost their matching on every call)."""
        generation = self._generation
        if generation is None:
            raise LookupError("no template yet")
        payout_script = payout_script or self.payout_script
        wall = self._wallclock()
        if not self._second <= wall < self._second + 1.0:  # a new second (or a clock gone back)
            timestamp = clamp_timestamp(generation.template, wall)
            if timestamp != self._timestamp:
                self._terms.clear()
            self._timestamp = timestamp
            self._second = math.floor(wall)
        terms = self._terms.get((payout_script, share_weight)) or self._new_terms(payout_script, share_weight)
        id_bytes = self._prefix + next(self._counter).to_bytes(_COUNTER_SIZE, "big")
        self._made.value += 1
        return terms, id_bytes.hex(), terms.funds_hash + _sha256(terms.graph_prefix + id_bytes).digest()
