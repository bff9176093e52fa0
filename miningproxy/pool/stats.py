"""Live accounting of miners: shares by result, work, hashrate, blocks.

These are projections of what the share checker decided; the durable record is the pool's event
log (a later issue). A miner is identified by its payout address and worker name.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from miningproxy.pool.hashrate import HashrateMeter


@dataclass(frozen=True, slots=True)
class MinerId:
    address: str  # the rig's address (pool mode: for accounting only)
    worker: str  # worker name, e.g. "rig1" or "local-0"
    # Kept: every share looks its miner up (the generated __hash__ builds a tuple each time), and
    # with the pool record on, every share's event names it.
    _hash: int = field(init=False, repr=False, compare=False)
    _text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.address, self.worker)))
        object.__setattr__(self, "_text", f"{self.address}.{self.worker}" if self.address else self.worker)

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        return self._text


@dataclass
class MinerStats:
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    blocks: int = 0
    last_share_at: float | None = None
    meter: HashrateMeter = field(default_factory=HashrateMeter)

    def rate(self, now: float) -> float:
        return self.meter.rate(now)


class PoolStats:
    def __init__(self) -> None:
        self.miners: dict[MinerId, MinerStats] = {}
        self.pool = MinerStats()

    def _miner(self, miner: MinerId) -> MinerStats:
        stats = self.miners.get(miner)
        if stats is None:
            stats = self.miners[miner] = MinerStats()
        return stats

    def accepted(self, miner: MinerId, work: float, now: float, count: int = 1) -> None:
        """``count`` shares worth ``work`` hashes in all (``work_of`` a share's weight; the job's
        terms keep it), accepted at ``now``."""
        stats = self.miners.get(miner) or self._miner(miner)
        stats.accepted += count
        stats.last_share_at = now
        stats.meter.add(now, work)
        total = self.pool
        total.accepted += count
        total.last_share_at = now
        total.meter.add(now, work)

    def rejected(self, miner: MinerId, reason: str) -> None:
        self._miner(miner).rejected[reason] += 1
        self.pool.rejected[reason] += 1

    def block(self, miner: MinerId) -> None:
        self._miner(miner).blocks += 1
        self.pool.blocks += 1

    def forget(self, miner: MinerId) -> None:
        self.miners.pop(miner, None)
