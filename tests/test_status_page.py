"""The status page's routes and JSON, without a browser (tests/test_status_page_browser.py drives
the page itself in Chromium)."""

from __future__ import annotations

import json
import re

import pytest
import trio
import trio.testing

from miningproxy.api import status_page
from miningproxy.api.http import HttpRequest
from miningproxy.api.status_page import STATIC_FILES, HashrateHistory, StatusPage, read_static
from miningproxy.app import run_app
from miningproxy.config import config_from_dict
from miningproxy.devnode.server import DevNode
from miningproxy.devnode.settings import DevNodeSettings
from tests.hathor_vectors import PRIVATENET_ADDRESS


async def http_request(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def test_static_files_are_small_self_contained_and_insert_rig_strings_as_text():
    html = read_static("index.html").decode()
    js = read_static("app.js").decode()
    total = sum(len(read_static(name)) for name, _ in set(STATIC_FILES.values()))
    assert total < 48_000
    # Nothing from elsewhere: no CDN, works offline.
    for text in (html, js, read_static("style.css").decode()):
        assert not re.search(r"(src|href)=[\"']?(https?:)?//", text)
        assert "@import" not in text and "url(http" not in text
    assert re.findall(r'(?:src|href)="([^"]+)"', html) == [
        "data:,",
        "/static/style.css",
        "/static/app.js",
        "/pool/status",
        "/pool/miners",
        "/pool/blocks",
        "/pool/hashrate",
        "/health",
        "/metrics",
    ]
    assert "<script>" not in html and "style=" not in html  # the CSP allows no inline code
    # Worker names and user agents come from rigs: never parsed as HTML.
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "document.write" not in js


async def test_an_install_without_the_page_files_still_runs_and_says_so(monkeypatch):
    def missing(name: str) -> bytes:
        raise FileNotFoundError(name)

    monkeypatch.setattr(status_page, "read_static", missing)
    page = StatusPage(app=None)  # type: ignore[arg-type]  # the page reads the app only per request
    response = await page.static(HttpRequest("GET", "/", {}, {}, b"", "127.0.0.1:1"))
    assert response.status == 503 and b"missing from this install" in response.body


async def test_hashrate_history_samples_every_10s_and_keeps_one_hour(autojump_clock):
    reads = iter(range(100_000))
    history = HashrateHistory(lambda: float(next(reads)), wallclock=trio.current_time)
    assert history.samples.maxlen == 361
    with pytest.raises(ValueError):
        HashrateHistory(lambda: 0.0, interval=0)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(history.run)
        assert len(history.samples) == 1  # sampled at once: a fresh page has a first point
        await trio.sleep(2 * 3600 + 5)
        nursery.cancel_scope.cancel()
    body = history.to_json()
    assert body["interval"] == 10.0 and body["span"] == 3600.0
    samples = body["samples"]
    assert len(samples) == 361  # the newest hour; older samples dropped
    assert [round(b[0] - a[0], 6) for a, b in zip(samples, samples[1:], strict=False)] == [10.0] * 360
    assert samples[-1] == [round(start + 7200, 3), 720.0]


@pytest.fixture
async def app(tmp_path):
    node = DevNode(DevNodeSettings(block_weight=16.0, min_block_weight=8.0))
    async with trio.open_nursery() as nursery:
        node_port = await nursery.start(node.serve, "127.0.0.1", 0)
        config = config_from_dict(
            {
                "upstream": {
                    "nodes": [f"http://127.0.0.1:{node_port}/v1a/", "http://127.0.0.1:9/v1a/"],
                    "backoff_initial": 0.1,
                },
                "pool": {"address": PRIVATENET_ADDRESS, "tag": "status"},
                "http": {"listen": "127.0.0.1:0"},
                "stratum": {"listen": "127.0.0.1:0"},
                "events": {"database": str(tmp_path / "events.sqlite3")},
                "workers": {"count": 1, "share_weight": 10.0},
            }
        )
        app = await nursery.start(run_app, config)
        with trio.fail_after(30):
            while app.pool.generation is None or not app.local.hashrates():
                await trio.sleep(0.05)
        yield app
        nursery.cancel_scope.cancel()


async def test_the_page_and_its_files_are_served_with_a_strict_policy(app):
    status, headers, body = await http_request(app.http_port, "/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert b'<canvas id="chart"' in body
    assert "default-src 'none'" in headers["content-security-policy"]
    assert "connect-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    status, headers, body = await http_request(app.http_port, "/static/app.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    assert body == read_static("app.js")
    status, headers, body = await http_request(app.http_port, "/static/style.css", method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) == len(read_static("style.css"))
    status, _, _ = await http_request(app.http_port, "/static/nope.js")
    assert status == 404


async def test_pool_status_has_nodes_template_and_totals(app):
    before = app.pool.generation.template.height
    status, headers, body = await http_request(app.http_port, "/pool/status")
    after = app.pool.generation.template.height  # blocks keep coming while we ask
    assert status == 200 and headers["cache-control"] == "no-store"
    s = json.loads(body)
    nodes = s["upstream"]["nodes"]
    assert [n["state"] for n in nodes][0] == "connected" and nodes[0]["in_use"] is True
    assert nodes[1] == {**nodes[1], "url": "http://127.0.0.1:9/v1a/", "in_use": False}
    assert before <= s["template"]["height"] <= after
    assert 0 <= s["template"]["age"] < 60 and s["template"]["weight"] == 16.0
    assert s["pool"]["local_workers"] == 1 and s["pool"]["rigs"] == 0
    assert s["healthy"] is True and s["network"] == "privatenet" and s["uptime"] >= 0
    assert s["stratum"]["ports"] == app.stratum.ports


async def test_pool_miners_lists_local_workers_as_rigs_with_every_column(app):
    _, _, body = await http_request(app.http_port, "/pool/miners")
    (local,) = json.loads(body)["miners"]
    assert local["worker"] == "local-0" and local["kind"] == "local"
    assert local["address"] == PRIVATENET_ADDRESS
    assert local["hashrate"] > 0 and local["weight"] == 10.0
    for column in ("accepted", "rejected_total", "last_share_ago", "version", "rtt"):
        assert column in local


async def test_pool_hashrate_is_sampled_from_the_start(app):
    _, _, body = await http_request(app.http_port, "/pool/hashrate")
    h = json.loads(body)
    assert h["interval"] == 10.0 and h["span"] == 3600.0
    assert len(h["samples"]) >= 1 and h["samples"][0][0] <= h["now"]
