"""One event sequence as the trio side sees it: durable appends, cached reads, change notification.

The :class:`EventFeed` is the only door to a sequence of the :class:`~miningproxy.events.log.EventLog`
from async code. Appends and prunes run in the log's writer thread, which yields the CPU to the
event loop (:mod:`miningproxy.background`); cold reads in trio's worker threads; the newest
events stay in a bounded in-memory tail, so clients following the live edge never touch SQLite.
``last_id`` only ever names a committed event: a client is never shown an event that a crash
could take back.
"""

from __future__ import annotations

import functools
import logging
import operator
import time
from collections import deque
from collections.abc import Callable, Sequence
from itertools import islice

import trio

from miningproxy.background import LOG_WRITER
from miningproxy.events.log import EventLog, PrunedError, StoredEvent, StreamIdentity
from miningproxy.events.stream import Envelope

log = logging.getLogger("miningproxy.events")

DEFAULT_CACHE_SIZE = 4096
DEFAULT_READ_THREADS = 4

# An event's (id, text), as the cache holds it, without a Python step per event (one per share).
_ID_AND_TEXT = operator.attrgetter("id", "text")


class EventFeed:
    def __init__(
        self,
        log: EventLog,
        seq: str,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        self.log = log
        self.seq = seq
        self.identity: StreamIdentity | None = None
        self.first_id: int | None = None
        self.last_id: int | None = None
        self._envelope: Envelope | None = None
        # A newer id known to exist upstream but not stored yet (the node's latest_event_id).
        self.latest_hint: Callable[[], int | None] | None = None
        self._cache: deque[tuple[int, str]] = deque(maxlen=max(1, cache_size))
        self._limiter = limiter or trio.CapacityLimiter(DEFAULT_READ_THREADS)
        self._append_lock = trio.Lock()
        self._listeners: set[Callable[[], None]] = set()
        self._changed = trio.Event()
        self.reload()

    def reload(self) -> None:
        """Re-read identity and bounds from the log (after writing to it directly, e.g. open_pool_stream)."""
        self.identity = self.log.identity(self.seq)
        bounds = self.log.bounds(self.seq)
        self.first_id = bounds.first_id if bounds else None
        self.last_id = bounds.last_id if bounds else None
        self._envelope = Envelope(self.identity) if self.identity else None
        self._cache.clear()

    # --- state -----------------------------------------------------------------------------------

    @property
    def envelope(self) -> Envelope | None:
        """The EVENT frame builder for this sequence's identity; None until it has one."""
        return self._envelope

    @property
    def next_id(self) -> int:
        return 0 if self.last_id is None else self.last_id + 1

    def latest_event_id(self) -> int:
        """What frames report as ``latest_event_id``: the newest event known, stored or not."""
        latest = -1 if self.last_id is None else self.last_id
        if self.latest_hint is not None:
            hint = self.latest_hint()
            if hint is not None and hint > latest:
                latest = hint
        return max(latest, 0)

    # --- change notification ---------------------------------------------------------------------

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (synchronously, so it must not block) after every change."""
        self._listeners.add(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        self._listeners.discard(callback)

    def _notify(self) -> None:
        changed, self._changed = self._changed, trio.Event()
        changed.set()
        for callback in list(self._listeners):
            callback()

    async def wait_for(self, event_id: int) -> None:
        """Wait until event ``event_id`` is durable."""
        while self.last_id is None or self.last_id < event_id:
            await self._changed.wait()

    # --- writing ---------------------------------------------------------------------------------

    async def append(self, events: Sequence[StoredEvent], *, identity: StreamIdentity | None = None) -> None:
        """Append durably (see EventLog.append); listeners learn about the events once committed."""
        if not events and identity is None:
            return
        async with self._append_lock:
            call = functools.partial(self.log.append, self.seq, events, identity=identity)
            await LOG_WRITER.run_sync(call)
            self._appended(events, identity)

    def append_sync(self, events: Sequence[StoredEvent], *, identity: StreamIdentity | None = None) -> None:
        """append() without a thread: the commit blocks the caller. For an in-memory log (the dev
        node, whose chain code is synchronous) a commit takes microseconds; never use it on a file."""
        if self._append_lock.locked():
            raise RuntimeError("append_sync() while an async append() is in progress")
        self.log.append(self.seq, events, identity=identity)
        self._appended(events, identity)

    def _appended(self, events: Sequence[StoredEvent], identity: StreamIdentity | None) -> None:
        if identity is not None and self.identity is None:
            self.identity = identity
            self._envelope = Envelope(identity)
        if events:
            if self.first_id is None:
                self.first_id = events[0].id
            self.last_id = events[-1].id
            self._cache.extend(map(_ID_AND_TEXT, events))
        self._notify()

    async def prune(self, *, keep_count: int | None = None, max_age: float | None = None) -> int:
        """Apply retention (see EventLog.prune); returns how many events were removed."""
        async with self._append_lock:  # a prune never races an append's bookkeeping
            call = functools.partial(
                self.log.prune, self.seq, keep_count=keep_count, max_age=max_age, now=time.time()
            )
            removed = await LOG_WRITER.run_sync(call)
            if removed:
                bounds = await trio.to_thread.run_sync(self.log.bounds, self.seq, limiter=self._limiter)
                self.first_id = bounds.first_id if bounds else None
                while self._cache and self.first_id is not None and self._cache[0][0] < self.first_id:
                    self._cache.popleft()
                self._notify()
        return removed

    # --- reading ---------------------------------------------------------------------------------

    def check_retained(self, event_id: int) -> None:
        """Raise PrunedError when ``event_id`` is older than the oldest retained event."""
        if self.first_id is not None and event_id < self.first_id:
            raise PrunedError(event_id, self.first_id)

    async def read(self, from_id: int, limit: int) -> list[tuple[int, str]]:
        """Up to ``limit`` committed events from ``from_id`` on, as (id, JSON text)."""
        self.check_retained(from_id)
        if self.last_id is None or from_id > self.last_id or limit <= 0:
            return []
        cache = self._cache
        if cache and cache[0][0] <= from_id:
            start = from_id - cache[0][0]
            return list(islice(cache, start, start + limit))
        call = functools.partial(self.log.read, self.seq, from_id, limit)
        return await trio.to_thread.run_sync(call, limiter=self._limiter)


async def run_retention(
    feeds: Sequence[EventFeed],
    *,
    keep_count: int | None,
    max_age: float | None,
    interval: float = 3600.0,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Prune every feed now and then every ``interval`` seconds (nothing to do when both limits are None)."""
    task_status.started()
    if keep_count is None and max_age is None:
        return
    while True:
        for feed in feeds:
            try:
                removed = await feed.prune(keep_count=keep_count, max_age=max_age)
            except Exception:
                log.exception("pruning the %s event log failed; will retry", feed.seq)
                continue
            if removed:
                log.info(
                    "retention removed %d %s events; the oldest retained is %s",
                    removed,
                    feed.seq,
                    feed.first_id,
                )
        await trio.sleep(interval)
