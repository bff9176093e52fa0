"""Garbage collection for a server that holds many long-lived objects, and its pauses measured.

With 10,000 rigs the proxy holds about a million objects the cycle collector tracks (sessions,
their job histories, meters). CPython's default thresholds (700, 10, 10) then run a young
collection every 700 new containers, and every few new blocks (each fan-out makes tens of
thousands of jobs that outlive the young generations) a full collection that walks all of them:
~240 ms measured on the 2-core VM, during which no share is checked, no job is sent and no found
block is submitted. The proxy makes few reference cycles (its objects die by reference counting),
so collecting less often costs little memory:

- young collections every ``GEN0`` new containers instead of 700 (a few ms each);
- a middle collection after every ``GEN1`` young ones: it walks what survived them, at most
  ``GEN1 * GEN0`` objects. Kept small on purpose: 10,000 rigs connecting leave about a million
  new objects, and with a middle collection every 50 young ones (this module's first setting)
  all of them waited for one collection, which came during the next new block's fan-out and
  took 0.56 s (``python -m bench --only fanout``: the first round at 10,000 rigs 820-890 ms
  against ~300). Every object goes through the middle generation once either way, so smaller
  ones cost no more in all: with 2 the longest was 63-107 ms, during the connections, and the
  first round 306-353 ms;
- full collections ``GEN1 * GEN2`` young ones apart at the least (5,000, as before);
- :func:`freeze_startup` moves everything made at start-up (modules, settings, servers) out of
  the collector's sight for good.

In-process fan-out to 10,000 sessions, 20 rounds (see docs/BENCHMARKS.md, figure 2): the longest
collection went from 238 ms to 9 ms. ``miningproxy_gc_pause_seconds`` shows the pauses in
production; a full collection still runs (after ``GEN1 * GEN2`` young ones, and only when the
long-lived objects grew by a quarter), so cyclic garbage cannot pile up for ever.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

GEN0 = 20_000
GEN1 = 2
GEN2 = 2_500


def apply() -> None:
    """Set the collector's thresholds for a long-running server (see the module docstring)."""
    gc.set_threshold(GEN0, GEN1, GEN2)


def freeze_startup() -> None:
    """Collect once, then exclude every object alive now from later collections."""
    gc.collect()
    gc.freeze()


class PauseTimer:
    """Calls ``observe(generation, seconds)`` after every collection (a ``gc.callbacks`` hook)."""

    def __init__(self, observe: Callable[[int, float], None], clock: Callable[[], float] = time.perf_counter):
        self._observe = observe
        self._clock = clock
        self._started: float | None = None

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self._clock()
        elif self._started is not None:
            started, self._started = self._started, None
            try:
                self._observe(int(info.get("generation", -1)), self._clock() - started)
            except Exception:  # noqa: BLE001  # a failing metric must never break the collector
                pass

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def remove(self) -> None:
        while self in gc.callbacks:
            gc.callbacks.remove(self)
