"""The worker process: mines the job the parent sends, reports hits and hash counts.

Started by :class:`hashing.workers.WorkerPool` as ``python -I -S -c <bootstrap> ...`` (see there).
Control messages arrive on stdin; results go to a results pipe shared by all workers. The worker
scans in chunks of ~``chunk_seconds`` and checks stdin between chunks, so a new job, a pause or a
stop takes effect within one chunk.

It never outlives the parent: the kernel kills it when the parent dies (PR_SET_PDEATHSIG, Linux),
stdin reaching EOF means the parent is gone (only the parent holds the write end), and the parent
pid is re-checked between chunks in case both of those were missed.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

from hashing import _wire
from hashing.scan import Scanner, fastest_impl

_MIN_CHUNK = 256
_MAX_CHUNK = 1 << 16
_PR_SET_PDEATHSIG = 1


def _set_parent_death_signal() -> None:
    """Ask Linux to SIGKILL us when the thread that spawned us exits (best effort elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the EOF and parent-pid checks still apply


class _Exit(Exception):
    """Leave the main loop (stop message, parent gone, results pipe closed)."""


class Worker:
    def __init__(
        self, index: int, out_fd: int, parent_pid: int, report_interval: float, chunk_seconds: float
    ):
        self.index = index
        self.out_fd = out_fd
        self.parent_pid = parent_pid
        self.report_interval = report_interval
        self.chunk_seconds = chunk_seconds
        self.control = _wire.LineBuffer()
        self.job: tuple[str, bytes, float, int, int] | None = None
        self.scanner: Scanner | None = None
        self.pos = 0
        self.end = 0
        self.active = False
        self.chunk = 4096
        self.hashes = 0
        self.since = 0.0
        self.cpu_since = 0.0

    # -- output ---------------------------------------------------------------------------------
    def _write(self, lines: list[bytes]) -> None:
        try:
            for data in _wire.pack_lines(lines):
                os.write(self.out_fd, data)  # blocking: a full pipe is back-pressure, not loss
        except OSError as exc:  # the parent closed the results pipe or died
            raise _Exit from exc

    def report(self, force: bool = False) -> None:
        """Send the hashes done since the last report (when due, or always with ``force``)."""
        if not self.active:
            return
        now = time.monotonic()
        if not force and now - self.since < self.report_interval:
            return
        cpu = time.process_time()
        if self.hashes or force:
            msg = ["hashes", self.index, self.hashes, now - self.since, cpu - self.cpu_since]
            self._write([_wire.encode(msg)])
        self.hashes = 0
        self.since = now
        self.cpu_since = cpu

    # -- control --------------------------------------------------------------------------------
    def _apply(self, message: list[object]) -> None:
        kind = message[0]
        if kind == "stop":
            raise _Exit
        if kind == "pause":
            self.report(force=True)
            self.active = False
        elif kind == "job":
            _, job_id, header_hex, weight, start, count = message
            header = bytes.fromhex(str(header_hex))
            job = (str(job_id), header, float(weight), int(start), int(count))  # type: ignore[arg-type]
            same_work = self.job is not None and self.job[:2] == job[:2] and self.job[3:] == job[3:]
            if not same_work:
                self.pos, self.end = job[3], job[3] + job[4]
            if not same_work or self.scanner is None or self.job is None or self.job[2] != job[2]:
                self.scanner = Scanner(header, job[2])  # the weight alone may change
            self.job = job
            if self.pos >= self.end:  # this share is already done: nothing to hash
                self.report(force=True)
                self.active = False
            elif not self.active:
                self.active = True
                self.hashes = 0
                self.since = time.monotonic()
                self.cpu_since = time.process_time()

    def poll_control(self, block: bool) -> None:
        """Apply every waiting control message; with ``block``, wait up to one report interval."""
        if block:
            select.select([0], [], [], self.report_interval)
        while True:
            try:
                data = os.read(0, 65536)
            except BlockingIOError:
                break
            if not data:  # EOF: the parent closed our stdin or died
                raise _Exit
            for message in self.control.feed(data):
                self._apply(message)
        if os.getppid() != self.parent_pid:
            raise _Exit

    # -- mining ---------------------------------------------------------------------------------
    def mine_chunk(self) -> None:
        assert self.job is not None and self.scanner is not None
        n = min(self.chunk, self.end - self.pos)
        t0 = time.perf_counter()
        hits = self.scanner.hits(self.pos, n)
        elapsed = time.perf_counter() - t0
        self.pos += n
        self.hashes += n
        if hits:
            job_id = self.job[0]
            self._write(
                [_wire.encode(["found", self.index, job_id, f"{nonce:x}", h.hex()]) for nonce, h in hits]
            )
        # Aim each chunk at chunk_seconds so control latency stays bounded whatever the speed.
        if elapsed > 0:
            wanted = int(n * self.chunk_seconds / elapsed)
            self.chunk = max(_MIN_CHUNK, min(_MAX_CHUNK, (self.chunk + wanted) // 2))

    def run(self) -> None:
        self._write([_wire.encode(["ready", self.index, os.getpid(), fastest_impl().name])])
        while True:
            mining = self.active and self.pos < self.end
            self.poll_control(block=not mining)
            if self.active and self.pos < self.end:
                self.mine_chunk()
                if self.pos >= self.end:  # our share of the nonce space is done: idle until told
                    self.report(force=True)
                    self.active = False
            self.report()


def main(argv: list[str]) -> int:
    index, out_fd, parent_pid, deathsig, report_interval, chunk_seconds = argv
    # Ctrl-C in a terminal reaches the whole process group; shutting down is the parent's call.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if deathsig == "1":
        _set_parent_death_signal()
    if os.getppid() != int(parent_pid):  # the parent died before the death signal was armed
        return 0
    os.set_blocking(0, False)
    Scanner(bytes(64), 0.0)  # warm up before "ready": builds the nonce table, picks the SHA-256 impl
    worker = Worker(int(index), int(out_fd), int(parent_pid), float(report_interval), float(chunk_seconds))
    try:
        worker.run()
    except _Exit:
        pass
    try:
        worker.report(force=True)
    except _Exit:
        pass
    return 0
