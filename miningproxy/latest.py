"""A latest-value cell: publishers overwrite, subscribers see the newest value and skip the rest.

This is the fan-out primitive for templates. Memory is one value and one event no matter how many
subscribers there are or how slow they are: a subscriber that falls behind simply wakes up to the
newest value, never to a queue of stale ones.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class LatestValue(Generic[T]):
    """Holds the newest published value and a version counter (the number of publishes so far)."""

    __slots__ = ("_value", "_version", "_changed")

    def __init__(self) -> None:
        self._value: T | None = None
        self._version = 0
        self._changed = trio.Event()

    def publish(self, value: T) -> None:
        """Replace the value and wake every waiting subscriber. Never blocks."""
        self._value = value
        self._version += 1
        # Events are one-shot: swap in a fresh one before waking the old one's waiters.
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    @property
    def current(self) -> T | None:
        """The newest value, or None before the first publish."""
        return self._value

    @property
    def version(self) -> int:
        """How many values have been published; 0 means none yet."""
        return self._version

    async def wait_newer(self, version: int) -> tuple[int, T]:
        """Wait until the version exceeds ``version``; return (version, value) at that moment."""
        if self._version > version:
            await trio.lowlevel.checkpoint()  # a trio async call always checkpoints
        while self._version <= version:
            await self._changed.wait()
        return self._version, self._value  # type: ignore[return-value]  # version > 0: a value exists

    def subscribe(self) -> Subscription[T]:
        """``async for v in latest.subscribe()``: the current value first (if any), then each newer one.

        Values published while the consumer is busy are skipped; it always resumes at the newest.
        """
        return Subscription(self)


class Subscription(Generic[T]):
    """An async iterator over a LatestValue; holds nothing but the last version it yielded."""

    __slots__ = ("_source", "_seen")

    def __init__(self, source: LatestValue[T]) -> None:
        self._source = source
        self._seen = 0

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        self._seen, value = await self._source.wait_newer(self._seen)
        return value
