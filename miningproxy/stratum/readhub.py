"""Reading many plain-TCP rig sockets from one task.

With a task per connection, every read costs two trips through trio's scheduler and an
``epoll_ctl`` (trio re-arms a one-shot registration for each wait), and with 1,000 rigs each read
carries one or two shares: that bookkeeping cost about as much as checking the shares. The hub
keeps its own epoll set instead (level-triggered, each socket registered once, for its whole
life), waits on that set's descriptor through trio, and calls each ready connection's callback in
turn: one scheduler trip and one ``epoll_wait`` for every batch of ready sockets.

A callback runs inside the hub task: it must not block, and an exception it raises is its own
connection's problem, never the hub's (logged, and the callback's owner is told through
``on_error``). At most ``batch`` callbacks run between two checkpoints, so other tasks (the
fan-out, timers, HTTP) still get their turn under a flood. A callback may defer work to the end
of its batch (:meth:`ReadHub.after_batch`): the connections write their replies there, one after
the other, once every socket of the batch has been read.
"""

from __future__ import annotations

import logging
import select
from collections.abc import Callable

import trio

log = logging.getLogger("miningproxy.stratum")

BATCH = 32  # ready sockets handled between two checkpoints


class ReadHub:
    def __init__(self, *, batch: int = BATCH) -> None:
        self._batch = batch
        self._epoll: select.epoll | None = None
        self._callbacks: dict[int, tuple[Callable[[], None], Callable[[BaseException], None]]] = {}
        self._later: list[tuple[Callable[[], None], Callable[[BaseException], None]]] = []

    @property
    def running(self) -> bool:
        return self._epoll is not None

    def __len__(self) -> int:
        return len(self._callbacks)

    def add(
        self, fd: int, on_readable: Callable[[], None], on_error: Callable[[BaseException], None]
    ) -> None:
        """Call ``on_readable()`` whenever ``fd`` has data (or EOF, or an error) until :meth:`remove`;
        ``on_error(exc)`` when ``on_readable`` raised ``exc``."""
        if self._epoll is None:
            raise RuntimeError("the read hub is not running")
        self._epoll.register(fd, select.EPOLLIN | select.EPOLLRDHUP)
        self._callbacks[fd] = (on_readable, on_error)

    def after_batch(self, action: Callable[[], None], on_error: Callable[[BaseException], None]) -> None:
        """From a callback: run ``action()`` once the batch's reads are all done (``on_error(exc)``
        if it raises). The replies of a batch are written together, after its reads: each write's
        system call runs the kernel's TCP path, and keeping it apart from the Python work keeps
        both in the CPU's caches."""
        self._later.append((action, on_error))

    def remove(self, fd: int) -> None:
        """Stop watching ``fd``. Call it before the socket is closed (its number may be reused)."""
        if self._callbacks.pop(fd, None) is None or self._epoll is None:
            return
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass  # already closed: the kernel dropped it from the set

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._epoll = epoll = select.epoll()
        try:
            task_status.started()
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                while True:
                    ready = epoll.poll(0, self._batch)
                    for fd, _ in ready:
                        entry = self._callbacks.get(fd)
                        if entry is None:
                            continue
                        self._call(entry)
                    if self._later:
                        later, self._later = self._later, []
                        for entry in later:
                            self._call(entry)
                    if len(ready) < self._batch:
                        break
                    await trio.lowlevel.checkpoint()  # more are ready: let the others run first
        finally:
            self._epoll = None
            self._later.clear()
            callbacks, self._callbacks = self._callbacks, {}
            epoll.close()
            for _, on_error in callbacks.values():  # their readers must not wait for ever
                on_error(trio.ClosedResourceError("the read hub stopped"))

    @staticmethod
    def _call(entry: tuple[Callable[[], None], Callable[[BaseException], None]]) -> None:
        try:
            entry[0]()
        except Exception as exc:
            log.exception("handling a rig's socket failed")
            entry[1](exc)
