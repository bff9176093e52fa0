"""Pool state as the admin websocket shows it: the ``pool`` object of ``dashboard:metrics``,
per-payout-address stats (``pool:address_stats``) and newly found blocks (``pool:block_found``).

A read-only projection of the pool's live accounting (PoolStats, the recent FoundBlocks) and the
mining upstream's status; it keeps no second copy of any counter except the running count of
accepted blocks, which the pool's bounded list of recent blocks cannot give.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import trio

from miningproxy.pool.service import FoundBlock, PoolService


class _UpstreamStatus(Protocol):
    def status(self) -> Any: ...


class PoolView:
    def __init__(
        self,
        pool: PoolService,
        upstream: _UpstreamStatus | None = None,
        *,
        started_at: float | None = None,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self.pool = pool
        self.upstream = upstream
        self.wallclock = wallclock
        self.started_at = wallclock() if started_at is None else started_at
        self._seen: dict[FoundBlock, str] = {}  # recent blocks -> status last seen
        self._accepted = 0
        self._fresh: list[FoundBlock] = []  # found since the last new_blocks()

    def _upstream_node(self) -> str | None:
        if self.upstream is None:
            return None
        status = self.upstream.status()
        connected = getattr(status, "connected", None)
        if connected is None and isinstance(status, dict):
            connected = status.get("connected")
        return connected

    def metrics(self) -> dict[str, Any]:
        """The ``pool`` object of ``dashboard:metrics``."""
        self._scan()
        stats = self.pool.stats
        now = trio.current_time()
        generation = self.pool.generation
        return {
            "hashrate": stats.pool.rate(now),
            "miners": len({miner.address for miner in stats.miners}),
            "workers": len(stats.miners),
            "shares_accepted": stats.pool.accepted,
            "shares_rejected": sum(stats.pool.rejected.values()),
            "blocks_found": stats.pool.blocks,
            "blocks_accepted": self._accepted,
            "template_height": generation.template.height if generation is not None else None,
            "upstream": self._upstream_node(),
            "uptime": max(0.0, self.wallclock() - self.started_at),
        }

    def address_stats(self) -> dict[str, dict[str, Any]]:
        """Per payout address: hashrate, shares, blocks and workers (addresses with pool activity)."""
        now = trio.current_time()
        out: dict[str, dict[str, Any]] = {}
        for miner, stats in self.pool.stats.miners.items():
            if not miner.address:
                continue
            entry = out.setdefault(
                miner.address,
                {
                    "hashrate": 0.0,
                    "shares_accepted": 0,
                    "shares_rejected": 0,
                    "blocks_found": 0,
                    "workers": 0,
                },
            )
            entry["hashrate"] += stats.rate(now)
            entry["shares_accepted"] += stats.accepted
            entry["shares_rejected"] += sum(stats.rejected.values())
            entry["blocks_found"] += stats.blocks
            entry["workers"] += 1
        return out

    def new_blocks(self) -> list[FoundBlock]:
        """Blocks found since the previous call (oldest first)."""
        self._scan()
        fresh, self._fresh = self._fresh, []
        return fresh

    def _scan(self) -> None:
        current = list(self.pool.blocks)
        for found in current:
            before = self._seen.get(found)
            if before is None:
                self._fresh.append(found)
            if found.status == "accepted" and before != "accepted":
                self._accepted += 1
            self._seen[found] = found.status
        if len(self._seen) > len(current):
            alive = set(current)
            self._seen = {b: s for b, s in self._seen.items() if b in alive}
