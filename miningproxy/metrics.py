"""Prometheus metrics.

Counters and histograms are incremented where things happen. Gauges that describe live state
(upstream connection, template age, worker hashrate) are not kept in sync by hand: a collector reads
them from the live objects at scrape time, so they cannot drift from the truth.
Each app owns its registry (tests run many apps in one process).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

BLOCK_RESULTS = ("found", "submitted", "accepted", "rejected", "stale")

# Latency buckets in seconds: sub-millisecond resolution where the goals are (submit p99 <= 2 ms).
_FAST_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.blocks = Counter("miningproxy_blocks", "Blocks by what happened to them", ["result"], registry=r)
        for result in BLOCK_RESULTS:
            self.blocks.labels(result)
        self.shares = LoopCounter(
            "miningproxy_shares", "Shares checked, by result and reason", ("result", "reason"), registry=r
        )
        self.shares.labels("accepted", "ok")
        self.shares_unrecorded = Counter(
            "miningproxy_shares_unrecorded",
            "Block shares credited while the accounting record could not keep up (missing from /pool/event_ws)",
            registry=r,
        )
        self.jobs_sent = LoopCounter(
            "miningproxy_jobs_sent", "Jobs handed to rigs and local workers", registry=r
        )
        self.templates = Counter(
            "miningproxy_templates_received", "Template updates from the upstream", registry=r
        )
        self.block_submit_latency = Histogram(
            "miningproxy_block_submit_latency_seconds",
            "From the winning share's arrival to mining.submit written upstream",
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.block_submit_roundtrip = Histogram(
            "miningproxy_block_submit_roundtrip_seconds",
            "From mining.submit written to the node's answer",
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.job_broadcast_latency = Histogram(
            "miningproxy_job_broadcast_latency_seconds",
            "From a new template's arrival to the last consumer handed its job",
            buckets=_FAST_BUCKETS,
            registry=r,
        )

        self.gc_pause = Histogram(
            "miningproxy_gc_pause_seconds",
            "Garbage collector pauses (the event loop stops meanwhile), by generation (2 = full)",
            ["generation"],
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self._gc_children = {g: self.gc_pause.labels(str(g)) for g in (0, 1, 2)}

    def observe_gc_pause(self, generation: int, seconds: float) -> None:
        child = self._gc_children.get(generation)
        if child is not None:
            child.observe(seconds)

    def add_live_gauges(self, read: Callable[[], Iterable[Metric]]) -> None:
        """Register a function that yields gauge families from live state at scrape time."""
        self.registry.register(_LiveCollector(read))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class LoopCounter(Collector):
    """A counter for the event loop's hottest paths (a job per rig per block, a share): ``inc``
    is a plain addition, with none of prometheus_client's lock and checks. Only for counts made
    in the event loop's thread, which is also where /metrics is scraped. With ``labelnames``,
    ``labels(*values)`` gives the child to count in (keep it: the lookup is per call)."""

    def __init__(
        self, name: str, doc: str, labelnames: tuple[str, ...] = (), *, registry: CollectorRegistry
    ) -> None:
        self.name, self.doc, self.labelnames = name, doc, labelnames
        self.value = 0
        self._children: dict[tuple[str, ...], _LoopChild] = {}
        registry.register(self)

    def labels(self, *values: str) -> _LoopChild:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames) or not all(type(v) is str for v in values):
                raise ValueError(f"{self.name}: labels {values!r} for {self.labelnames!r}")
            child = self._children[values] = _LoopChild()
        return child

    def inc(self, amount: int = 1) -> None:
        if self.labelnames:
            raise ValueError(f"{self.name} counts by {self.labelnames!r}: use labels(...).inc()")
        self.value += amount

    def collect(self) -> Iterable[Metric]:
        if not self.labelnames:
            return [CounterMetricFamily(self.name, self.doc, value=self.value)]
        family = CounterMetricFamily(self.name, self.doc, labels=self.labelnames)
        for values, child in self._children.items():
            family.add_metric(values, child.value)
        return [family]

    def describe(self) -> Iterable[Metric]:
        return [CounterMetricFamily(self.name, self.doc, labels=self.labelnames or None)]


class _LoopChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class _LiveCollector(Collector):
    def __init__(self, read: Callable[[], Iterable[Metric]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        return list(self._read())

    def describe(self) -> Iterable[Metric]:
        return []


def gauge(
    name: str, doc: str, value: float | None = None, labels: dict[str, Any] | None = None
) -> GaugeMetricFamily:
    """A one-sample gauge family, or an empty one to fill with ``add_metric``."""
    if labels:
        family = GaugeMetricFamily(name, doc, labels=list(labels))
        if value is not None:
            family.add_metric([str(v) for v in labels.values()], value)
        return family
    return GaugeMetricFamily(name, doc, value=value)
