"""Jittered exponential backoff, shared by every client of a node (mining, admin, events)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delay before retry number ``failures`` (>= 1): ``initial * 2**(failures-1)`` capped at
    ``maximum``, jittered down by up to ``jitter`` so proxies restarted together do not retry
    in lockstep."""

    initial: float = 0.5
    maximum: float = 30.0
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError(f"backoff needs 0 < initial <= maximum, got {self.initial!r}, {self.maximum!r}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter!r}")

    def delay(self, failures: int) -> float:
        base = min(self.maximum, self.initial * 2.0 ** min(max(failures, 1) - 1, 64))
        return base * (1.0 - self.jitter * self.rng.random())
