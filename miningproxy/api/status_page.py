"""The operator's status page at ``/`` and the JSON behind it.

Routes (``mount(router, app)``):

- ``/`` (and ``/index.html``), ``/static/app.js``, ``/static/style.css``: a static page, plain HTML,
  CSS and JS shipped in the package (no build step, no CDN: it works offline);
- ``/pool/status``: upstream nodes and their state, the template being mined (height, weight, age),
  pool totals, uptime;
- ``/pool/miners``: one row per Stratum connection plus one per local hashing worker (``local-N``);
- ``/pool/hashrate``: the pool hashrate sampled every 10 s over the last hour, so the chart of a
  freshly opened page is not empty. The page then follows ``dashboard:metrics`` on ``/ws``.

Everything here is a read-only projection of live objects (upstream status, pool stats, sessions);
the only state of its own is the hashrate ring buffer, sampled by :meth:`StatusPage.run`.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

import trio

from miningproxy import __version__
from miningproxy.api.http import HttpRequest, HttpResponse, Router

if TYPE_CHECKING:
    from miningproxy.app import App

log = logging.getLogger("miningproxy.api.status")

HISTORY_INTERVAL = 10.0  # seconds between two samples of the pool hashrate
HISTORY_SPAN = 3600.0  # the chart shows the last hour

# path -> (file in miningproxy/api/static, content type)
STATIC_FILES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}

# The page loads nothing from elsewhere and runs no inline script: rig-chosen strings (worker
# names, user agents) are inserted as text, and this header is the second line of defence.
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-cache"),
)


def read_static(name: str) -> bytes:
    return resources.files("miningproxy.api").joinpath("static", name).read_bytes()


class HashrateHistory:
    """A ring buffer of (wall time, hashes per second), one sample every ``interval`` seconds."""

    def __init__(
        self,
        read: Callable[[], float],
        *,
        interval: float = HISTORY_INTERVAL,
        span: float = HISTORY_SPAN,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < interval <= span:
            raise ValueError("need 0 < interval <= span")
        self.read = read
        self.interval = interval
        self.span = span
        self.wallclock = wallclock
        self.samples: deque[tuple[float, float]] = deque(maxlen=int(span // interval) + 1)

    def sample(self) -> None:
        self.samples.append((self.wallclock(), float(self.read())))

    def to_json(self) -> dict[str, Any]:
        return {
            "interval": self.interval,
            "span": self.span,
            "now": self.wallclock(),
            "samples": [[round(t, 3), rate] for t, rate in self.samples],
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        start = trio.current_time()
        ticks = 0
        while True:
            self.sample()
            ticks += 1
            await trio.sleep_until(start + ticks * self.interval)


class StatusPage:
    def __init__(self, app: App) -> None:
        self.app = app
        self.files: dict[str, tuple[bytes, str]] = {}
        try:
            self.files = {path: (read_static(name), kind) for path, (name, kind) in STATIC_FILES.items()}
        except OSError as exc:  # a broken install loses the page, never the mining
            log.error("status page files missing from this install (%s); / answers 503", exc)
        self.history = HashrateHistory(self._pool_hashrate)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Samples the pool hashrate for ``/pool/hashrate`` until cancelled."""
        await self.history.run(task_status=task_status)

    def _pool_hashrate(self) -> float:
        return self.app.pool.stats.pool.rate(trio.current_time())

    # --- JSON ------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        app = self.app
        now = trio.current_time()
        upstream = app.upstream.status()
        healthy, health = app.health()
        generation = app.pool.generation
        template = generation.template if generation is not None else None
        stats = app.pool.stats.pool
        stratum = app.stratum
        return {
            "version": __version__,
            "network": app.network.name if app.network is not None else None,
            "time": time.time(),
            "uptime": max(0.0, time.time() - app.started_at),
            "healthy": healthy,
            "health_reason": health.get("reason"),
            "upstream": {
                "connected": upstream.connected,
                "queued_blocks": upstream.queued_blocks,
                "counters": dict(upstream.counters),
                "nodes": [
                    {
                        "url": node.url,
                        "state": node.state,
                        "in_use": node.url == upstream.connected,
                        "last_error": node.last_error,
                        "consecutive_failures": node.consecutive_failures,
                        "optimistic_supported": node.optimistic_supported,
                        "retry_in": node.retry_in,
                    }
                    for node in upstream.nodes
                ],
            },
            "template": {
                "height": template.height if template is not None else upstream.template_height,
                "weight": template.weight if template is not None else None,
                "parent_hash": template.parent_hash if template is not None else None,
                "age": upstream.template_age,
                "timeout": app.config.upstream.template_timeout,
            },
            "pool": {
                "hashrate": stats.rate(now),
                "address": app.config.pool.address,
                "payout_mode": app.config.pool.payout_mode,
                "rigs": stratum.connections if stratum is not None else 0,
                "local_workers": app.local.count if app.local is not None else 0,
                "shares_accepted": stats.accepted,
                "shares_rejected": sum(stats.rejected.values()),
                "blocks_found": stats.blocks,
            },
            "stratum": {
                "ports": list(stratum.ports) if stratum is not None else [],
                "tls_ports": list(stratum.tls_ports) if stratum is not None else [],
            },
        }

    def miners(self) -> list[dict[str, Any]]:
        """Stratum rigs (as the sessions report them, plus derived columns) and local workers."""
        now = trio.current_time()
        wall = time.time()
        rows: list[dict[str, Any]] = []
        stratum = self.app.stratum
        for rig in stratum.rigs() if stratum is not None else []:
            rejected = rig.get("rejected") or {}
            last = rig.get("last_share_at")
            ago = max(0.0, now - last) if last is not None else None
            rows.append(
                {
                    **rig,
                    "kind": "stratum",
                    "rejected_total": sum(rejected.values()),
                    "last_share_ago": ago,
                    "last_share_time": wall - ago if ago is not None else None,
                    "rtt": rig.get("version_rtt"),
                }
            )
        rows.sort(key=lambda row: (row.get("worker") or "", row.get("peer") or ""))
        rows.extend(self._local_rows(now, wall))
        return rows

    def _local_rows(self, now: float, wall: float) -> list[dict[str, Any]]:
        local = self.app.local
        if local is None:
            return []
        measured = local.hashrates()  # hashes actually counted by each process
        generation = self.app.pool.generation
        block_weight = generation.template.weight if generation is not None else None
        weight: float | None = local.share_weight if local.share_weight > 0 else block_weight
        if weight is not None and block_weight is not None:
            weight = min(weight, block_weight)
        rows = []
        for index in range(local.count):
            miner = local.miner(index)
            stats = self.app.pool.stats.miners.get(miner)
            last = stats.last_share_at if stats is not None else None
            ago = max(0.0, now - last) if last is not None else None
            rejected = dict(stats.rejected) if stats is not None else {}
            rows.append(
                {
                    "kind": "local",
                    "peer": "local",
                    "address": miner.address,
                    "worker": miner.worker,
                    "subscribed": True,
                    "weight": weight,
                    "job_weight": weight,
                    "hashrate": measured.get(miner.worker, stats.rate(now) if stats is not None else 0.0),
                    "accepted": stats.accepted if stats is not None else 0,
                    "rejected": rejected,
                    "rejected_total": sum(rejected.values()),
                    "blocks": stats.blocks if stats is not None else 0,
                    "last_share_at": last,
                    "last_share_ago": ago,
                    "last_share_time": wall - ago if ago is not None else None,
                    "user_agent": None,
                    "version": f"miningproxy-local/{__version__}",
                    "version_rtt": None,
                    "rtt": None,
                }
            )
        return rows

    # --- handlers --------------------------------------------------------------------------------

    async def static(self, request: HttpRequest) -> HttpResponse:
        found = self.files.get(request.path.rstrip("/") or "/")
        if found is None:
            return HttpResponse.text("status page files are missing from this install\n", 503)
        body, kind = found
        return HttpResponse(200, body, kind, SECURITY_HEADERS)

    async def status_json(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse.json(self.status(), headers=(("cache-control", "no-store"),))

    async def miners_json(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse.json({"miners": self.miners()}, headers=(("cache-control", "no-store"),))

    async def hashrate_json(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse.json(self.history.to_json(), headers=(("cache-control", "no-store"),))


def mount(router: Router, app: App) -> StatusPage:
    """Add the page and its JSON routes; run the returned page's :meth:`StatusPage.run` in the
    app's nursery for the hashrate history."""
    page = StatusPage(app)
    for path in STATIC_FILES:
        router.http(path, page.static)
    router.http("/pool/status", page.status_json)
    router.http("/pool/miners", page.miners_json)
    router.http("/pool/hashrate", page.hashrate_json)
    return page
