"""Wires the components together and runs them under one nursery.

Start order follows the data flow: (dev node) -> upstream -> pool -> local workers -> HTTP.
Shutdown on SIGINT/SIGTERM runs the other way round: stop taking work, let in-flight block
submissions finish (bounded), then cancel everything; worker processes are reaped on the way out.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from dataclasses import dataclass
from typing import Any

import trio
from prometheus_client.core import CounterMetricFamily

from miningproxy.api.http import HttpRequest, HttpResponse, Router, serve_http
from miningproxy.config import Config, ConfigError
from miningproxy.hathor.addresses import AddressError, decode_address
from miningproxy.hathor.networks import Network, network_for_name
from miningproxy.metrics import CONTENT_TYPE, Metrics, gauge
from miningproxy.pool.local_miners import LocalMiners
from miningproxy.pool.service import PoolService
from miningproxy.upstream.mining import MiningUpstream
from miningproxy.upstream.node_info import NodeInfoError, fetch_network_name

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
    http_port: int | None = None
    network: Network | None = None  # learned from the upstream's /v1a/version

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
        local = LocalMiners(pool, config.workers.count, share_weight=config.workers.share_weight)
    app = App(config, metrics, upstream, pool, local, Router(), time.time())
    metrics.add_live_gauges(app.live_gauges)
    _add_routes(app)
    return app


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


async def run_app(config: Config, *, task_status: trio.TaskStatus[App] = trio.TASK_STATUS_IGNORED) -> None:
    app = build_app(config)
    async with trio.open_nursery() as nursery:
        if config.devnode.enabled:
            await _start_devnode(nursery, config)
        await nursery.start(app.upstream.run)
        nursery.start_soon(_learn_network, app)
        await nursery.start(app.pool.run)
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
        work.cancel()
        await app.pool.drain(SHUTDOWN_GRACE)
        nursery.cancel_scope.cancel()
    log.info("stopped")


async def _learn_network(app: App) -> None:
    """Ask the nodes which network they run; refuse a pool address of another network."""
    delay = 1.0
    while app.network is None:
        for url in app.config.upstream.nodes:
            try:
                name = await fetch_network_name(url)
            except NodeInfoError as exc:
                log.debug("network of %s not known yet: %s", url, exc)
                continue
            app.network = network_for_name(name)
            log.info("upstream network: %s", name)
            break
        else:
            await trio.sleep(delay)
            delay = min(delay * 2, 60.0)
    try:
        decode_address(app.config.pool.address, app.network)
    except AddressError as exc:
        raise ConfigError("pool.address", f"{exc}; the upstream node runs {app.network.name!r}") from None


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
    lines = [
        f"miningproxy is running ({app.config.source})",
        f"  metrics: {base}/metrics",
        f"  health:  {base}/health",
        f"  blocks:  {base}/pool/blocks",
        f"  upstream: {', '.join(app.config.upstream.nodes)}",
    ]
    if app.local is not None:
        lines.append(f"  local workers: {app.config.workers.count}")
    print("\n".join(lines), flush=True)
    log.debug("config: %s", json.dumps(str(app.config)))
