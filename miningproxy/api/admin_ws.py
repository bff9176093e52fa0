"""The proxy's admin websocket: ``/ws`` and ``/v1a/ws`` (trailing slash tolerated by the Router).

Clients written for a node's admin websocket (wallets, explorers, dashboards) get the node's
behaviour through ONE upstream connection (:class:`AdminUpstream`) plus the pool's own state:

- ``dashboard:metrics`` every ``metrics_interval`` with the node's keys (the last values relayed
  from the upstream's ``/ws``) and a ``pool`` object (hashrate, miners, shares, blocks, template
  height, upstream node, uptime); a slow client only ever holds the newest tick;
- ``network:new_tx_accepted`` relayed from the upstream to every client;
- ``subscribe_address``/``unsubscribe_address``: one upstream subscription per address whatever the
  number of clients; ``wallet:address_history`` (and element winner/voided) relayed to that
  address's subscribers; ``pool:address_stats`` every ``address_stats_interval`` and
  ``pool:block_found`` for subscribed payout addresses;
- history streaming relayed per stream on a dedicated upstream connection, with this proxy
  enforcing the client's window and the node's ack rules; an xpub is checked and its addresses
  derived here, then streamed upstream as a manual stream.

Wiring (app.py): ``admin = ProxyAdmin(AdminUpstream(nodes, prefer=...), network=..., pool=PoolView(...))``;
``nursery.start(admin.upstream.run)``, ``nursery.start(admin.run)``;
``admin.mount(router)`` adds ``/ws`` and ``/v1a/ws``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import trio
import trio_websocket

from miningproxy.api.admin_conn import DEFAULT_OUTBOX, DEFAULT_SEND_TIMEOUT, AdminConnection, StreamFeed
from miningproxy.api.admin_session import SessionLimits, StreamRequest
from miningproxy.api.fanout import ClientRegistry, encode
from miningproxy.api.history_stream import AddressItem, VertexItem
from miningproxy.api.http import HttpRequest, Router
from miningproxy.api.pool_view import PoolView
from miningproxy.excgroups import first_leaf
from miningproxy.hathor.networks import Network
from miningproxy.hathor.xpub import derive_addresses
from miningproxy.upstream.admin import AdminUpstream, HistoryChannel, HistoryUnavailable

log = logging.getLogger("miningproxy.api.admin")

ADMIN_WS_PATHS = ("/ws", "/v1a/ws")
NODE_METRIC_DEFAULTS: dict[str, Any] = {
    "transactions": 0,
    "blocks": 0,
    "best_block_height": 0,
    "hash_rate": 0.0,
    "peers": 0,
}
DEFAULT_MAX_SUBSCRIPTIONS = 10_000
DEFAULT_UPSTREAM_WINDOW = 64
DEFAULT_ADDRESS_BATCH = 40


class ProxyAdmin:
    """The hub behind every ``/ws`` connection; also the backend of their history streams."""

    def __init__(
        self,
        upstream: AdminUpstream,
        *,
        network: Network,
        pool: PoolView | None = None,
        max_subscriptions: int | None = DEFAULT_MAX_SUBSCRIPTIONS,
        metrics_interval: float = 1.0,
        address_stats_interval: float = 10.0,
        outbox_limit: int = DEFAULT_OUTBOX,
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
        upstream_window: int = DEFAULT_UPSTREAM_WINDOW,
        address_batch: int = DEFAULT_ADDRESS_BATCH,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        if not metrics_interval > 0 or not address_stats_interval > 0:
            raise ValueError("metrics_interval and address_stats_interval must be positive")
        if upstream_window < 2 or address_batch < 1:
            raise ValueError("upstream_window must be >= 2 and address_batch >= 1")
        self.upstream = upstream
        self.network = network
        self.pool = pool
        self.limits = SessionLimits(max_subscriptions=max_subscriptions)
        self.metrics_interval = metrics_interval
        self.address_stats_interval = address_stats_interval
        self.outbox_limit = outbox_limit
        self.send_timeout = send_timeout
        self.upstream_window = upstream_window
        self.address_batch = address_batch
        self.wallclock = wallclock
        self.registry: ClientRegistry[AdminConnection] = ClientRegistry()
        self.ticks = 0
        upstream.add_listener(self._on_upstream)

    # -- mounting and running -----------------------------------------------------------------
    def mount(self, router: Router) -> None:
        for path in ADMIN_WS_PATHS:
            router.websocket(path, self.handler)

    async def handler(self, ws: trio_websocket.WebSocketConnection, request: HttpRequest) -> None:
        conn = AdminConnection(
            self, ws, request.peer, outbox_limit=self.outbox_limit, send_timeout=self.send_timeout
        )
        await conn.run()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Dashboard ticks, pool:block_found and pool:address_stats until cancelled."""
        task_status.started()
        start = trio.current_time()
        next_stats = start + self.address_stats_interval
        while True:
            self.ticks += 1
            await trio.sleep_until(start + self.ticks * self.metrics_interval)
            self.tick()
            if trio.current_time() >= next_stats:
                next_stats += self.address_stats_interval
                self.send_address_stats()

    # -- periodic messages --------------------------------------------------------------------
    def dashboard(self) -> dict[str, Any]:
        values = dict(NODE_METRIC_DEFAULTS)
        node = self.upstream.metrics or {}
        for key in values:
            if node.get(key) is not None:
                values[key] = node[key]
        message: dict[str, Any] = {**values, "type": "dashboard:metrics", "time": node.get("time")}
        if message["time"] is None:
            message["time"] = self.wallclock()
        if self.pool is not None:
            pool = self.pool.metrics()
            if not self.upstream.metrics and pool.get("template_height") is not None:
                message["best_block_height"] = max(0, pool["template_height"] - 1)
            message["pool"] = pool
        return message

    def tick(self) -> None:
        """One dashboard tick to every client (encoded once; latest-value per client)."""
        if len(self.registry):
            self.registry.broadcast_latest("dashboard", encode(self.dashboard()))
        if self.pool is not None:
            for found in self.pool.new_blocks():
                address = found.miner.address
                if address in self.registry.by_address:
                    block = found.to_json()
                    self.registry.to_address(
                        address, encode({"type": "pool:block_found", "address": address, "block": block})
                    )

    def send_address_stats(self) -> None:
        if self.pool is None or not self.registry.by_address:
            return
        for address, stats in self.pool.address_stats().items():
            if address in self.registry.by_address:
                self.registry.to_address(
                    address, encode({"type": "pool:address_stats", "address": address, **stats})
                )

    # -- upstream events ----------------------------------------------------------------------
    def _on_upstream(self, message: dict[str, Any]) -> None:
        address = message.get("address")
        if message.get("type") == "network:new_tx_accepted":
            if len(self.registry):
                self.registry.broadcast(encode(message))
        elif isinstance(address, str) and address in self.registry.by_address:
            self.registry.to_address(address, encode(message))

    # -- AdminBackend -------------------------------------------------------------------------
    def history_available(self) -> bool:
        return self.upstream.history_available()

    def register(self, conn: AdminConnection) -> None:
        self.registry.add(conn)

    def unregister(self, conn: AdminConnection) -> None:
        for address in self.registry.remove(conn):
            self.upstream.unsubscribe(address)

    def subscribe(self, conn: AdminConnection, address: str) -> None:
        if self.registry.subscribe(conn, address):
            self.upstream.subscribe(address)

    def unsubscribe(self, conn: AdminConnection, address: str) -> None:
        if self.registry.unsubscribe(conn, address):
            self.upstream.unsubscribe(address)

    async def run_stream(self, request: StreamRequest, feed: StreamFeed) -> None:
        try:
            async with self.upstream.open_history() as channel:
                relay = HistoryRelay(
                    channel,
                    request,
                    feed,
                    self.network,
                    window=self.upstream_window,
                    batch=self.address_batch,
                )
                await relay.run()
        except HistoryUnavailable as exc:
            feed.fail(f"Upstream node unavailable: {exc}")


class HistoryRelay:
    """One downstream history stream served by the upstream node's stream on ``channel``.

    The upstream gets a manual stream (for an xpub, the addresses derived here, fed ``batch`` at a
    time ahead of what the node has reached); its items go to the client through ``feed`` (which
    enforces the client's window); the upstream is acked with what the client has been sent, so at
    most ``window`` items are ever buffered here.
    """

    def __init__(
        self,
        channel: HistoryChannel,
        request: StreamRequest,
        feed: StreamFeed,
        network: Network,
        *,
        window: int,
        batch: int,
    ) -> None:
        self.channel = channel
        self.request = request
        self.feed = feed
        self.network = network
        self.window = window
        self.batch = batch
        self.up_id = str(request.stream_id)  # the node's stream messages carry a string id
        self.next_index = request.first_index  # xpub: the next index to derive
        self.acked = 0  # the upstream's begin is seq 0; nothing to ack before the first item

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                await self._start()
                nursery.start_soon(self._acker)
                if self.request.xpub is None and not self.request.last:
                    nursery.start_soon(self._more_addresses)
                await self._read()
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            leaf = _network_leaf(group)
            if leaf is None:
                raise
            raise HistoryUnavailable(f"connection to {self.channel.node} lost") from leaf

    def _derive(self) -> list[list[Any]]:
        assert self.request.xpub is not None
        pairs = derive_addresses(self.request.xpub, self.network, self.next_index, self.batch)
        self.next_index += self.batch
        return [[index, address] for index, address in pairs]

    async def _start(self) -> None:
        request = self.request
        if request.xpub is not None:
            addresses, last = self._derive(), False
        else:
            addresses, last = [[a.index, a.address] for a in request.addresses], request.last
        await self.channel.send(
            {
                "type": "request:history:manual",
                "id": self.up_id,
                "first": True,
                "addresses": addresses,
                "last": last,
                "gap-limit": request.gap_limit,
                "window-size": self.window,
            }
        )

    async def _more(self, addresses: list[list[Any]], last: bool) -> None:
        await self.channel.send(
            {
                "type": "request:history:manual",
                "id": self.up_id,
                "first": False,
                "addresses": addresses,
                "last": last,
            }
        )

    async def _more_addresses(self) -> None:
        while True:
            batch = await self.feed.more_addresses()
            await self._more([[a.index, a.address] for a in batch.addresses], batch.last)
            if batch.last:
                return

    async def _read(self) -> None:
        while True:
            message = await self.channel.receive()
            if message.get("id") != self.up_id:
                continue
            kind = message.get("type")
            seq = message.get("seq")
            if kind == "stream:history:address":
                index, address = message.get("index"), message.get("address")
                if not isinstance(index, int) or not isinstance(address, str):
                    continue
                if self.request.xpub is not None and self.next_index - index <= self.batch:
                    await self._more(self._derive(), False)
                await self.feed.offer(AddressItem(index, address, tag=seq))
            elif kind == "stream:history:vertex":
                data = message.get("data")
                if isinstance(data, dict):
                    await self.feed.offer(VertexItem(data, tag=seq))
            elif kind == "stream:history:end":
                if isinstance(seq, int):
                    await self.channel.send({"type": "request:history:ack", "id": self.up_id, "ack": seq})
                self.feed.finish()
                return
            elif kind == "stream:history:error":
                errmsg = message.get("errmsg")
                self.feed.fail(errmsg if isinstance(errmsg, str) else "Upstream stream error.")
                return

    async def _acker(self) -> None:
        """Ack the upstream with the last item the client was sent, every half window."""
        threshold = max(1, self.window // 2)
        while True:
            await self.feed.wait_progress()
            tag = self.feed.last_sent_tag
            if isinstance(tag, int) and tag - self.acked >= threshold:
                self.acked = tag
                await self.channel.send({"type": "request:history:ack", "id": self.up_id, "ack": tag})


def _network_leaf(group: BaseExceptionGroup) -> BaseException | None:
    """A lost-connection error inside ``group`` (anything else is a bug and re-raised)."""
    lost = (trio_websocket.ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError, OSError)
    return first_leaf(group, (HistoryUnavailable, *lost))
