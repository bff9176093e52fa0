"""Local hashing workers as pool consumers: the trio side of ``hashing.workers.WorkerPool``.

The workers are processes that know nothing of trio or the pool. This adapter gives them jobs from
the same engine as any rig and feeds what they find through the same share check, so a local
worker is accounted like a rig named ``local-N``. Results arrive on a pipe; the adapter waits for
it to become readable instead of polling.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import trio

from hashing.workers import Found, HashCount, WorkerExited, WorkerPool
from miningproxy.pool.jobs import Job
from miningproxy.pool.service import PoolService
from miningproxy.pool.stats import MinerId

log = logging.getLogger("miningproxy.local")

JOB_HISTORY = 8  # found nonces may arrive for a job just replaced
RATE_SMOOTHING = 0.3  # weight of the newest hash count in the per-worker rate


class LocalMiners:
    def __init__(
        self, pool: PoolService, count: int, *, share_weight: float = 0.0, address: str = ""
    ) -> None:
        self.pool = pool
        self.count = count
        self.share_weight = share_weight
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._rates: dict[int, float] = {}
        self._names = [f"local-{i}" for i in range(count)]
        self.address = address  # local workers mine for the pool's address

    def hashrates(self) -> dict[str, float]:
        return {self._names[w]: rate for w, rate in sorted(self._rates.items())}

    def miner(self, worker: int) -> MinerId:
        return MinerId(self.address, self._names[worker])

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        workers = WorkerPool(self.count)
        registered = False
        try:
            # Started from this (main) thread on purpose: the kernel's kill-on-parent-death is
            # tied to the starting thread, and trio's worker threads come and go.
            workers.start()
            log.info("%d local hashing workers started", self.count)
            self.pool.register_consumer()
            registered = True
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._feed_jobs, workers)
                nursery.start_soon(self._read_results, workers)
                task_status.started()
        finally:
            if registered:
                self.pool.unregister_consumer()
            # Reap the processes even when cancelled: shielded, and bounded by the pool's own grace.
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(workers.close)
            log.info("local hashing workers stopped")

    async def _feed_jobs(self, workers: WorkerPool) -> None:
        if self.pool.record_required:
            await self.pool.record_attached.wait()  # every share they find goes in the record
        async for signal in self.pool.work.subscribe():
            job = self.pool.new_job(share_weight=self.share_weight, clean=signal.clean)
            self._jobs[job.job_id] = job
            while len(self._jobs) > JOB_HISTORY:
                self._jobs.popitem(last=False)
            workers.set_job(job.job_id, job.header, job.share_weight)
            self.pool.job_delivered(signal)

    async def _read_results(self, workers: WorkerPool) -> None:
        fd = workers.results_fileno()
        while True:
            # Poll at least once a second even when nothing arrives: a crashed worker writes
            # nothing, and is only noticed (and restarted) by poll_events().
            with trio.move_on_after(1.0):
                await trio.lowlevel.wait_readable(fd)
            for event in workers.poll_events():
                if isinstance(event, Found):
                    self._found(event)
                elif isinstance(event, HashCount) and event.seconds > 0:
                    rate = event.hashes / event.seconds
                    old = self._rates.get(event.worker)
                    self._rates[event.worker] = rate if old is None else old + RATE_SMOOTHING * (rate - old)
                elif isinstance(event, WorkerExited):
                    log.warning(
                        "local worker %d (pid %d) exited with %s; restarting it",
                        event.worker,
                        event.pid,
                        event.returncode,
                    )

    def _found(self, event: Found) -> None:
        job = self._jobs.get(event.job_id)
        if job is None:
            return  # a result for a job long replaced: nothing to credit
        self.pool.submit_share(self.miner(event.worker), job, event.nonce)
