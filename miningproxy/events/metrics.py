"""Prometheus counters of the event streams, registered in the app's registry.

Live state (stored ids, the upstream consumer's state, connected clients) is exported by
:func:`event_gauges`, read at scrape time from the objects themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from miningproxy.events.feed import EventFeed
    from miningproxy.events.server import EventStreamServer
    from miningproxy.events.upstream import NodeEventConsumer


class EventMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.registry = r
        self.appended = Counter(
            "miningproxy_events_appended", "Events written durably to the event log", ["stream"], registry=r
        )
        self.upstream_duplicates = Counter(
            "miningproxy_events_upstream_duplicates",
            "Events the upstream node sent again (after an early ACK) and were dropped by id",
            registry=r,
        )
        self.upstream_identity_mismatch = Counter(
            "miningproxy_events_upstream_identity_mismatch",
            "Upstream sessions refused because the node's peer_id, network or stream_id differs from the stored stream",
            registry=r,
        )
        self.upstream_sessions = Counter(
            "miningproxy_events_upstream_sessions",
            "Upstream event_ws sessions by how they ended",
            ["outcome"],
            registry=r,
        )
        self.frames_sent = Counter(
            "miningproxy_events_frames_sent", "EVENT frames sent to event_ws clients", ["stream"], registry=r
        )
        self.request_errors = Counter(
            "miningproxy_events_request_errors",
            "Error responses sent to event_ws clients",
            ["stream", "type"],
            registry=r,
        )
        self.write_errors = Counter(
            "miningproxy_events_write_errors",
            "Appends to the event log that failed (disk full, read-only...) and will be retried",
            ["stream"],
            registry=r,
        )
        self.clients_cut_off = Counter(
            "miningproxy_events_clients_cut_off",
            "event_ws clients disconnected by the proxy",
            ["stream", "reason"],
            registry=r,
        )


def event_gauges(
    feeds: Iterable[EventFeed],
    *,
    consumer: NodeEventConsumer | None = None,
    servers: Iterable[EventStreamServer] = (),
) -> Iterable[Metric]:
    """Gauges from live state, for ``Metrics.add_live_gauges(lambda: event_gauges(...))``."""
    last = GaugeMetricFamily("miningproxy_events_last_id", "Newest stored event id", labels=["stream"])
    first = GaugeMetricFamily("miningproxy_events_first_id", "Oldest retained event id", labels=["stream"])
    for feed in feeds:
        if feed.last_id is not None:
            last.add_metric([feed.seq], feed.last_id)
        if feed.first_id is not None:
            first.add_metric([feed.seq], feed.first_id)
    yield last
    yield first
    clients = GaugeMetricFamily("miningproxy_events_clients", "Connected event_ws clients", labels=["stream"])
    for server in servers:
        clients.add_metric([server.name], server.connections)
    yield clients
    if consumer is not None:
        status = consumer.status()
        yield GaugeMetricFamily(
            "miningproxy_events_upstream_streaming",
            "1 while the upstream node's events are being consumed",
            value=1.0 if status["state"] == "streaming" else 0.0,
        )
        yield GaugeMetricFamily(
            "miningproxy_events_upstream_halted",
            "1 while appending is stopped because the upstream event stream is not the stored one",
            value=1.0 if status["mismatch"] else 0.0,
        )
        latest = status.get("upstream_latest_event_id")
        if latest is not None:
            yield GaugeMetricFamily(
                "miningproxy_events_upstream_latest_id", "The upstream node's latest event id", value=latest
            )
