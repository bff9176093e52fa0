"""WorkerPool: real worker processes find valid nonces, switch jobs, pause, and leave nothing behind."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hashing.header import HeaderHasher, check_pow
from hashing.scan import split_nonce_space
from hashing.workers import Event, Found, HashCount, WorkerExited, WorkerPool

HEADER_A = bytes(range(64))
HEADER_B = bytes(range(64, 128))
ROOT = Path(__file__).resolve().parent.parent


def collect(pool: WorkerPool, done: Callable[[list[Event]], bool], timeout: float = 5.0) -> list[Event]:
    """Events until ``done(events)`` or ``timeout``, waiting on the pool's fd like the trio adapter will."""
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    while not done(events) and (left := deadline - time.monotonic()) > 0:
        select.select([pool.results_fileno()], [], [], min(left, 0.1))
        events.extend(pool.poll_events())
    return events


def founds(events: list[Event]) -> list[Found]:
    return [e for e in events if isinstance(e, Found)]


def assert_valid(found: list[Found], headers: dict[str, bytes], weight: float) -> None:
    hashers = {job: HeaderHasher(h) for job, h in headers.items()}
    for f in found:
        assert hashers[f.job_id].hash_nonce(f.nonce) == f.hash
        assert check_pow(f.hash, weight)


def gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (absent, or a zombie nobody reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def children_of(ppid: int) -> set[int]:
    kids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == ppid and fields[0] not in ("Z", "X"):
                kids.add(int(entry.name))
    return kids


def wait_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(gone(p) for p in pids):
            return True
        time.sleep(0.05)
    return all(gone(p) for p in pids)


def test_pool_finds_valid_nonces_in_each_workers_share_and_counts_hashes() -> None:
    with WorkerPool(2) as pool:
        assert pool.n_workers == 2 and len(pool.pids) == 2
        pool.set_job("a", HEADER_A, 10.0)

        def enough(events: list[Event]) -> bool:
            counted = {e.worker for e in events if isinstance(e, HashCount)}
            return len(founds(events)) >= 10 and counted == {0, 1}

        events = collect(pool, enough)
        assert enough(events)
        found = founds(events)
        assert_valid(found, {"a": HEADER_A}, 10.0)
        assert len({f.nonce for f in found}) == len(found)  # never the same nonce twice
        for f in found:
            start, count = split_nonce_space(f.worker, 2)
            assert start <= f.nonce < start + count
        counts = [e for e in events if isinstance(e, HashCount)]
        assert all(c.hashes > 0 and 0.4 < c.seconds < 2.0 for c in counts)  # about every 0.5 s
        assert pool.hashrate() > 0
        assert all(rate > 0 for rate in pool.worker_hashrates())
        assert pool.total_hashes > 0


def test_set_job_switches_every_worker_quickly() -> None:
    with WorkerPool(2) as pool:
        pool.set_job("a", HEADER_A, 9.0)
        before = collect(pool, lambda ev: {f.worker for f in founds(ev)} == {0, 1})
        switched_at = time.monotonic()
        pool.set_job("b", HEADER_B, 9.0)
        first_b: dict[int, float] = {}  # worker -> when its first job-b find arrived

        def both_switched(events: list[Event]) -> bool:
            for f in founds(events):
                if f.job_id == "b":
                    first_b.setdefault(f.worker, time.monotonic())
            return set(first_b) == {0, 1}

        events = collect(pool, both_switched)
        after = founds(events)
        assert set(first_b) == {0, 1}
        # Events arrive in each worker's order: once a worker reported job b, job a is over for it.
        for worker in (0, 1):
            jobs = [f.job_id for f in after if f.worker == worker]
            assert "a" not in jobs[jobs.index("b") :]
        latency = max(first_b.values()) - switched_at
        assert latency < 1.0, f"job switch took {latency:.3f} s"  # ~10-50 ms unloaded; generous for CI
        # Later events belong to the new job only.
        later = founds(collect(pool, lambda ev: len(founds(ev)) >= 10))
        assert later and {f.job_id for f in later} == {"b"}
        assert_valid(founds(before) + after + later, {"a": HEADER_A, "b": HEADER_B}, 9.0)


def test_pause_stops_hashing_and_resume_continues_where_it_stopped() -> None:
    with WorkerPool(1) as pool:
        pool.set_job("a", HEADER_A, 9.0)
        first = founds(collect(pool, lambda ev: len(founds(ev)) >= 5))
        pool.pause()
        time.sleep(0.2)
        tail = pool.poll_events()  # whatever was in flight when the pause landed
        time.sleep(0.6)
        assert pool.poll_events() == []  # paused: no finds, no hash counts
        assert pool.hashrate() == 0.0 and pool.paused
        seen = {f.nonce for f in first + founds(tail)}
        pool.resume()
        resumed = founds(collect(pool, lambda ev: len(founds(ev)) >= 5))
        assert resumed
        assert all(f.nonce > max(seen) for f in resumed)  # same job: no nonce scanned twice
        assert_valid(first + resumed, {"a": HEADER_A}, 9.0)


def test_close_leaves_no_process_behind() -> None:
    pool = WorkerPool(2)
    pool.start()
    pool.set_job("a", HEADER_A, 20.0)
    pids = pool.pids
    assert children_of(os.getpid()) >= set(pids)
    pool.close()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # not even a zombie: close() reaped it
    assert not (children_of(os.getpid()) & set(pids))
    pool.close()  # idempotent
    with pytest.raises(RuntimeError):
        pool.set_job("b", HEADER_B, 1.0)


def test_close_kills_a_worker_that_does_not_answer() -> None:
    pool = WorkerPool(2)
    pool.start()
    pids = pool.pids
    os.kill(pids[0], signal.SIGSTOP)  # cannot read its stop message, cannot handle SIGTERM
    t0 = time.monotonic()
    pool.close(grace=0.2)
    assert time.monotonic() - t0 < 3.0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_dead_worker_is_reported_and_replaced() -> None:
    with WorkerPool(1, respawn_delay=0.2) as pool:
        pool.set_job("a", HEADER_A, 9.0)
        old = pool.pids[0]
        os.kill(old, signal.SIGKILL)
        events = collect(pool, lambda ev: any(isinstance(e, WorkerExited) for e in ev), timeout=3.0)
        assert [e.pid for e in events if isinstance(e, WorkerExited)] == [old]
        replaced = collect(pool, lambda ev: len(founds(ev)) >= 3, timeout=5.0)
        assert pool.pids[0] != old
        assert_valid(founds(replaced), {"a": HEADER_A}, 9.0)


PARENT_SCRIPT = """
import json, os, sys, time
sys.path.insert(0, {root!r})
from hashing.workers import WorkerPool
pool = WorkerPool(2)
pool.start()
pool.set_job("a", bytes(64), 30.0)
print(json.dumps(pool.pids), flush=True)
time.sleep(0.3)
if sys.argv[1] == "exit":
    os._exit(0)  # no close(), no atexit, no finalizers
time.sleep(60)  # wait to be SIGKILLed
"""


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_workers_die_with_their_parent(how: str) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT_SCRIPT.format(root=str(ROOT)), how], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        pids = json.loads(parent.stdout.readline())
        assert len(pids) == 2 and not any(gone(p) for p in pids)
        if how == "sigkill":
            parent.kill()
        parent.wait(timeout=10)
        assert wait_gone(pids, timeout=5.0), f"orphaned workers: {[p for p in pids if not gone(p)]}"
    finally:
        parent.kill()
        parent.wait()


def test_invalid_jobs_are_rejected() -> None:
    with WorkerPool(1) as pool:
        with pytest.raises(ValueError):
            pool.set_job("a", bytes(63), 10.0)
        with pytest.raises(ValueError):
            pool.set_job("a", bytes(64), 300.0)
        with pytest.raises(ValueError):
            pool.set_job("x" * 5000, bytes(64), 10.0)
    with pytest.raises(ValueError):
        WorkerPool(0)
