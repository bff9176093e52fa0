"""Hash benchmark: the real WorkerPool against a straightforward loop measured in the same run.

The baseline runs in this process while the workers are paused (idle), in slices interleaved with
the workers' slices, so a change in the machine's load during the run hits both sides alike. The
workers mine a job at weight 256 (target 0: no hash meets it) so they hash continuously; their rate
comes from the HashCount events they send, i.e. the numbers the proxy itself would report.

Rates are hashes per wall-clock second. Because the machine may be shared, the CPU-time rates
(hashes per CPU second of the hashing process) are reported beside them: they show the code's speed
independent of how much of a core the scheduler granted.
"""

from __future__ import annotations

import hashlib
import os
import platform
import time
from typing import Any

from hashing.pow import weight_to_target
from hashing.workers import HashCount, WorkerPool

BASELINE_DESCRIPTION = (
    "single process, hashlib (OpenSSL), per nonce: h = mid.copy(); h.update(nonce.to_bytes(16, 'big')); "
    "d = hashlib.sha256(h.digest()).digest(); int(d[::-1].hex(), 16) < target"
)

_BENCH_HEADER = bytes(range(64))
_IMPOSSIBLE_WEIGHT = 256.0  # target 0


def _baseline(seconds: float) -> tuple[int, float, float]:
    """Run the straightforward loop for ``seconds``; returns (hashes, wall seconds, cpu seconds)."""
    mid = hashlib.sha256(_BENCH_HEADER)
    target = weight_to_target(_IMPOSSIBLE_WEIGHT)
    batch = 2048
    nonce = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    deadline = wall0 + seconds
    while True:
        for nonce in range(nonce, nonce + batch):  # noqa: B020 - continue from the last nonce
            h = mid.copy()
            h.update(nonce.to_bytes(16, "big"))
            d = hashlib.sha256(h.digest()).digest()
            if int(d[::-1].hex(), 16) < target:
                raise AssertionError("a hash met target 0")
        nonce += 1
        if time.perf_counter() >= deadline:
            break
    return nonce, time.perf_counter() - wall0, time.process_time() - cpu0


def _wait(pool: WorkerPool, seconds: float, counts: list[HashCount]) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.1))
        counts.extend(e for e in pool.poll_events() if isinstance(e, HashCount))


def run_hash_bench(seconds: float, workers: int) -> dict[str, Any]:
    """Measure the workers for ``seconds`` and the baseline for ``seconds``, interleaved.

    The run is cut into about one round per second; each round is baseline, workers, baseline
    (the workers paused, i.e. idle, while the baseline runs), so a change in the machine's load
    during the run hits both sides alike.
    """
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    rounds = max(1, round(seconds))
    counts: list[HashCount] = []
    base_hashes, base_wall, base_cpu = 0, 0.0, 0.0

    def baseline_slice() -> None:
        nonlocal base_hashes, base_wall, base_cpu
        hashes, wall, cpu = _baseline(seconds / rounds / 2)
        base_hashes, base_wall, base_cpu = base_hashes + hashes, base_wall + wall, base_cpu + cpu

    with WorkerPool(workers) as pool:
        impls = pool.sha256_impls
        for _ in range(rounds):
            baseline_slice()
            pool.set_job("hash-bench", _BENCH_HEADER, _IMPOSSIBLE_WEIGHT)  # (re)start hashing
            _wait(pool, seconds / rounds, counts)
            pool.pause()
            _wait(pool, 0.03, counts)  # let the last chunk finish before the baseline runs
            baseline_slice()
    # Closing made every worker flush its last count; the pool keeps those events.
    counts.extend(e for e in pool.poll_events() if isinstance(e, HashCount))

    workers_hps: list[float] = []
    workers_cpu_hps: list[float] = []
    for w in range(workers):
        mine = [c for c in counts if c.worker == w]
        hashes = sum(c.hashes for c in mine)
        wall = sum(c.seconds for c in mine)
        cpu = sum(c.cpu_seconds for c in mine)
        workers_hps.append(hashes / wall if wall > 0 else 0.0)
        workers_cpu_hps.append(hashes / cpu if cpu > 0 else 0.0)

    baseline_hps = base_hashes / base_wall
    baseline_cpu_hps = base_hashes / base_cpu if base_cpu > 0 else 0.0
    per_worker_hps = sum(workers_hps) / workers
    per_worker_cpu_hps = sum(workers_cpu_hps) / workers
    return {
        "seconds": seconds,
        "workers": workers,
        "cpu_count": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "sha256_impl": ",".join(sorted(set(impls))),
        "per_worker_hps": per_worker_hps,
        "workers_hps": workers_hps,
        "total_hps": sum(workers_hps),
        "baseline_hps": baseline_hps,
        "ratio": per_worker_hps / baseline_hps if baseline_hps > 0 else 0.0,
        "baseline": BASELINE_DESCRIPTION,
        "baseline_hashes": base_hashes,
        "per_worker_cpu_hps": per_worker_cpu_hps,
        "workers_cpu_hps": workers_cpu_hps,
        "baseline_cpu_hps": baseline_cpu_hps,
        "ratio_cpu": per_worker_cpu_hps / baseline_cpu_hps if baseline_cpu_hps > 0 else 0.0,
    }


def _mhs(hps: float) -> str:
    return f"{hps / 1e6:.3f} MH/s"


def format_hash_bench(result: dict[str, Any]) -> str:
    """A human-readable summary of :func:`run_hash_bench`'s result."""
    per_worker = ", ".join(_mhs(r) for r in result["workers_hps"])
    return "\n".join(
        [
            f"hash bench: {result['workers']} worker(s), {result['seconds']:g} s, "
            f"{result['cpu_count']} CPUs, {result['python']}, sha256 impl: {result['sha256_impl']}",
            f"  workers:   total {_mhs(result['total_hps'])}, mean per worker {_mhs(result['per_worker_hps'])}"
            f" ({per_worker})",
            f"  baseline:  {_mhs(result['baseline_hps'])} ({result['baseline']})",
            f"  ratio:     {result['ratio']:.2f}x per worker vs baseline (wall clock)",
            f"  cpu time:  worker {_mhs(result['per_worker_cpu_hps'])} vs baseline "
            f"{_mhs(result['baseline_cpu_hps'])} per CPU second: {result['ratio_cpu']:.2f}x",
        ]
    )
