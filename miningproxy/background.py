"""A worker thread for durable writes that yields the CPU to the event loop.

The event log's commits (SQLite inserts, the commit's fsync, WAL checkpoints) run in a thread so
the event loop never waits for the disk. But a thread competes for the CPU: on a small machine
the commit's system time can hold a core just when a share that wins a block arrives, and the
event loop then waits to be scheduled before it can send the block upstream. Measured on the
2-core bench VM with one busy process beside it (``python -m bench --only submit_latency``, 11
interleaved pairs): arrival -> written upstream p99 0.55-4.17 ms (median 1.78) with the commits
on trio's worker threads, 0.66-2.44 ms (median 0.97) on this thread, lower in 8 pairs of 11.

:class:`BackgroundThread` is one long-lived thread at a lower CPU priority (Linux: ``nice`` +10
for that thread only). When the CPU is contended the kernel runs the event loop first; when it
is not, nothing changes. Under full saturation the thread still gets about a tenth of a core,
which commits thousands of events per second in groups. Calls run one at a time, in order.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import trio

log = logging.getLogger("miningproxy")

T = TypeVar("T")

NICE = 10  # added to the thread's nice value; 10 gives it ~1/10 of a core against a busy loop


class BackgroundThread:
    def __init__(self, name: str, *, nice: int = NICE) -> None:
        self.name = name
        self.nice = nice
        self.niced: bool | None = None  # could the thread's priority be lowered (None: not started)
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Callable[[outcome.Outcome[Any]], None]]] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the thread; its result, or its exception. Like ``trio.to_thread.run_sync``
        a call that has started is not abandoned: a cancellation waits for it to finish."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._start()
        token = trio.lowlevel.current_trio_token()
        task = trio.lowlevel.current_task()

        def deliver(result: outcome.Outcome[Any]) -> None:
            token.run_sync_soon(trio.lowlevel.reschedule, task, result)

        self._jobs.put((lambda: fn(*args), deliver))
        return await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)  # type: ignore[no-any-return]

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                thread = threading.Thread(target=self._main, name=self.name, daemon=True)
                thread.start()
                self._thread = thread

    def _main(self) -> None:
        self.niced = _lower_priority(self.nice)
        if not self.niced:
            log.debug("%s: cannot lower this thread's CPU priority; it runs at the default", self.name)
        while True:
            call, deliver = self._jobs.get()
            result = outcome.capture(call)
            try:
                deliver(result)
            except trio.RunFinishedError:  # (never expected) the caller's run is gone
                pass


def _lower_priority(nice: int) -> bool:
    """Raise the calling thread's nice value by ``nice``. Linux only: there a thread id names the
    thread alone; elsewhere the same call could renice a whole process."""
    if not sys.platform.startswith("linux") or nice <= 0:
        return False
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except OSError:
        return False
    return True


# The event log's writer: every sequence's appends and prunes. A process has one event log, whose
# single write connection and its lock serialize them anyway: one thread loses nothing.
LOG_WRITER = BackgroundThread("event-log writer")
