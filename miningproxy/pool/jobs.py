"""Jobs: one unique block header per consumer, built from the latest template.

A job fixes everything about a candidate block except the nonce: the template it came from, the
payout script, the timestamp (the clock clamped into the template's range, never the timestamp in
the template's ``data``: see the TRAP in HATHOR.md), and the block data, which carries the pool tag
and the job id so that no two jobs share a header and so that the pool's blocks are recognisable.
The job keeps the header's SHA-256 midstate, so checking a share costs two compressions.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hashing.header import HeaderHasher
from hashing.pow import target_to_bytes, weight_to_target
from miningproxy.hathor.assembly import AssembledBlock, BlockAssembler, clamp_timestamp
from miningproxy.hathor.template import BlockTemplate

JOB_ID_SIZE = 16  # bytes; 32 hex characters on the wire, as the node sends


@dataclass(frozen=True)
class Generation:
    """One template as the pool uses it: numbered so jobs can tell which template they came from."""

    seq: int
    template: BlockTemplate
    node: str
    received_at: float  # trio time

    @property
    def tip(self) -> bytes:
        return self.template.parents[0]


@dataclass(eq=False)
class Job:
    job_id: str
    generation: Generation
    assembled: AssembledBlock
    hasher: HeaderHasher
    share_weight: float
    share_target: bytes
    block_target: bytes
    payout_script: bytes
    created_at: float
    clean: bool
    # Normalized nonces already credited on this job (duplicate detection).
    seen_nonces: set[int] = field(default_factory=set)

    @property
    def header(self) -> bytes:
        return self.assembled.header

    @property
    def template(self) -> BlockTemplate:
        return self.generation.template

    @property
    def block_weight(self) -> float:
        return self.generation.template.weight

    @property
    def parent_hash(self) -> str:
        return self.generation.tip.hex()


class JobFactory:
    """Builds jobs for the current generation; caches one assembler per payout script."""

    def __init__(
        self, tag: str, *, wallclock: Callable[[], float] = time.time, max_assemblers: int = 4096
    ) -> None:
        self._tag = tag.encode()
        self._wallclock = wallclock
        # A random per-process prefix keeps job ids (and so block data) unique across restarts
        # and across several proxies mining for the same pool address.
        self._prefix = os.urandom(4)
        self._counter = itertools.count(1)
        self._generation: Generation | None = None
        self._assemblers: dict[bytes, BlockAssembler] = {}
        self._max_assemblers = max_assemblers

    @property
    def generation(self) -> Generation | None:
        return self._generation

    def set_generation(self, generation: Generation) -> None:
        self._generation = generation
        self._assemblers.clear()

    def _assembler(self, script: bytes) -> BlockAssembler:
        assembler = self._assemblers.get(script)
        if assembler is None:
            assert self._generation is not None
            if len(self._assemblers) >= self._max_assemblers:
                self._assemblers.clear()
            assembler = self._assemblers[script] = BlockAssembler(self._generation.template, script)
        return assembler

    def new_job(self, payout_script: bytes, share_weight: float, *, now: float, clean: bool) -> Job:
        """A fresh job for one consumer. ``now`` is trio time (for ages); the block timestamp comes
        from the wall clock, clamped into the template's range."""
        generation = self._generation
        if generation is None:
            raise LookupError("no template yet")
        id_bytes = self._prefix + next(self._counter).to_bytes(JOB_ID_SIZE - 4, "big")
        template = generation.template
        timestamp = clamp_timestamp(template, self._wallclock())
        assembled = self._assembler(payout_script).build(timestamp, self._tag + id_bytes)
        block_weight = template.weight
        share_weight = min(share_weight, block_weight) if share_weight > 0 else block_weight
        return Job(
            job_id=id_bytes.hex(),
            generation=generation,
            assembled=assembled,
            hasher=HeaderHasher(assembled.header),
            share_weight=share_weight,
            share_target=target_to_bytes(weight_to_target(share_weight)),
            block_target=target_to_bytes(weight_to_target(block_weight)),
            payout_script=payout_script,
            created_at=now,
            clean=clean,
        )
