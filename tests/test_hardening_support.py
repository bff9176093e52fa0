"""Helpers for the hardening tests (no tests here): rig swarms in a child process, free ports.

A swarm runs in its own process so that the proxy under test and the rigs do not share one
open-file table (10,000 rigs are 20,000 descriptors when both ends live in one process):

    python -m tests.test_hardening_support swarm PORT COUNT

opens COUNT Stratum connections at once (from 127.1.x.y source addresses, at most PER_IP each,
so per-IP limits see many peers), subscribes each, prints ``READY <n>`` once every rig has its
reply and first job, ``CLEAN <n>`` once every rig got a job on a new tip, then holds the
connections until its stdin closes.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any

import trio

from tests.hathor_vectors import PRIVATENET_ADDRESS
from tests.stream_support import receive_or_eof

PER_IP = 200
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def source_address(index: int) -> str:
    slot = index // PER_IP
    return f"127.1.{slot // 250}.{slot % 250 + 1}"


class Rig:
    """A minimal raw-TCP Stratum rig."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def connect(cls, port: int, local_address: str | None = None) -> Rig:
        return cls(await trio.open_tcp_stream("127.0.0.1", port, local_address=local_address))

    async def line(self) -> dict[str, Any] | None:
        while b"\n" not in self.buffer:
            data = await receive_or_eof(self.stream)
            if not data:
                return None
            self.buffer += data
        raw, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(raw)

    async def subscribe(self, address: str = PRIVATENET_ADDRESS) -> dict[str, Any]:
        request = {"id": "sub", "method": "subscribe", "params": {"address": address}}
        await self.stream.send_all(json.dumps(request).encode() + b"\n")
        reply = await self.line()
        assert reply is not None and reply.get("result") == "ok", reply
        return await self.job()

    async def job(self) -> dict[str, Any]:
        while True:
            message = await self.line()
            assert message is not None, "connection closed while waiting for a job"
            if message.get("method") == "job":
                return message["params"]


async def _swarm(port: int, count: int) -> None:
    rigs: list[Rig] = []
    first: dict[int, str] = {}
    clean = 0

    async def one(i: int) -> None:
        rig = await Rig.connect(port, source_address(i))
        job = await rig.subscribe()
        first[i] = job["parent_hash"]
        rigs.append(rig)

    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(one, i)
    print(f"READY {len(rigs)}", flush=True)

    async def until_clean(rig: Rig, parent: str) -> None:
        nonlocal clean
        while True:
            job = await rig.job()
            if job["clean"] and job["parent_hash"] != parent:
                clean += 1
                return

    async with trio.open_nursery() as nursery:
        for i, rig in enumerate(rigs):
            nursery.start_soon(until_clean, rig, first[i])
    print(f"CLEAN {clean}", flush=True)
    await trio.to_thread.run_sync(sys.stdin.read)
    for rig in rigs:
        rig.stream.socket.close()


def raise_nofile(want: int) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


if __name__ == "__main__":
    if sys.argv[1] == "swarm":
        raise_nofile(int(sys.argv[3]) + 256)
        trio.run(_swarm, int(sys.argv[2]), int(sys.argv[3]))


# --- the whole app in this process, against the embedded dev node ---------------------------------


def app_config(node_port: int, tmp_path: Any, database: str | None = None, **sections: Any) -> Any:
    """A config for run_app: loopback port 0 everywhere, the database under tmp_path."""
    from miningproxy.config import config_from_dict

    stratum = {
        "listen": "127.0.0.1:0",
        "vardiff": {"initial_weight": 4.0, "min_weight": 1.0},
        **sections.pop("stratum", {}),
    }
    data = {
        "upstream": {
            "nodes": [f"http://127.0.0.1:{node_port}/v1a/"],
            "backoff_initial": 0.1,
            "backoff_max": 0.5,
        },
        "pool": {"address": PRIVATENET_ADDRESS, "tag": "hard"},
        "http": {"listen": "127.0.0.1:0"},
        "events": {"database": database or str(tmp_path / "events.sqlite3"), **sections.pop("events", {})},
        "stratum": stratum,
        **sections,
    }
    return config_from_dict(data)


async def start_app(nursery: trio.Nursery, node: Any, tmp_path: Any, **kw: Any) -> Any:
    """The dev node and the proxy, both on loopback; returns the App once its record is open."""
    from miningproxy.app import run_app

    node_port = await nursery.start(node.serve, "127.0.0.1", 0)
    app = await nursery.start(run_app, app_config(node_port, tmp_path, **kw))
    with trio.fail_after(30):
        while app.pool.events is None:
            await trio.sleep(0.02)
    return app


def solve_nonce(job: dict[str, Any], weight: float, start: int) -> int:
    from tests.test_stratum_support import solve

    return solve(bytes.fromhex(job["data"]), weight, start)


async def pool_events(port: int, *, timeout: float = 2.0) -> list[dict[str, Any]]:
    """Every event of /pool/event_ws from the start (until it is quiet for ``timeout``)."""
    from trio_websocket import open_websocket_url

    events: list[dict[str, Any]] = []
    async with open_websocket_url(f"ws://127.0.0.1:{port}/pool/event_ws") as ws:
        await ws.send_message(
            json.dumps({"type": "START_STREAM", "last_ack_event_id": None, "window_size": 100_000})
        )
        while True:
            with trio.move_on_after(timeout) as quiet:
                frame = json.loads(await ws.get_message())
            if quiet.cancelled_caught:
                return events
            events.append(frame["event"])
