"""The pool: templates in, jobs out, shares checked, blocks submitted.

Consumers (Stratum sessions, local workers) subscribe to ``work``: a latest-value signal that says
"build a new job now" (a new template, or a periodic refresh so timestamps stay fresh). A slow
consumer sees only the newest signal and never queues stale ones. Shares come back through
:meth:`PoolService.submit_share` (or :meth:`~PoolService.judge_share`, with the live stats
credited later for a whole read by :meth:`~PoolService.credit_shares`), which answers at once; a
share that is a block starts its submission in the background so the rig's reply is never
delayed by the node.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from miningproxy.events.pool_events import PoolEvents, PoolEventsBusy
from miningproxy.hathor.addresses import decode_address
from miningproxy.hathor.template import BlockTemplate
from miningproxy.latest import LatestValue
from miningproxy.metrics import Metrics
from miningproxy.pool.jobs import Generation, Job, JobFactory
from miningproxy.pool.shares import STORAGE_BUSY, ShareResult, check_share
from miningproxy.pool.stats import MinerId, PoolStats

log = logging.getLogger("miningproxy.pool")

RECENT_BLOCKS = 200


class Upstream(Protocol):
    """What the pool needs from its upstream. An upstream that also has ``enqueue()`` (same
    arguments as ``submit()`` plus ``parent``, synchronous, returns a handle with ``queued_at``) and
    ``async outcome(handle)`` gets each block queued in the step that found it (MiningUpstream)."""

    templates: LatestValue[Any]

    async def submit(
        self, struct: bytes, *, block_hash: bytes, on_late_fate: Callable[[Any], None] | None = None
    ) -> Any: ...


@dataclass(frozen=True)
class WorkSignal:
    generation: Generation
    clean: bool  # the tip changed: every earlier job is stale
    seq: int
    issued_at: float  # trio time


@dataclass
class _Broadcast:
    seq: int
    started: float
    remaining: int


@dataclass(eq=False)
class FoundBlock:
    hash: bytes
    height: int
    miner: MinerId
    job_id: str
    found_at: float  # wall clock
    status: str = "found"  # found -> submitted (-> pending) -> accepted | rejected | stale
    reason: str = ""
    node: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "hash": self.hash.hex(),
            "height": self.height,
            "miner": str(self.miner),
            "job_id": self.job_id,
            "found_at": self.found_at,
            "status": self.status,
            "reason": self.reason,
            "node": self.node,
        }


def pick_template(templates: list[BlockTemplate]) -> BlockTemplate | None:
    """The node may offer several templates; a plain block (version 0) is what the pool mines.
    A template that only allows merge-mined blocks (version 3) needs an aux-pow the pool does not
    make, so it is not mined at all."""
    for template in templates:
        if 0 in template.versions:
            return template
    return None


class PoolService:
    def __init__(
        self,
        *,
        upstream: Upstream,
        address: str,
        tag: str,
        job_refresh: float,
        metrics: Metrics,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self.upstream = upstream
        self.metrics = metrics
        self._shares_ok = metrics.shares.labels("accepted", "ok")  # per share: skip the label lookup
        self.payout_script = decode_address(address).script
        self.jobs = JobFactory(
            tag, payout_script=self.payout_script, made=metrics.jobs_sent, wallclock=wallclock
        )
        self.job_refresh = job_refresh
        self.work: LatestValue[WorkSignal] = LatestValue()
        self.stats = PoolStats()
        self.blocks: deque[FoundBlock] = deque(maxlen=RECENT_BLOCKS)
        self._wallclock = wallclock
        self._seq = 0
        self.consumers = 0  # registered job consumers (rigs, local worker pools)
        self.events: PoolEvents | None = None  # the accounting record, when event streams run
        # Set by the app when a record will be attached: consumers that tell nobody (local
        # workers) wait for it, so none of their shares is missing from the record.
        self.record_required = False
        self.record_attached = trio.Event()
        self._broadcast: _Broadcast | None = None
        self._nursery: trio.Nursery | None = None
        self._in_flight: set[FoundBlock] = set()
        self._drained = trio.Event()

    # --- state ---------------------------------------------------------------------------------

    @property
    def generation(self) -> Generation | None:
        return self.jobs.generation

    @property
    def tip(self) -> bytes | None:
        return self.jobs.tip

    # --- running -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._follow_templates)
            nursery.start_soon(self._refresh_jobs)
            task_status.started()

    async def _follow_templates(self) -> None:
        async for update in self.upstream.templates.subscribe():
            if not update.templates:
                continue
            self.metrics.templates.inc()
            template = pick_template(update.templates)
            if template is None:
                log.error(
                    "templates from %s allow no plain block (versions %s): not mining them",
                    update.node,
                    [t.versions for t in update.templates],
                )
                continue
            previous = self.jobs.generation
            if previous is not None and previous.template == template and previous.node == update.node:
                continue
            self._seq += 1
            generation = Generation(self._seq, template, update.node, trio.current_time())
            clean = previous is None or previous.tip != generation.tip
            self.jobs.set_generation(generation)
            if self.events is not None:
                self._record_generation(generation, previous, clean)
            if clean:
                log.info(
                    "new tip %s at height %d (weight %.2f) from %s",
                    generation.tip.hex()[:16],
                    template.height,
                    template.weight,
                    update.node,
                )
            self._publish(WorkSignal(generation, clean, self._seq, trio.current_time()))

    def attach_events(self, events: PoolEvents) -> None:
        """Start writing the pool's record; the template being mined goes in first."""
        self.events = events
        self.record_attached.set()
        generation = self.jobs.generation
        if generation is not None:
            self._record_generation(generation, None, True)

    def _record_generation(self, generation: Generation, previous: Generation | None, clean: bool) -> None:
        assert self.events is not None
        template = generation.template
        try:  # informational: a record that cannot keep up loses it (logged), never the work
            if previous is None or previous.node != generation.node:
                self.events.upstream_changed(
                    node=generation.node, previous=previous.node if previous else None
                )
            self.events.template_changed(
                height=template.height,
                parent_hash=generation.tip.hex(),
                weight=template.weight,
                reward=template.reward,
                clean=clean,
                node=generation.node,
            )
        except PoolEventsBusy as exc:
            log.warning("pool record busy, template change not recorded: %s", exc)

    async def _refresh_jobs(self) -> None:
        # New jobs at least every job_refresh seconds, so block timestamps follow the clock (the
        # block weight a node asks for may depend on the timestamp) and rigs never sit idle.
        while True:
            current = self.work.current
            if current is None:
                await trio.sleep(self.job_refresh)
                continue
            due = current.issued_at + self.job_refresh
            if trio.current_time() < due:
                await trio.sleep_until(due)
                continue
            self._seq += 1
            self._publish(WorkSignal(current.generation, False, self._seq, trio.current_time()))

    def _publish(self, signal: WorkSignal) -> None:
        # Broadcast latency is measured for clean signals only (a new tip is when speed matters):
        # from the template's arrival to the last registered consumer having its job.
        if signal.clean and self.consumers:
            self._broadcast = _Broadcast(signal.seq, signal.generation.received_at, self.consumers)
        self.work.publish(signal)

    # --- consumers -----------------------------------------------------------------------------

    def register_consumer(self) -> None:
        self.consumers += 1

    def unregister_consumer(self) -> None:
        self.consumers -= 1
        broadcast = self._broadcast
        if broadcast is not None:
            broadcast.remaining -= 1  # do not wait for a consumer that is gone
            self._maybe_finish(broadcast)

    def job_delivered(self, signal: WorkSignal, count: int = 1) -> None:
        """``count`` consumers have handed out (written) their jobs for ``signal``."""
        broadcast = self._broadcast
        if broadcast is not None and broadcast.seq == signal.seq:
            broadcast.remaining -= count
            if broadcast.remaining <= 0:  # (once per rig per block: the call only for the last)
                self._maybe_finish(broadcast)

    def _maybe_finish(self, broadcast: _Broadcast) -> None:
        if broadcast.remaining <= 0 and self._broadcast is broadcast:
            self.metrics.job_broadcast_latency.observe(trio.current_time() - broadcast.started)
            self._broadcast = None

    # --- jobs and shares -----------------------------------------------------------------------

    def new_job(
        self,
        payout_script: bytes | None = None,
        share_weight: float = 0.0,
        clean: bool = False,
        now: float | None = None,
    ) -> Job:
        """A job for one consumer (None: paying the pool); ``now`` (trio time) when the caller has it
        at hand. Stratum sessions call ``jobs.new_job`` itself."""
        return self.jobs.new_job(
            payout_script, share_weight, trio.current_time() if now is None else now, clean
        )

    def submit_share(
        self, miner: MinerId, job: Job, nonce: int, *, arrived_at: float | None = None
    ) -> ShareResult:
        """Judge and credit a share; for consumers that tell nobody (local workers)."""
        now = trio.current_time() if arrived_at is None else arrived_at
        result = self.judge_share(miner, job, nonce, now)
        if result.accepted:
            self.credit_shares(miner, 1, job.terms.share_work, now)
        return result

    def judge_share(self, miner: MinerId, job: Job, nonce: int, now: float) -> ShareResult:
        """Judge a share that arrived at ``now`` (trio time) and do everything it calls for at once
        (a block goes upstream, the accounting record gets the share, a rejection is counted)
        except crediting an accepted share to the live stats: that is :meth:`credit_shares`, which
        the caller owes every accepted share. A Stratum session credits a read's shares together
        (they arrived at the same ``now``)."""
        result = check_share(job, nonce, self.jobs.tip)
        # A block goes upstream in this very step, right after its line in the found-block
        # journal (a copy into a memory-mapped file: what lets a restart record a block whose
        # commit a kill prevented); its share's record and every other piece of bookkeeping
        # follow (a block is never held up, or dropped, for them).
        block = None
        if result.is_block:
            if self.events is not None:
                self._journal_block(self.events, miner, job, result.hash or b"")
            block = self._enqueue_block(miner, job, nonce, result.hash or b"")
        if result.accepted and self.events is not None:
            terms = job.terms
            try:
                self.events.share_accepted(
                    miner=str(miner),
                    worker=miner.worker,
                    address=miner.address,
                    job_id=job.job_id,
                    share_weight=terms.share_weight,
                    hash=result.hash or b"",
                    height=terms.generation.template.height,
                )
            except PoolEventsBusy:
                if result.is_block:
                    # A block is never dropped for bookkeeping: submit it, and say loudly that
                    # the accounting record misses this share.
                    log.error("accounting record busy: block share by %s credited without a record", miner)
                    self.metrics.shares_unrecorded.inc()
                else:
                    # Crediting a share we cannot record would make the record lie: refuse it.
                    job.seen_nonces.discard(nonce)
                    result = STORAGE_BUSY
        if not result.accepted:
            self.stats.rejected(miner, result.reason)
            self.metrics.shares.labels("rejected", result.reason).inc()
        elif block is not None:
            self._block_found(miner, job, block, now)
        return result

    def credit_shares(self, miner: MinerId, count: int, work: float, now: float) -> None:
        """Credit ``count`` accepted shares worth ``work`` hashes in all, judged at ``now``."""
        self.stats.accepted(miner, work, now, count)
        self._shares_ok.value += count

    @staticmethod
    def _journal_block(events: PoolEvents, miner: MinerId, job: Job, block_hash: bytes) -> None:
        template = job.terms.generation.template
        try:
            events.journal_block(
                block_hash,
                template.height,
                template.weight,
                str(miner),
                miner.worker,
                miner.address,
                job.job_id,
            )
        except Exception:  # (never expected) the block goes upstream whatever happens here
            log.exception("found-block journal: block %s not journaled", block_hash.hex())

    def _enqueue_block(
        self, miner: MinerId, job: Job, nonce: int, block_hash: bytes
    ) -> tuple[FoundBlock, bytes, Any]:
        """Hand a found block to the upstream at once: (the block, its struct, what enqueue()
        returned, or None for an upstream with submit() only)."""
        found = FoundBlock(block_hash, job.template.height, miner, job.job_id, self._wallclock())
        struct = job.assembled.struct(nonce)
        queued = None
        enqueue = getattr(self.upstream, "enqueue", None)
        if enqueue is not None and self._nursery is not None:
            # MiningUpstream writes it to an idle node right away; only the wait for its fate
            # runs in the background (_submit_block).
            parents = job.template.parents
            queued = enqueue(
                struct,
                block_hash=block_hash,
                parent=parents[0] if parents else None,
                on_late_fate=lambda late: self._record_fate(found, late),
            )
        return found, struct, queued

    def _block_found(
        self, miner: MinerId, job: Job, block: tuple[FoundBlock, bytes, Any], arrived_at: float
    ) -> None:
        found, struct, queued = block
        block_hash = found.hash
        self.blocks.append(found)
        self.stats.block(miner)
        self.metrics.blocks.labels("found").inc()
        log.info("block found: height=%d hash=%s by %s", found.height, block_hash.hex(), miner)
        if self.events is not None:
            self.events.block_found(
                hash=block_hash,
                height=found.height,
                weight=job.block_weight,
                miner=str(miner),
                worker=miner.worker,
                address=miner.address,
                job_id=job.job_id,
            )
        if self._nursery is None:
            raise RuntimeError("PoolService.run() is not running")
        self._in_flight.add(found)  # now, not when the task starts: drain() must see it
        # Without enqueue() (an upstream with submit() only) the task submits the struct.
        self._nursery.start_soon(self._submit_block, found, struct if queued is None else queued, arrived_at)

    @staticmethod
    def _block_fields(found: FoundBlock) -> dict[str, Any]:
        miner = found.miner
        return {
            "hash": found.hash,
            "height": found.height,
            "miner": str(miner),
            "worker": miner.worker,
            "address": miner.address,
        }

    def _upstream_node(self) -> str:
        generation = self.jobs.generation
        return generation.node if generation else ""

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) for in-flight block submissions; log any still pending."""
        with trio.move_on_after(timeout):
            while self._in_flight:
                self._drained = trio.Event()
                await self._drained.wait()
        for found in self._in_flight:
            log.error(
                "shutdown with block submission still pending: height=%d hash=%s (status %s)",
                found.height,
                found.hash.hex(),
                found.status,
            )

    async def _submit_block(self, found: FoundBlock, block: Any, arrived_at: float) -> None:
        try:
            await self._submit(found, block, arrived_at)
        finally:
            self._in_flight.discard(found)
            if not self._in_flight:
                self._drained.set()

    async def _submit(self, found: FoundBlock, block: Any, arrived_at: float) -> None:
        """``block``: the struct to submit, or what ``upstream.enqueue()`` returned for it."""
        found.status = "submitted"
        self.metrics.blocks.labels("submitted").inc()
        if self.events is not None:
            self.events.block_submitted(**self._block_fields(found), node=self._upstream_node())
        if isinstance(block, bytes):
            self.metrics.block_submit_latency.observe(trio.current_time() - arrived_at)
            outcome = await self.upstream.submit(
                block, block_hash=found.hash, on_late_fate=lambda late: self._record_fate(found, late)
            )
        else:
            self.metrics.block_submit_latency.observe(block.queued_at - arrived_at)
            outcome = await self.upstream.outcome(block)
        if outcome.status == "error" and "fate will be" in (outcome.reason or ""):
            # No answer in time, but the block is still queued upstream: its fate comes later.
            found.status = "pending"
            found.reason = outcome.reason
            log.warning(
                "block pending: height=%d hash=%s (%s)", found.height, found.hash.hex(), outcome.reason
            )
            return
        if (
            outcome.status in ("accepted", "rejected", "stale")
            and getattr(outcome, "latency", None) is not None
        ):
            self.metrics.block_submit_roundtrip.observe(outcome.latency)  # submit() to the node's verdict
        self._record_fate(found, outcome)

    def _record_fate(self, found: FoundBlock, outcome: Any) -> None:
        # "error" (e.g. dropped from a full queue) counts as rejected; the reason says why.
        status = outcome.status if outcome.status in ("accepted", "rejected", "stale") else "rejected"
        found.status = status
        found.reason = outcome.reason or ""
        found.node = outcome.node or ""
        self.metrics.blocks.labels(status).inc()
        if self.events is not None:
            if status == "accepted":
                self.events.block_accepted(**self._block_fields(found), node=found.node)
            else:
                self.events.block_rejected(
                    **self._block_fields(found), node=found.node, status=status, reason=found.reason
                )
        level = logging.INFO if status == "accepted" else logging.WARNING
        log.log(
            level,
            "block %s: height=%d hash=%s%s",
            status,
            found.height,
            found.hash.hex(),
            f" ({found.reason})" if found.reason else "",
        )
