"""Stratum metrics, registered on the app's registry.

Share counters are the pool's (``miningproxy_shares_total``, incremented by ``judge_share`` and
``credit_shares``); the server only adds the shares the pool never saw (unknown or expired jobs).
Per-worker hashrate is a live gauge read from the connected sessions at scrape time, so a rig that
disconnects takes its series with it, and it exists only when switched on (its labels are chosen
by the rigs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import Metric

from miningproxy.metrics import Metrics, gauge
from miningproxy.pool.stats import MinerId

LIMITS = (
    "max_line",
    "max_connections",
    "max_per_ip",
    "subscribe_timeout",
    "max_outbox",
    "send_timeout",
    "ban",
    "banned",
    "proxy_header",
)

WEIGHT_BUCKETS = (1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 56, 64, 80, 96, 128, 256)


class StratumMetrics:
    def __init__(self, metrics: Metrics) -> None:
        r = metrics.registry
        self.metrics = metrics
        self.shares = metrics.shares
        self.rigs = Gauge("miningproxy_rigs_connected", "Open Stratum connections", registry=r)
        self.limit_hits = Counter(
            "miningproxy_stratum_limit_hits",
            "Stratum limits hit (and what was refused or cut off)",
            ["limit"],
            registry=r,
        )
        for limit in LIMITS:
            self.limit_hits.labels(limit)
        self.weights = Histogram(
            "miningproxy_vardiff_weight", "Share weights handed to rigs (each change of a rig's weight)",
            buckets=WEIGHT_BUCKETS, registry=r,
        )  # fmt: skip

    def add_worker_hashrates(self, read: Callable[[], Iterable[tuple[MinerId, float]]]) -> None:
        def families() -> Iterable[Metric]:
            family = gauge(
                "miningproxy_worker_hashrate_hashes_per_second",
                "Hashrate of each connected worker from accepted shares",
                labels={"address": "", "worker": ""},
            )
            for miner, rate in read():
                family.add_metric([miner.address, miner.worker], rate)
            yield family

        self.metrics.add_live_gauges(families)
