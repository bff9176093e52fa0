"""End to end: the proxy mines real Hathor blocks on the embedded dev node.

These are the tests a pool operator's first minutes look like: start, watch /metrics count
accepted blocks, check /health, stop with SIGTERM and find no process left behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import trio

from miningproxy.app import run_app
from miningproxy.config import config_from_dict
from miningproxy.devnode.server import DevNode
from miningproxy.devnode.settings import DevNodeSettings
from tests.hathor_vectors import PRIVATENET_ADDRESS, PRIVATENET_SCRIPT

ROOT = Path(__file__).resolve().parents[1]


async def http_get(port: int, path: str) -> tuple[int, str]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = "^" + re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" (\S+)$"
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_proxy_mines_blocks_accepted_by_the_dev_node():
    # Weight decay on: the template's weight is for timestamp_now while its data carries
    # timestamp_min (the TRAP): blocks are only accepted if jobs use the clock, clamped.
    node = DevNode(DevNodeSettings(block_weight=14.0, min_block_weight=10.0, weight_decay_seconds=2.0))
    async with trio.open_nursery() as nursery:
        node_port = await nursery.start(node.serve, "127.0.0.1", 0)
        config = config_from_dict(
            {
                "upstream": {"nodes": [f"http://127.0.0.1:{node_port}/v1a/"], "backoff_initial": 0.1},
                "pool": {"address": PRIVATENET_ADDRESS, "tag": "e2e"},
                "http": {"listen": "127.0.0.1:0"},
                "workers": {"count": 1, "share_weight": 8.0},
            }
        )
        app = await nursery.start(run_app, config)
        text = ""
        with trio.fail_after(90):
            while metric(text, "miningproxy_blocks_total", result="accepted") < 2:
                await trio.sleep(0.2)
                status, text = await http_get(app.http_port, "/metrics")
                assert status == 200
        status, body = await http_get(app.http_port, "/health")
        assert status == 200 and json.loads(body)["status"] == "ok"
        assert metric(text, "miningproxy_shares_total", result="accepted", reason="ok") >= 2
        assert metric(text, "miningproxy_upstream_connected") == 1.0
        assert metric(text, "miningproxy_template_height") >= 2
        mined = [cb.block for cb in node.chain.blocks if cb.block.data.startswith(b"e2e")]
        assert len(mined) >= 2
        assert all(b.outputs[0].script == PRIVATENET_SCRIPT for b in mined)
        # Every accepted block kept its timestamp inside the range and met its own weight.
        for block in mined:
            assert block.verify_pow()
        status, body = await http_get(app.http_port, "/pool/blocks")
        assert "accepted" in [b["status"] for b in json.loads(body)["blocks"]]
        nursery.cancel_scope.cancel()


async def test_health_is_503_with_a_reason_while_no_upstream():
    config = config_from_dict(
        {
            "upstream": {"nodes": ["http://127.0.0.1:9/v1a/"], "backoff_initial": 0.1},
            "pool": {"address": PRIVATENET_ADDRESS},
            "http": {"listen": "127.0.0.1:0"},
        }
    )
    async with trio.open_nursery() as nursery:
        app = await nursery.start(run_app, config)
        status, body = await http_get(app.http_port, "/health")
        assert status == 503
        assert "no upstream node connected" in body
        nursery.cancel_scope.cancel()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry))
    return found


def test_miningproxy_run_mines_then_stops_cleanly_on_sigterm(tmp_path):
    node_port, http_port = free_port(), free_port()
    config = tmp_path / "devnet.toml"
    config.write_text(
        (ROOT / "configs" / "devnet.toml")
        .read_text()
        .replace("127.0.0.1:8090", f"127.0.0.1:{node_port}")
        .replace("127.0.0.1:8080", f"127.0.0.1:{http_port}")
        .replace("block_weight = 21.0", "block_weight = 14.0")
        .replace("min_weight = 18.0", "min_weight = 10.0")
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "miningproxy.cli", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "block accepted" in line:
                break
        assert any("block accepted" in line for line in lines), "".join(lines)
        assert any(f"http://127.0.0.1:{http_port}/metrics" in line for line in lines)
        workers = children_of(proc.pid)
        assert len(workers) >= 2  # the two local hashing workers
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, rest
        assert "stopped" in rest
        for pid in workers:
            assert (
                not Path(f"/proc/{pid}").exists()
                or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
            )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_dev_node_killed_and_restarted_loses_no_found_block_silently():
    node = DevNode(DevNodeSettings(block_weight=16.0, min_block_weight=10.0))
    async with trio.open_nursery() as nursery:
        node_scope = trio.CancelScope()

        async def serve_node(port, task_status=trio.TASK_STATUS_IGNORED):
            with node_scope:
                await node.serve("127.0.0.1", port, task_status=task_status)

        port = await nursery.start(serve_node, 0)
        config = config_from_dict(
            {
                "upstream": {
                    "nodes": [f"http://127.0.0.1:{port}/v1a/"],
                    "backoff_initial": 0.1,
                    "backoff_max": 0.5,
                },
                "pool": {"address": PRIVATENET_ADDRESS, "tag": "kill"},
                "http": {"listen": "127.0.0.1:0"},
                "workers": {"count": 1, "share_weight": 10.0},
            }
        )
        app = await nursery.start(run_app, config)

        async def wait_accepted(n):
            with trio.fail_after(90):
                while sum(b.status == "accepted" for b in app.pool.blocks) < n:
                    await trio.sleep(0.1)

        await wait_accepted(1)
        node_scope.cancel()  # the node dies; local workers keep finding blocks on the old tip
        before = len(app.pool.blocks)
        with trio.fail_after(90):
            while app.upstream.status().connected or len(app.pool.blocks) < before + 2:
                await trio.sleep(0.1)
        found_while_down = len(app.pool.blocks)
        node_scope = trio.CancelScope()
        await nursery.start(serve_node, port)  # same port, same chain
        await wait_accepted(2)
        # Every found block reaches a final, counted fate: none vanishes.
        with trio.fail_after(30):
            while any(b.status in ("found", "submitted", "pending") for b in app.pool.blocks):
                await trio.sleep(0.1)
        assert len(app.pool.blocks) >= found_while_down
        _, text = await http_get(app.http_port, "/metrics")
        found = metric(text, "miningproxy_blocks_total", result="found")
        settled = sum(
            metric(text, "miningproxy_blocks_total", result=r) for r in ("accepted", "rejected", "stale")
        )
        assert found == settled == len(app.pool.blocks)
        assert metric(text, "miningproxy_blocks_total", result="stale") >= 1  # the others on the old tip
        in_chain = {cb.hash for cb in node.chain.blocks}
        for block in app.pool.blocks:
            assert (block.status == "accepted") == (block.hash in in_chain)
        nursery.cancel_scope.cancel()


def test_pool_address_of_another_network_than_the_node_exits_2(tmp_path):
    node_port, http_port = free_port(), free_port()
    config = tmp_path / "wrong-network.toml"
    config.write_text(
        (ROOT / "configs" / "devnet.toml")
        .read_text()
        .replace("127.0.0.1:8090", f"127.0.0.1:{node_port}")
        .replace("127.0.0.1:8080", f"127.0.0.1:{http_port}")
        .replace("WY1URKUnqCTyiixW1Dw29vmeG99hNN4EW6", "HJB2yxxsHtudGGy3jmVeadwMfRi2zNCKKD")
        .replace("count = 2", "count = 0")
    )
    proc = subprocess.run(
        [sys.executable, "-m", "miningproxy.cli", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "pool.address" in proc.stderr and "privatenet" in proc.stderr
