"""End to end: the proxy mines real Hathor blocks on the embedded dev node.

These are the tests a pool operator's first minutes look like: start, watch /metrics count
accepted blocks, check /health, stop with SIGTERM and find no process left behind.
"""

from __future__ import annotations

import itertools
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
from trio_websocket import open_websocket_url

from hashing.header import HeaderHasher
from hashing.pow import weight_to_target
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


def isolated(tmp_path, **sections):
    """Config sections that keep a test's files and ports to itself."""
    return {
        "http": {"listen": "127.0.0.1:0"},
        "stratum": {"listen": "127.0.0.1:0"},
        "events": {"database": str(tmp_path / "events.sqlite3")},
        **sections,
    }


async def test_proxy_mines_blocks_accepted_by_the_dev_node(tmp_path):
    # Weight decay on: the template's weight is for timestamp_now while its data carries
    # timestamp_min (the TRAP): blocks are only accepted if jobs use the clock, clamped.
    node = DevNode(DevNodeSettings(block_weight=14.0, min_block_weight=10.0, weight_decay_seconds=2.0))
    async with trio.open_nursery() as nursery:
        node_port = await nursery.start(node.serve, "127.0.0.1", 0)
        config = config_from_dict(
            {
                "upstream": {"nodes": [f"http://127.0.0.1:{node_port}/v1a/"], "backoff_initial": 0.1},
                "pool": {"address": PRIVATENET_ADDRESS, "tag": "e2e"},
                "workers": {"count": 1, "share_weight": 8.0},
                **isolated(tmp_path),
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
        # The local worker's shares are all in the pool's record (it waited for the record to open).
        credited = app.pool.stats.pool.accepted
        await app.pool.events.flush()
        recorded = [json.loads(text) for _, text in app.events.log.read("pool", 0, 1_000_000)]
        shares = [e for e in recorded if e["type"] == "POOL_SHARE_ACCEPTED"]
        assert len(shares) >= credited >= 2
        assert {e["data"]["worker"] for e in shares} == {"local-0"}
        nursery.cancel_scope.cancel()


async def test_health_is_503_with_a_reason_while_no_upstream(tmp_path):
    config = config_from_dict(
        {
            "upstream": {"nodes": ["http://127.0.0.1:9/v1a/"], "backoff_initial": 0.1},
            "pool": {"address": PRIVATENET_ADDRESS},
            **isolated(tmp_path),
        }
    )
    async with trio.open_nursery() as nursery:
        app = await nursery.start(run_app, config)
        status, body = await http_get(app.http_port, "/health")
        assert status == 503
        assert "no upstream node connected" in body
        nursery.cancel_scope.cancel()


class LineReader:
    def __init__(self, stream):
        self.stream, self.buffer = stream, b""

    async def next(self) -> bytes:
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            assert chunk, "connection closed"
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line


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


def devnet_copy(tmp_path):
    """configs/devnet.toml with free ports and its database under tmp_path."""
    node_port, http_port, stratum_port = free_port(), free_port(), free_port()
    text = (
        (ROOT / "configs" / "devnet.toml")
        .read_text()
        .replace("127.0.0.1:8090", f"127.0.0.1:{node_port}")
        .replace("127.0.0.1:8080", f"127.0.0.1:{http_port}")
        .replace("127.0.0.1:8000", f"127.0.0.1:{stratum_port}")
        .replace("data/devnet/events.sqlite3", str(tmp_path / "events.sqlite3"))
    )
    return text, http_port


def test_miningproxy_run_mines_then_stops_cleanly_on_sigterm(tmp_path):
    text, http_port = devnet_copy(tmp_path)
    config = tmp_path / "devnet.toml"
    config.write_text(
        text.replace("block_weight = 21.0", "block_weight = 14.0").replace(
            "min_weight = 18.0", "min_weight = 10.0"
        )
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


async def test_dev_node_killed_and_restarted_loses_no_found_block_silently(tmp_path):
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
                "workers": {"count": 1, "share_weight": 10.0},
                **isolated(tmp_path),
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
        # Every found block reaches a final, counted fate: none vanishes. Workers keep mining,
        # so metrics and the block list are read in one step (no checkpoint in between).
        with trio.fail_after(30):
            while True:
                text = app.metrics.render().decode()
                blocks = list(app.pool.blocks)
                if not any(b.status in ("found", "submitted", "pending") for b in blocks):
                    break
                await trio.sleep(0.02)
        assert len(blocks) >= found_while_down
        found = metric(text, "miningproxy_blocks_total", result="found")
        settled = sum(
            metric(text, "miningproxy_blocks_total", result=r) for r in ("accepted", "rejected", "stale")
        )
        assert found == settled == len(blocks)
        assert metric(text, "miningproxy_blocks_total", result="stale") >= 1  # the others on the old tip
        in_chain = {cb.hash for cb in node.chain.blocks}
        for block in blocks:
            assert (block.status == "accepted") == (block.hash in in_chain)
        nursery.cancel_scope.cancel()


def test_pool_address_of_another_network_than_the_node_exits_2(tmp_path):
    text, _ = devnet_copy(tmp_path)
    config = tmp_path / "wrong-network.toml"
    config.write_text(
        text.replace("WY1URKUnqCTyiixW1Dw29vmeG99hNN4EW6", "HJB2yxxsHtudGGy3jmVeadwMfRi2zNCKKD").replace(
            "count = 2", "count = 0"
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "miningproxy.cli", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "pool.address" in proc.stderr and "privatenet" in proc.stderr


async def test_a_rig_mines_through_stratum_and_its_shares_are_in_the_pool_record(tmp_path):
    node = DevNode(DevNodeSettings(block_weight=12.0, min_block_weight=8.0))
    async with trio.open_nursery() as nursery:
        node_port = await nursery.start(node.serve, "127.0.0.1", 0)
        config = config_from_dict(
            {
                "upstream": {"nodes": [f"http://127.0.0.1:{node_port}/v1a/"], "backoff_initial": 0.1},
                "pool": {"address": PRIVATENET_ADDRESS, "tag": "rig"},
                **isolated(tmp_path),
            }
            | {"stratum": {"listen": "127.0.0.1:0", "vardiff": {"initial_weight": 4.0, "min_weight": 1.0}}}
        )
        app = await nursery.start(run_app, config)
        with trio.fail_after(30):
            while app.pool.events is None:  # the record opens once the node named its network
                await trio.sleep(0.05)
        rig = await trio.open_tcp_stream("127.0.0.1", app.stratum.ports[0])
        lines = LineReader(rig)
        await rig.send_all(
            b'{"id": "s1", "method": "subscribe", "params": {"address": "%s"}}\n'
            % PRIVATENET_ADDRESS.encode()
        )
        reply = json.loads(await lines.next())  # the very next line, before any job
        assert (reply["id"], reply["result"], reply["error"]) == ("s1", "ok", None)
        accepted = blocks = 0
        is_block = False
        nonce = int.from_bytes(os.urandom(4), "big")

        async def submit(job):
            # Shares at the job's weight first, then ones that also meet the block weight.
            nonlocal nonce, is_block
            hasher = HeaderHasher(bytes.fromhex(job["data"]))
            target = weight_to_target(job["weight"] if accepted < 3 else 12.0)
            nonce = next(
                n for n in itertools.count(nonce + 1) if int.from_bytes(hasher.hash_nonce(n), "big") < target
            )
            is_block = int.from_bytes(hasher.hash_nonce(nonce), "big") < weight_to_target(12.0)
            request = {
                "id": accepted + 10,
                "method": "submit",
                "params": {"job_id": job["job_id"], "nonce": f"{nonce:032x}"},
            }
            await rig.send_all(json.dumps(request).encode() + b"\n")

        with trio.fail_after(60):
            while accepted < 3 or blocks < 1:
                msg = json.loads(await lines.next())
                if msg.get("method") == "job":
                    job = msg["params"]
                    assert isinstance(job["weight"], float) and len(job["job_id"]) == 32
                    await submit(job)
                elif msg.get("id") is not None and msg.get("result") == "ok":
                    accepted += 1
                    blocks += is_block
                    if accepted < 3 or blocks < 1:
                        await submit(job)
                elif msg.get("method") is None:
                    assert msg["error"]["code"] == 31, msg  # stale: a new tip came between job and share
        # What the rig was told "ok" about is in the pool's durable accounting record.
        async with open_websocket_url(f"ws://127.0.0.1:{app.http_port}/pool/event_ws") as ws:
            await ws.send_message(
                json.dumps({"type": "START_STREAM", "last_ack_event_id": None, "window_size": 1000})
            )
            types = []
            with trio.move_on_after(3):
                while True:
                    types.append(json.loads(await ws.get_message())["event"]["type"])
        assert types[0] == "LOAD_STARTED"
        assert types.count("POOL_SHARE_ACCEPTED") >= accepted
        assert "POOL_MINER_CONNECTED" in types and "POOL_BLOCK_FOUND" in types
        status, body = await http_get(app.http_port, "/pool/miners")
        assert status == 200 and PRIVATENET_ADDRESS in body
        await rig.aclose()
        nursery.cancel_scope.cancel()
