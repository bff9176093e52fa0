"""Wires the components together and runs them under one nursery.

Start order follows the data flow: (dev node) -> upstream -> pool -> admin relay -> local workers
-> HTTP; the event streams open once the upstream's network is known.
Shutdown on SIGINT/SIGTERM runs the other way round: stop taking work, let in-flight block
submissions finish (bounded), then cancel everything; worker processes are reaped on the way out.
"""

from __future__ import annotations

import logging
import signal
import ssl
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio
from prometheus_client.core import CounterMetricFamily

from miningproxy import gcpolicy
from miningproxy.api.admin_ws import ProxyAdmin
from miningproxy.api.http import HttpRequest, HttpResponse, Router, serve_http
from miningproxy.api.mining_ws import MiningRelay
from miningproxy.api.pool_view import PoolView
from miningproxy.api.status_page import StatusPage
from miningproxy.api.status_page import mount as mount_status_page
from miningproxy.config import Config, ConfigError
from miningproxy.events.log import EventLogError, IdentityMismatch
from miningproxy.events.service import EventsService
from miningproxy.hathor.addresses import AddressError, decode_address
from miningproxy.hathor.networks import MAINNET, Network, network_for_name
from miningproxy.metrics import CONTENT_TYPE, Metrics, gauge
from miningproxy.pool.local_miners import LocalMiners
from miningproxy.pool.recovery import settle_unfinished_blocks
from miningproxy.pool.service import PoolService
from miningproxy.stratum.server import StratumServer
from miningproxy.upstream.admin import AdminUpstream
from miningproxy.upstream.mining import MiningUpstream
from miningproxy.upstream.node_info import learn_network

log = logging.getLogger("miningproxy")

SHUTDOWN_GRACE = 5.0  # seconds for in-flight block submissions at shutdown


@dataclass
class App:
    config: Config
    metrics: Metrics
    upstream: MiningUpstream
    pool: PoolService
    local: LocalMiners | None
    router: Router
    started_at: float
    events: EventsService
    admin: ProxyAdmin | None = None
    admin_upstream: AdminUpstream | None = None
    mining_relay: MiningRelay | None = None
    stratum: StratumServer | None = None
    http_port: int | None = None
    network: Network | None = None  # learned from the upstream's /v1a/version
    status_page: StatusPage | None = None  # / and /pool/status, /pool/miners, /pool/hashrate

    # --- health and live gauges ----------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        status = self.upstream.status()
        node = status.connected
        age = status.template_age
        body: dict[str, Any] = {"upstream": node, "template_age": age}
        if not node:
            return False, {**body, "status": "unhealthy", "reason": "no upstream node connected"}
        if age is None:
            return False, {**body, "status": "unhealthy", "reason": "no block template received yet"}
        if age > self.config.upstream.template_timeout:
            return False, {
                **body,
                "status": "unhealthy",
                "reason": f"template is {age:.0f}s old (limit {self.config.upstream.template_timeout:.0f}s)",
            }
        generation = self.pool.generation
        body["template_height"] = generation.template.height if generation else None
        return True, {**body, "status": "ok"}

    def live_gauges(self):
        status = self.upstream.status()
        connected = status.connected
        yield gauge("miningproxy_upstream_connected", "1 when a node is connected", 1.0 if connected else 0.0)
        in_use = gauge(
            "miningproxy_upstream_node_in_use",
            "1 for the node serving templates, 0 for the others",
            labels={"node": ""},
        )
        states = gauge(
            "miningproxy_upstream_node_state",
            "1 for each node's current connection state",
            labels={"node": "", "state": ""},
        )
        failures = gauge(
            "miningproxy_upstream_node_consecutive_failures",
            "Failed connection attempts in a row",
            labels={"node": ""},
        )
        for node in status.nodes:
            in_use.add_metric([node.url], 1.0 if node.url == connected else 0.0)
            states.add_metric([node.url, node.state], 1.0)
            failures.add_metric([node.url], node.consecutive_failures)
        yield in_use
        yield states
        yield failures
        yield gauge(
            "miningproxy_upstream_queued_blocks", "Found blocks waiting for an upstream", status.queued_blocks
        )
        events = CounterMetricFamily(
            "miningproxy_upstream_events",
            "Upstream client events since start "
            "(reconnects, failovers, fail-backs, blocks queued or stale...)",
            labels=["event"],
        )
        for name, value in sorted(status.counters.items()):
            events.add_metric([name], value)
        yield events
        generation = self.pool.generation
        if generation is not None:
            yield gauge(
                "miningproxy_template_height", "Height of the block being mined", generation.template.height
            )
            yield gauge(
                "miningproxy_template_weight",
                "Block weight of the current template",
                generation.template.weight,
            )
        if status.template_age is not None:
            yield gauge(
                "miningproxy_template_age_seconds",
                "Seconds since the last template from the upstream",
                status.template_age,
            )
        now = trio.current_time()
        yield gauge(
            "miningproxy_pool_hashrate_hashes_per_second",
            "Pool hashrate from accepted shares",
            self.pool.stats.pool.rate(now),
        )
        if self.local is not None:
            rates = gauge(
                "miningproxy_local_worker_hashrate_hashes_per_second",
                "Hashes per second of each local worker",
                labels={"worker": ""},
            )
            for worker, rate in self.local.hashrates().items():
                rates.add_metric([worker], rate)
            yield rates
        yield gauge("miningproxy_uptime_seconds", "Seconds since start", time.time() - self.started_at)


def build_app(config: Config) -> App:
    metrics = Metrics()
    up = config.upstream
    upstream = MiningUpstream(
        list(up.nodes),
        template_timeout=up.template_timeout,
        failback_after=up.failback_after,
        backoff_initial=up.backoff_initial,
        backoff_max=up.backoff_max,
        optimistic=up.optimistic,
        submit_timeout=up.submit_timeout,
    )
    pool = PoolService(
        upstream=upstream,
        address=config.pool.address,
        tag=config.pool.tag,
        job_refresh=config.pool.job_refresh,
        metrics=metrics,
    )
    local = None
    if config.workers.count > 0:
        local = LocalMiners(
            pool, config.workers.count, share_weight=config.workers.share_weight, address=config.pool.address
        )
    ev = config.events
    try:  # a read-only or full disk is a clear error at start-up, not a traceback
        Path(ev.database).parent.mkdir(parents=True, exist_ok=True)
        events = EventsService(
            database=ev.database,
            nodes=up.nodes,
            network=ev.network,
            synchronous=ev.synchronous,
            consume_upstream=ev.consume_upstream,
            upstream_window=ev.upstream_window,
            retention_count=ev.retention_count,
            retention_age=ev.retention_age,
            retention_interval=ev.retention_interval,
            send_timeout=ev.send_timeout,
            backoff_initial=up.backoff_initial,
            backoff_max=up.backoff_max,
            registry=metrics.registry,
        )
    except (OSError, EventLogError) as exc:
        raise ConfigError("events.database", f"cannot open {ev.database}: {exc}") from None
    if config.devnode.enabled:
        _forget_devnet_node_events(events)
    pool.record_required = True  # local workers start once the record is open
    app = App(config, metrics, upstream, pool, local, Router(), time.time(), events)
    events.mount(app.router)
    metrics.add_live_gauges(events.gauges)
    if config.admin_ws.enabled:
        aw = config.admin_ws
        app.admin_upstream = AdminUpstream(
            list(up.nodes),
            prefer=lambda: upstream.status().connected,
            backoff_initial=up.backoff_initial,
            backoff_max=up.backoff_max,
            max_streams=aw.max_history_streams,
        )
        app.admin = ProxyAdmin(
            app.admin_upstream,
            network=network_of_address(config.pool.address),
            pool=PoolView(pool, upstream, started_at=app.started_at),
            max_subscriptions=aw.max_subscriptions_per_connection,
            metrics_interval=aw.metrics_interval,
            address_stats_interval=aw.address_stats_interval,
            outbox_limit=aw.outbox_limit,
            send_timeout=aw.send_timeout,
        )
        app.admin.mount(app.router)
    if config.mining_ws.enabled:
        mw = config.mining_ws
        app.mining_relay = MiningRelay(
            upstream,
            optimistic_wait=mw.optimistic_wait,
            max_submits=mw.max_submits_per_client,
            outbox_limit=mw.outbox_limit,
            send_timeout=mw.send_timeout,
        )
        app.mining_relay.mount(app.router)
    app.stratum = StratumServer(
        pool,
        config.stratum,
        None,  # the network is learned from the upstream; rigs get "node syncing" until then
        metrics=metrics,
        payout_mode=config.pool.payout_mode,
        ssl_context=_stratum_tls(config),
    )
    metrics.add_live_gauges(app.live_gauges)
    _add_routes(app)
    return app


def _stratum_tls(config: Config) -> ssl.SSLContext | None:
    settings = config.stratum
    if settings.tls_listen is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert or "", settings.tls_key or "")
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("stratum.tls_cert", f"cannot load the certificate and key: {exc}") from None
    return context


def _forget_devnet_node_events(events: EventsService) -> None:
    """The embedded dev node keeps its chain in memory: each start is a new chain and a new event
    queue. Relaying it after last run's node events would mix two sequences (the proxy refuses
    that and stops appending), so the node sequence starts afresh; the pool's record is kept."""
    deleted = events.log.forget("node")
    events.node_feed.reload()
    if deleted:
        log.info(
            "embedded dev node: a new chain, so its %d relayed events of the last run are dropped", deleted
        )


def network_of_address(address: str) -> Network:
    """The network an address belongs to, as far as its version byte tells (until the node says)."""
    version = decode_address(address).version
    return MAINNET if version in MAINNET.versions else network_for_name("testnet")


def _add_routes(app: App) -> None:
    async def metrics_page(request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, app.metrics.render(), content_type=CONTENT_TYPE)

    async def health(request: HttpRequest) -> HttpResponse:
        ok, body = app.health()
        return HttpResponse.json(body, status=200 if ok else 503)

    async def blocks(request: HttpRequest) -> HttpResponse:
        return HttpResponse.json({"blocks": [b.to_json() for b in reversed(app.pool.blocks)]})

    app.router.http("/metrics", metrics_page)
    app.router.http("/health", health)
    app.router.http("/pool/blocks", blocks)
    app.status_page = mount_status_page(app.router, app)  # also /pool/miners (rigs and local workers)


async def run_app(config: Config, *, task_status: trio.TaskStatus[App] = trio.TASK_STATUS_IGNORED) -> None:
    app = build_app(config)
    gc_pauses = gcpolicy.PauseTimer(app.metrics.observe_gc_pause)
    gc_pauses.install()
    try:
        await _run_app(app, config, task_status)
    finally:
        gc_pauses.remove()


async def _run_app(app: App, config: Config, task_status: trio.TaskStatus[App]) -> None:
    async with trio.open_nursery() as nursery:
        if config.devnode.enabled:
            await _start_devnode(nursery, config)
        await nursery.start(app.upstream.run)
        await nursery.start(app.pool.run)
        if app.status_page is not None:
            await nursery.start(app.status_page.run)
        if app.admin_upstream is not None and app.admin is not None:
            await nursery.start(app.admin_upstream.run)
            await nursery.start(app.admin.run)
        nursery.start_soon(_network_then_events, app, nursery)
        if app.stratum is not None:
            await nursery.start(app.stratum.run)
        work = trio.CancelScope()

        async def workers_and_http(task_status=trio.TASK_STATUS_IGNORED) -> None:
            with work:
                async with trio.open_nursery() as inner:
                    if app.local is not None:
                        await inner.start(app.local.run)
                    listeners = await inner.start(
                        serve_http, app.router, config.http.listen.host, config.http.listen.port
                    )
                    app.http_port = listeners[0].socket.getsockname()[1]
                    task_status.started()

        await nursery.start(workers_and_http)
        _announce(app)
        task_status.started(app)
        await _wait_for_signal()
        log.info("shutting down: stopping workers and listeners")
        if app.stratum is not None:
            await app.stratum.shutdown()  # stop accepting, tell rigs to reconnect, finish their submits
        work.cancel()
        await app.pool.drain(SHUTDOWN_GRACE)
        if app.pool.events is not None:
            with trio.move_on_after(SHUTDOWN_GRACE):
                await app.pool.events.flush()  # what rigs were told is already on disk; the rest too
        nursery.cancel_scope.cancel()
    log.info("stopped")


async def _network_then_events(app: App, nursery: trio.Nursery) -> None:
    """Learn the upstream's network, refuse a pool address of another network, then open the
    event streams (the pool's record is tagged with the network)."""
    up = app.config.upstream
    name = await learn_network(
        up.nodes, backoff_initial=up.backoff_initial, backoff_max=max(up.backoff_max, 1.0)
    )
    app.network = network_for_name(name)
    log.info("upstream network: %s", name)
    try:
        decode_address(app.config.pool.address, app.network)
    except AddressError as exc:
        raise ConfigError("pool.address", f"{exc}; the upstream node runs {name!r}") from None
    if app.admin is not None:
        app.admin.network = app.network
    if app.events.network is None:
        app.events.network = name
    try:
        await nursery.start(app.events.run)
    except IdentityMismatch as exc:
        raise ConfigError(
            "events.database",
            f"{app.config.events.database} holds another stream ({exc}); point events.database at a new file",
        ) from None
    upto = app.events.pool_feed.last_id  # nothing of this run is recorded yet
    app.pool.attach_events(app.events.pool)
    if app.stratum is not None:
        # Only now: a rig subscribed earlier could be told "ok" for a share the record never saw.
        app.stratum.set_network(app.network)
    # Blocks a previous run found but never learned the fate of get one now (pool/recovery.py).
    nursery.start_soon(partial(settle_unfinished_blocks, app.pool, up.nodes, upto=upto))


async def _wait_for_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s", signal.Signals(signum).name)
            return


async def _start_devnode(nursery: trio.Nursery, config: Config) -> None:
    from miningproxy.devnode.server import serve_devnode
    from miningproxy.devnode.settings import DevNodeSettings

    dev = config.devnode
    settings = DevNodeSettings(
        network=dev.network,
        block_weight=dev.block_weight,
        min_block_weight=dev.min_weight,
        weight_decay_seconds=dev.weight_decay_seconds,
        optimistic=dev.optimistic,
    )
    await nursery.start(serve_devnode, settings, dev.listen.host, dev.listen.port)
    log.info("embedded dev node on http://%s/v1a/", dev.listen)


def _announce(app: App) -> None:
    listen = app.config.http.listen
    base = f"http://{listen.host}:{app.http_port}"
    ws = f"ws://{listen.host}:{app.http_port}"
    lines = [
        f"miningproxy is running ({app.config.source})",
        f"  status:    {base}/",
        f"  metrics:   {base}/metrics",
        f"  health:    {base}/health",
        f"  blocks:    {base}/pool/blocks   miners: {base}/pool/miners",
        f"  events:    {ws}/v1a/event_ws   pool events: {ws}/pool/event_ws",
    ]
    if app.admin is not None:
        lines.append(f"  admin ws:  {ws}/v1a/ws")
    if app.mining_relay is not None:
        lines.append(f"  mining ws: {ws}/v1a/mining_ws")
    if app.stratum is not None:
        host = app.config.stratum.listen[0]
        ports = ", ".join(f"stratum+tcp://{host}:{p}" for p in app.stratum.ports)
        tls = ", ".join(f"stratum+ssl://{host}:{p}" for p in app.stratum.tls_ports)
        lines.append(f"  stratum:   {ports}{'  ' + tls if tls else ''}")
    lines.append(f"  upstream:  {', '.join(app.config.upstream.nodes)}")
    if app.local is not None:
        lines.append(f"  local workers: {app.config.workers.count}")
    print("\n".join(lines), flush=True)
