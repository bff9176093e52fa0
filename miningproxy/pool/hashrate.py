"""Hashrate from accepted work over a sliding window, in fixed time buckets.

A share at weight w stands for 2**w hashes on average. Summing that work over the last
``window`` seconds and dividing by the span gives a hashrate that needs no per-share history:
memory is one float per bucket whatever the share rate.
"""

from __future__ import annotations

import math


class HashrateMeter:
    __slots__ = ("window", "bucket", "_buckets", "_started", "_total", "_last", "_first_end", "_last_now")

    def __init__(self, window: float = 600.0, bucket: float = 10.0) -> None:
        if window <= 0 or bucket <= 0 or bucket > window:
            raise ValueError("need 0 < bucket <= window")
        self.window = window
        self.bucket = bucket
        # [bucket start, work], oldest first. A list, not a deque: at most window / bucket entries
        # (60 by default), and an empty deque costs ~700 bytes more, twice per rig (its session's
        # meter and its miner's).
        self._buckets: list[list[float]] = []
        self._started: float | None = None
        self._total = 0.0
        # Called for every share (three meters each), so the common case -- same bucket as the
        # last share, nothing to expire -- is kept to a few float operations.
        self._last: list[float] | None = None  # the newest bucket
        self._first_end = math.inf  # the oldest bucket's end: nothing expires before window after it
        # The time of the last add. The shares of one read share their ``now``: the same bucket,
        # and the expiry already checked for it.
        self._last_now = math.nan

    def add(self, now: float, work: float) -> None:
        if now == self._last_now:
            self._last[1] += work  # type: ignore[index]  # set by the add that set _last_now
            self._total += work
            return
        if self._started is None:
            self._started = now
        start = now - (now % self.bucket)
        last = self._last
        if last is not None and last[0] == start:
            last[1] += work
        else:
            self._last = [start, work]
            if not self._buckets:
                self._first_end = start + self.bucket
            self._buckets.append(self._last)
        self._total += work
        if now - self.window >= self._first_end:
            self._expire(now)
        self._last_now = now

    def _expire(self, now: float) -> None:
        horizon = now - self.window
        buckets = self._buckets
        gone = 0
        while gone < len(buckets) and buckets[gone][0] + self.bucket <= horizon:
            self._total -= buckets[gone][1]
            gone += 1
        if gone:
            del buckets[:gone]
        if buckets:
            self._first_end = buckets[0][0] + self.bucket
        else:
            self._total = 0.0
            self._last = None
            self._first_end = math.inf
        self._last_now = math.nan  # rate() may expire the bucket the last add went to

    def rate(self, now: float) -> float:
        """Hashes per second over the window (or since the first share, when that is shorter)."""
        if self._started is None:
            return 0.0
        self._expire(now)
        span = min(self.window, now - self._started)
        # Never divide by less than one bucket: one lucky share must not read as a huge rate.
        span = max(span, self.bucket)
        return self._total / span
