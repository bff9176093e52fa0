"""A pool of hashing worker processes, driven without trio (blocking or pollable).

Use::

    with WorkerPool(2) as pool:                 # starts the workers, waits until they are ready
        pool.set_job("job-1", header64, 22.0)   # every worker mines its own nonce share
        fd = pool.results_fileno()              # readable when events wait (trio: wait_readable)
        for event in pool.poll_events():        # never blocks
            ...                                 # Found / HashCount / WorkerExited
    # leaving the block stops and reaps every worker

How the processes are started, and why: each worker is a fresh interpreter started with
``subprocess`` (``python -I -S -c <bootstrap>``), i.e. spawn semantics implemented directly.
``fork`` is unsafe here because the parent runs trio, which uses threads (``to_thread``): a forked
child can inherit a lock held by another thread and hang. ``multiprocessing``'s spawn and
forkserver would be safe, but both re-import the parent's ``__main__`` in every worker (the whole
proxy CLI, trio included), spawn starts a resource-tracker process as a side effect, and neither
gives a plain fd to hand to trio. A bare interpreter that imports only ``hashing`` starts in tens
of milliseconds and speaks a small line protocol (:mod:`hashing._wire`).

No orphans: workers exit on a stop message or when their stdin reaches EOF (the parent closed it or
died); on Linux they also get SIGKILL from the kernel when the spawning thread dies
(PR_SET_PDEATHSIG, armed only when spawned from the main thread: a worker thread such as trio's
``to_thread`` ones exits when idle, and would take the workers with it); and they re-check the parent
pid between chunks. :meth:`WorkerPool.close` sends stop, waits a short grace period, then SIGTERM,
then SIGKILL, and reaps every process.

Not thread-safe: one owner drives a pool.
"""

from __future__ import annotations

import collections
import errno
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from hashing import _wire
from hashing.header import HEADER_SIZE
from hashing.pow import weight_to_target
from hashing.scan import split_nonce_space

# The worker runs isolated (-I: no env vars, no cwd on sys.path; -S: no site-packages), so it finds
# `hashing` through this directory, appended after the stdlib so nothing there can shadow it.
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
_BOOTSTRAP = (
    "import sys; sys.path.append(sys.argv[1]); "
    "from hashing._worker import main; raise SystemExit(main(sys.argv[2:]))"
)


@dataclass(frozen=True)
class Found:
    """A nonce whose hash met the job's weight. ``hash`` is big-endian, as Hathor shows it."""

    worker: int
    job_id: str
    nonce: int
    hash: bytes


@dataclass(frozen=True)
class HashCount:
    """``hashes`` done by ``worker`` in the last ``seconds`` of wall time (``cpu_seconds`` of CPU)."""

    worker: int
    hashes: int
    seconds: float
    cpu_seconds: float = 0.0


@dataclass(frozen=True)
class WorkerExited:
    """A worker died without being told to stop; the pool starts a replacement."""

    worker: int
    pid: int
    returncode: int | None


Event = Found | HashCount | WorkerExited


@dataclass(frozen=True)
class _Job:
    job_id: str
    header: bytes
    weight: float


class _Slot:
    """One worker process and the parent's side of its pipes."""

    __slots__ = (
        "index",
        "proc",
        "control_fd",
        "pending",
        "ready",
        "impl",
        "rates",
        "spawned_at",
        "exit_reported",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.control_fd = -1
        self.pending: bytes | None = None  # latest control message the pipe had no room for
        self.ready = False
        self.impl = ""  # the SHA-256 implementation the worker measured fastest
        self.rates: collections.deque[tuple[float, int, float]] = collections.deque()
        self.spawned_at = 0.0
        self.exit_reported = False

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class WorkerPool:
    """N worker processes mining one job at a time; see the module docstring."""

    def __init__(
        self,
        n_workers: int | None = None,
        *,
        report_interval: float = 0.5,
        chunk_seconds: float = 0.01,
        rate_window: float = 5.0,
        respawn_delay: float = 5.0,
    ) -> None:
        n = n_workers if n_workers is not None else (os.cpu_count() or 1)
        if n < 1:
            raise ValueError(f"n_workers must be >= 1, got {n}")
        self._n = n
        self._report_interval = report_interval
        self._chunk_seconds = chunk_seconds
        self._rate_window = rate_window
        self._respawn_delay = respawn_delay
        self._slots = [_Slot(i) for i in range(n)]
        self._results_r = -1
        self._results_w = -1
        self._buffer = _wire.LineBuffer()
        self._events: list[Event] = []
        self._job: _Job | None = None
        self._paused = False
        self._started = False
        self._closed = False
        self.total_hashes = 0

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> WorkerPool:
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self, timeout: float = 10.0) -> None:
        """Start every worker and wait until each has reported ready (raises RuntimeError if not)."""
        if self._started:
            raise RuntimeError("WorkerPool already started")
        if self._closed:
            raise RuntimeError("WorkerPool is closed")
        self._started = True
        self._results_r, self._results_w = os.pipe()
        os.set_blocking(self._results_r, False)
        try:
            for slot in self._slots:
                self._spawn(slot)
            deadline = time.monotonic() + timeout
            while not all(slot.ready for slot in self._slots):
                dead = [slot.index for slot in self._slots if not slot.alive]
                if dead:
                    raise RuntimeError(f"hashing workers {dead} exited during start-up")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"hashing workers not ready after {timeout} s")
                select.select([self._results_r], [], [], min(left, 0.05))
                self._read_results()
        except BaseException:
            self.close(grace=0.0)
            raise

    def _spawn(self, slot: _Slot) -> None:
        # The death signal follows the spawning *thread*; only the main thread lives as long as we do.
        deathsig = "1" if threading.current_thread() is threading.main_thread() else "0"
        args = [
            sys.executable, "-I", "-S", "-c", _BOOTSTRAP, _PACKAGE_ROOT,
            str(slot.index), str(self._results_w), str(os.getpid()), deathsig,
            repr(self._report_interval), repr(self._chunk_seconds),
        ]  # fmt: skip
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            pass_fds=(self._results_w,),
            close_fds=True,
        )
        assert proc.stdin is not None
        slot.proc = proc
        slot.control_fd = proc.stdin.fileno()
        os.set_blocking(slot.control_fd, False)
        slot.pending = None
        slot.ready = False
        slot.rates.clear()
        slot.spawned_at = time.monotonic()
        slot.exit_reported = False

    def close(self, grace: float = 1.0) -> None:
        """Stop every worker: stop message, ``grace`` seconds, SIGTERM, SIGKILL; reap them all."""
        if self._closed:
            return
        self._closed = True
        for slot in self._slots:
            if slot.proc is not None:
                slot.pending = None
                self._send(slot, _wire.encode(["stop"]))
                self._close_control(slot)  # EOF is a stop signal too
        procs = [slot.proc for slot in self._slots if slot.proc is not None]
        deadline = time.monotonic() + grace
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                for proc in procs:
                    if proc.poll() is None:
                        try:
                            proc.send_signal(sig)
                        except ProcessLookupError:
                            pass
                deadline = time.monotonic() + (0.5 if sig == signal.SIGTERM else 5.0)
            while any(proc.poll() is None for proc in procs) and time.monotonic() < deadline:
                # Keep draining: a worker blocked writing to a full results pipe cannot exit.
                if self._results_r >= 0:
                    select.select([self._results_r], [], [], 0.01)
                    self._read_results()
                else:
                    time.sleep(0.01)
            if all(proc.poll() is not None for proc in procs):
                break
        for proc in procs:
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
                pass
        if self._results_r >= 0:
            self._read_results()
        for fd in (self._results_r, self._results_w):
            if fd >= 0:
                os.close(fd)
        self._results_r = self._results_w = -1

    stop = close

    # -- control --------------------------------------------------------------------------------
    def set_job(self, job_id: str, header: bytes, weight: float) -> None:
        """Mine ``header`` at share ``weight``; every worker switches within one chunk (~10 ms).

        Re-sending the current job (same id and header) keeps each worker's position, so only a
        weight change or a resume after :meth:`pause` happens; any other job restarts the shares.
        """
        self._check_running()
        if len(header) != HEADER_SIZE:
            raise ValueError(f"mining header must be {HEADER_SIZE} bytes, got {len(header)}")
        weight_to_target(float(weight))  # validates the weight
        job = _Job(str(job_id), bytes(header), float(weight))
        messages = [self._job_message(job, slot.index) for slot in self._slots]
        if any(len(m) > _wire.PIPE_BUF for m in messages):
            raise ValueError("job_id too long for the control protocol")
        self._job = job
        self._paused = False
        for slot, message in zip(self._slots, messages, strict=True):
            self._send(slot, message)

    def _job_message(self, job: _Job, index: int) -> bytes:
        start, count = split_nonce_space(index, self._n)
        return _wire.encode(["job", job.job_id, job.header.hex(), job.weight, start, count])

    def pause(self) -> None:
        """Stop hashing (workers stay alive and report their last counts); resume or set_job restarts."""
        self._check_running()
        self._paused = True
        for slot in self._slots:
            self._send(slot, _wire.encode(["pause"]))

    def resume(self) -> None:
        """Continue the current job after :meth:`pause`, each worker from where it stopped."""
        self._check_running()
        if self._job is not None:
            job = self._job
            self.set_job(job.job_id, job.header, job.weight)

    def _check_running(self) -> None:
        if not self._started or self._closed:
            raise RuntimeError(
                "WorkerPool is not running (call start() first; it cannot restart after close)"
            )

    def _send(self, slot: _Slot, message: bytes) -> None:
        """Non-blocking, latest-wins: every message states the whole desired state of the worker."""
        slot.pending = message
        self._flush(slot)

    def _flush(self, slot: _Slot) -> None:
        if slot.pending is None or slot.control_fd < 0:
            return
        try:
            os.write(slot.control_fd, slot.pending)  # <= PIPE_BUF: all or nothing
        except BlockingIOError:
            return  # the worker is busy; retried on the next call
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.EBADF):
                raise
            # The worker is gone; poll_events notices and replaces it.
        slot.pending = None

    @staticmethod
    def _close_control(slot: _Slot) -> None:
        if slot.proc is not None and slot.proc.stdin is not None:
            try:
                slot.proc.stdin.close()
            except OSError:
                pass
        slot.control_fd = -1

    # -- events ---------------------------------------------------------------------------------
    def results_fileno(self) -> int:
        """A fd that is readable when :meth:`poll_events` has something new to return."""
        self._check_running()
        return self._results_r

    def poll_events(self) -> list[Event]:
        """Every event waiting, without blocking. Also retries pending control messages and
        replaces dead workers, so call it at least every second or so even when the fd is quiet."""
        if self._results_r >= 0:
            self._read_results()
        if self._started and not self._closed:
            for slot in self._slots:
                self._flush(slot)
                self._check_alive(slot)
        events, self._events = self._events, []
        return events

    def _read_results(self, max_reads: int = 16) -> None:
        # Bounded, so a flood of finds (a very low share weight) cannot keep poll_events from
        # returning; whatever is left keeps the fd readable for the next call.
        for _ in range(max_reads):
            try:
                data = os.read(self._results_r, 65536)
            except BlockingIOError:
                return
            if not data:
                return
            for message in self._buffer.feed(data):
                self._handle(message)

    def _handle(self, message: list[object]) -> None:
        kind = message[0]
        try:
            index = int(message[1])  # type: ignore[call-overload]
            slot = self._slots[index]
            if kind == "found":
                _, _, job_id, nonce_hex, hash_hex = message
                self._events.append(
                    Found(index, str(job_id), int(str(nonce_hex), 16), bytes.fromhex(str(hash_hex)))
                )
            elif kind == "hashes":
                _, _, hashes, seconds, cpu = message
                count = HashCount(index, int(hashes), float(seconds), float(cpu))  # type: ignore[arg-type]
                self.total_hashes += count.hashes
                slot.rates.append((time.monotonic(), count.hashes, count.seconds))
                self._events.append(count)
            elif kind == "ready":
                slot.ready = True
                slot.impl = str(message[3]) if len(message) > 3 else ""
        except (IndexError, ValueError, TypeError):
            return  # malformed line: ignore rather than crash the owner

    def _check_alive(self, slot: _Slot) -> None:
        proc = slot.proc
        if proc is None or proc.poll() is None:
            return
        if not slot.exit_reported:
            self._events.append(WorkerExited(slot.index, proc.pid, proc.returncode))
            self._close_control(slot)
            slot.exit_reported = True
            slot.ready = False
        # A worker that dies right after starting is restarted at most every respawn_delay seconds.
        if time.monotonic() - slot.spawned_at >= self._respawn_delay:
            try:
                self._spawn(slot)
            except OSError:  # e.g. out of pids or fds: try again after the delay
                slot.spawned_at = time.monotonic()
                return
            if self._job is not None and not self._paused:
                self._send(slot, self._job_message(self._job, slot.index))

    # -- introspection --------------------------------------------------------------------------
    @property
    def n_workers(self) -> int:
        return self._n

    @property
    def pids(self) -> list[int]:
        """Pids of the current worker processes (for tests and diagnostics)."""
        return [slot.proc.pid for slot in self._slots if slot.proc is not None]

    @property
    def sha256_impls(self) -> list[str]:
        """The SHA-256 implementation each worker picked (see :func:`hashing.scan.fastest_impl`)."""
        return [slot.impl for slot in self._slots]

    @property
    def current_job(self) -> str | None:
        return None if self._job is None else self._job.job_id

    @property
    def paused(self) -> bool:
        return self._paused

    def worker_hashrates(self) -> list[float]:
        """Hashes per second of each worker over the last ``rate_window`` seconds (0 when paused)."""
        horizon = time.monotonic() - self._rate_window
        rates = []
        for slot in self._slots:
            while slot.rates and slot.rates[0][0] < horizon:
                slot.rates.popleft()
            seconds = sum(s for _, _, s in slot.rates)
            hashes = sum(h for _, h, _ in slot.rates)
            rates.append(hashes / seconds if seconds > 0 and not self._paused else 0.0)
        return rates

    def hashrate(self) -> float:
        """Total hashes per second of the pool (see :meth:`worker_hashrates`)."""
        return sum(self.worker_hashrates())
