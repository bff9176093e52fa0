"""The event streams, wired: what the app needs to add to serve issue 5.

    events = EventsService(database="events.sqlite3", nodes=config.upstream.nodes, registry=metrics.registry)
    events.mount(app.router)                 # /event_ws, /v1a/event_ws, /pool/event_ws, /v1a/event, ...
    await nursery.start(events.run)          # returns once the pool stream is open
    events.pool.share_accepted(...)          # the pool's accounting record
    metrics.add_live_gauges(events.gauges)

``run`` opens the pool stream first: its ``network`` is the configured one, or the one stored with
an existing stream, or (a new database, none configured) the network the first reachable node
reports at ``/v1a/version``. Then it runs the upstream consumer, the pool writer and retention.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence

import trio
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from miningproxy.api.http import Router
from miningproxy.events.block_journal import BlockJournal, JournaledBlock, journal_path
from miningproxy.events.feed import EventFeed, run_retention
from miningproxy.events.log import EventLog
from miningproxy.events.metrics import EventMetrics, event_gauges
from miningproxy.events.pool_events import JOURNAL_STREAM, POOL_SEQ, PoolEvents, open_pool_stream
from miningproxy.events.server import EventHttpApi, EventStreamServer
from miningproxy.events.upstream import NodeEventConsumer
from miningproxy.upstream.node_info import learn_network

log = logging.getLogger("miningproxy.events")


class EventsService:
    def __init__(
        self,
        *,
        database: str,
        nodes: Sequence[str],
        network: str | None = None,
        synchronous: str = "full",
        consume_upstream: bool = True,
        upstream_window: int = 256,
        retention_count: int | None = None,
        retention_age: float | None = None,
        retention_interval: float = 3600.0,
        send_timeout: float = 30.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.nodes = list(nodes)
        self.network = network
        self.log = EventLog(database, synchronous=synchronous)
        path = journal_path(database)
        self.journal = BlockJournal(path) if path is not None else None
        self.metrics = EventMetrics(registry)
        self.node_feed = EventFeed(self.log, "node")
        self.pool_feed = EventFeed(self.log, POOL_SEQ)
        self.consumer = (
            NodeEventConsumer(
                self.node_feed,
                self.nodes,
                window_size=upstream_window,
                backoff_initial=backoff_initial,
                backoff_max=backoff_max,
                metrics=self.metrics,
            )
            if consume_upstream and self.nodes
            else None
        )
        self.node_server = EventStreamServer(self.node_feed, send_timeout=send_timeout, metrics=self.metrics)
        self.pool_server = EventStreamServer(self.pool_feed, send_timeout=send_timeout, metrics=self.metrics)
        self.retention = (retention_count, retention_age, retention_interval)
        self.backoff = (backoff_initial, backoff_max)
        self.pool: PoolEvents | None = None

    def mount(self, router: Router, *, version: bool = True) -> None:
        """Add the event routes (and, unless version=False, the /v1a/version relay)."""
        for path in ("/event_ws", "/v1a/event_ws"):
            router.websocket(path, self.node_server.handle)
        router.websocket("/pool/event_ws", self.pool_server.handle)
        router.http("/v1a/event", EventHttpApi(self.node_feed).handle)
        router.http("/pool/event", EventHttpApi(self.pool_feed).handle)
        if version and self.nodes:
            from miningproxy.events.version_relay import VersionRelay

            router.http("/v1a/version", VersionRelay(self.nodes).handle)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            network = await self._pool_network()
            open_pool_stream(self.log, network)
            self.pool_feed.reload()
            self.pool = PoolEvents(
                self.pool_feed,
                metrics=self.metrics,
                journal=self.journal,
                journaled_before=self._open_journal(),
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(self.pool.run)
                if self.consumer is not None:
                    await nursery.start(self.consumer.run)
                keep_count, max_age, interval = self.retention
                feeds = [self.node_feed, self.pool_feed]
                await nursery.start(
                    functools.partial(
                        run_retention, feeds, keep_count=keep_count, max_age=max_age, interval=interval
                    )
                )
                task_status.started()
        finally:
            if self.journal is not None:
                self.journal.close()
            self.log.close()

    def _open_journal(self) -> list[JournaledBlock]:
        """Open the found-block journal; the blocks a previous run left in it. A journal that
        cannot be opened is logged and counted, and the proxy runs without it."""
        if self.journal is None:
            return []
        try:
            return self.journal.open()
        except OSError as exc:
            self.metrics.write_errors.labels(JOURNAL_STREAM).inc()
            log.error(
                "cannot open the found-block journal %s (%r): running without it, so a proxy killed "
                "within a few ms of finding a block would lose that block's record (not the block)",
                self.journal.path,
                exc,
            )
            return []

    async def _pool_network(self) -> str:
        if self.network:
            return self.network
        stored = self.log.identity(POOL_SEQ)
        if stored is not None:
            return stored.network
        if not self.nodes:
            raise ValueError("the pool event stream needs a network: configure it or an upstream node")
        return await learn_network(self.nodes, backoff_initial=self.backoff[0], backoff_max=self.backoff[1])

    def gauges(self) -> Iterable[Metric]:
        return event_gauges(
            [self.node_feed, self.pool_feed],
            consumer=self.consumer,
            servers=[self.node_server, self.pool_server],
        )
