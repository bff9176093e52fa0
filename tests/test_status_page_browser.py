"""The status page at ``/`` in a real browser, while a local worker and a Stratum rig mine.

Headless Chromium (Debian's ``chromium``) driven by Playwright with the system browser: no browser
download. The proxy and its dev node run in this test's trio loop; the browser is driven from a
worker thread (Playwright's sync API), which reaches back into trio to connect the rig and to read
the app's state at the moment it checks the page.

Skipped with the reason when Chromium or Playwright is missing, so a developer machine without them
still passes; ``.ci/run`` installs both.

The screenshot goes to ``docs/status-page.png`` when that file is missing or when
``MININGPROXY_UPDATE_SCREENSHOT=1``; otherwise to the test's tmp directory (``make test`` does not
dirty the tree).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import trio

from hashing.header import HeaderHasher
from hashing.pow import weight_to_target
from miningproxy.app import run_app
from miningproxy.config import config_from_dict
from miningproxy.devnode.server import DevNode
from miningproxy.devnode.settings import DevNodeSettings
from tests.hathor_vectors import PRIVATENET_ADDRESS

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "docs" / "status-page.png"
CHROMIUM = Path(os.environ.get("MININGPROXY_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
RIG_WORKER = "browser-rig"
RIG_VERSION = "test-rig/1.2.3"
DEAD_NODE = "http://127.0.0.1:9/v1a/"  # nothing listens: a second node that is never "connected"

pytestmark = [
    pytest.mark.skipif(
        sync_playwright is None, reason="playwright is not installed (pip install playwright)"
    ),
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium chromium-driver)"
    ),
]


class LineReader:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream, self.buffer = stream, b""

    async def next(self) -> dict:
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError("the proxy closed the rig's connection")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)


async def raw_rig(port: int) -> None:
    """A Stratum rig over plain TCP: subscribes as ADDRESS.worker, answers client.get_version and
    submits one share for each job (a job comes with each new block or refresh)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        lines = LineReader(stream)

        async def send(message: dict) -> None:
            await stream.send_all(json.dumps(message).encode() + b"\n")

        await send(
            {
                "id": 1,
                "method": "subscribe",
                "params": {"login": f"{PRIVATENET_ADDRESS}.{RIG_WORKER}", "agent": "test-rig"},
            }
        )
        nonce = 0
        ids = itertools.count(10)
        while True:
            message = await lines.next()
            if message.get("method") == "client.get_version":
                await send({"id": message["id"], "result": RIG_VERSION, "error": None})
            elif message.get("method") == "job":
                job = message["params"]
                hasher = HeaderHasher(bytes.fromhex(job["data"]))
                target = weight_to_target(job["weight"])
                nonce = next(
                    n
                    for n in itertools.count(nonce + 1)
                    if int.from_bytes(hasher.hash_nonce(n), "big") < target
                )
                params = {"job_id": job["job_id"], "nonce": f"{nonce:032x}"}
                await send({"id": next(ids), "method": "submit", "params": params})


def browse(url: str, app, nursery: trio.Nursery, shot: Path) -> dict:
    """Everything the browser checks; runs in a worker thread. Returns what it saw."""
    seen: dict = {}
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
            bypass_csp=True,  # Playwright's wait_for_function evaluates strings; the page forbids eval
        )
        try:
            page = context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.goto(url)  # returns once the page has loaded

            # The chart follows /ws: a first point within 3 s of loading, then another.
            page.wait_for_function(
                "Number(document.getElementById('chart').dataset.updates) >= 1", timeout=3_000
            )
            page.wait_for_selector("#health[data-state=ok]", timeout=5_000)
            before = int(page.get_attribute("#chart", "data-updates"))
            page.wait_for_function(
                f"Number(document.getElementById('chart').dataset.updates) > {before}", timeout=3_000
            )
            assert page.text_content("#live") == "live"
            assert int(page.get_attribute("#chart", "data-points")) >= 2  # seed from /pool/hashrate + live
            assert float(page.get_attribute("#chart", "data-last")) > 0  # the local worker's shares
            assert re.fullmatch(r"[\d.]+ [kMGTPE]?H/s", page.text_content("#pool-hashrate"))

            # Upstream nodes and their state.
            nodes = page.locator("#upstream-nodes tbody tr")
            assert nodes.count() == 2
            assert nodes.nth(0).locator("td.state").text_content() == "connected"
            assert nodes.nth(0).locator("td").nth(2).text_content() == "yes"
            assert nodes.nth(1).get_attribute("data-node") == DEAD_NODE
            assert nodes.nth(1).locator("td.state").text_content() != "connected"

            # Template height (as the app has it) and age (seconds, ticking, under the timeout).
            shown = int(page.text_content("#template-height").replace(",", ""))
            height = trio.from_thread.run_sync(lambda: app.pool.generation.template.height)
            assert 0 <= height - shown <= 4, (shown, height)  # the page shows a height of the last ~2 s
            age_text = page.text_content("#template-age")
            assert re.fullmatch(r"\d+(\.\d)? s|\d+ min \d+ s", age_text), age_text
            assert 0 <= float(page.get_attribute("#template-age", "data-age")) < 60

            # Local workers are rigs named local-N, with their hashrate.
            local = page.locator('#rigs-table tr[data-worker="local-0"]')
            local.wait_for(timeout=5_000)
            assert local.get_attribute("data-kind") == "local"
            assert re.fullmatch(r"[\d.]+ [kMG]?H/s", local.locator("td").nth(2).text_content())

            # A rig that connects appears in the table, with every column filled in.
            assert page.locator(f'#rigs-table tr[data-worker="{RIG_WORKER}"]').count() == 0
            trio.from_thread.run_sync(nursery.start_soon, raw_rig, app.stratum.ports[0])
            rig = page.locator(f'#rigs-table tr[data-worker="{RIG_WORKER}"]')
            rig.wait_for(timeout=6_000)
            page.wait_for_function(
                f"""(() => {{
                    const row = document.querySelector('#rigs-table tr[data-worker="{RIG_WORKER}"]');
                    return row && Number(row.cells[3].textContent.replace(/,/g, '')) >= 1
                        && row.cells[7].textContent === '{RIG_VERSION}';
                }})()""",
                timeout=10_000,
            )
            cells = [rig.locator("td").nth(i).text_content() for i in range(9)]
            seen["rig"] = cells
            assert cells[0] == RIG_WORKER
            assert cells[1].startswith(PRIVATENET_ADDRESS[:8])
            assert cells[2].endswith("H/s")
            assert int(cells[4]) >= 0
            assert cells[5].endswith("ago") and cells[5] != "never ago"
            assert re.fullmatch(r"\d+\.\d\d", cells[6])  # vardiff weight
            assert re.fullmatch(r"\d+\.\d ms", cells[8])  # round-trip time of client.get_version

            # Recent blocks with their fate.
            accepted = page.locator("#blocks-table tr[data-fate=accepted]").first
            accepted.wait_for(timeout=20_000)
            assert accepted.locator("td.fate").text_content() == "accepted"
            block_hash = accepted.get_attribute("data-hash")
            fates = trio.from_thread.run_sync(lambda: {b.hash.hex(): b.status for b in app.pool.blocks})
            assert fates[block_hash] == "accepted"

            page.wait_for_timeout(1_500)  # a few more chart points for the picture
            page.screenshot(path=str(shot), full_page=True)
        finally:
            context.close()
    assert not errors, errors
    return seen


async def test_status_page_in_a_real_browser(tmp_path):
    node = DevNode(DevNodeSettings(block_weight=19.0, min_block_weight=8.0))
    async with trio.open_nursery() as nursery:
        node_port = await nursery.start(node.serve, "127.0.0.1", 0)
        config = config_from_dict(
            {
                "upstream": {
                    "nodes": [f"http://127.0.0.1:{node_port}/v1a/", DEAD_NODE],
                    "backoff_initial": 0.1,
                },
                "pool": {"address": PRIVATENET_ADDRESS, "tag": "page"},
                "http": {"listen": "127.0.0.1:0"},
                "stratum": {"listen": "127.0.0.1:0", "vardiff": {"initial_weight": 6.0, "min_weight": 1.0}},
                "events": {"database": str(tmp_path / "events.sqlite3")},
                "workers": {"count": 1, "share_weight": 10.0},
            }
        )
        app = await nursery.start(run_app, config)
        with trio.fail_after(30):  # rigs are told "node syncing" until the node named its network
            while app.network is None or app.pool.stats.pool.accepted == 0:
                await trio.sleep(0.05)
        update = os.environ.get("MININGPROXY_UPDATE_SCREENSHOT") == "1" or not SCREENSHOT.exists()
        shot = tmp_path / "status-page.png"
        url = f"http://127.0.0.1:{app.http_port}/"
        await trio.to_thread.run_sync(browse, url, app, nursery, shot)  # bounded by Playwright's timeouts
        assert shot.stat().st_size > 10_000
        if update:
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, SCREENSHOT)
        nursery.cancel_scope.cancel()
