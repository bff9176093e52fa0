"""SIGTERM and SIGKILL of the proxy mid-stream, then a restart on the same record.

The proxy runs as `miningproxy run` in a child process against a dev node that outlives it (in
this process), with a raw-TCP rig pipelining shares when the signal lands. After the restart:

- every share the rig was told "ok" about is in /pool/event_ws (no acknowledged event lost);
- the ids run 0, 1, 2, ... without a gap or a repeat across both runs (no id duplicated);
- every POOL_BLOCK_FOUND has a fate (POOL_BLOCK_ACCEPTED/REJECTED) once the restarted proxy has
  settled what the killed one left open (miningproxy/pool/recovery.py): no block reported found
  and then forgotten. A separate test drives that recovery with each kind of answer from the node.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio

from hashing.header import HeaderHasher
from miningproxy.devnode.chain import SubmitResult
from miningproxy.devnode.server import DevNode
from miningproxy.devnode.settings import DevNodeSettings
from miningproxy.events.feed import EventFeed
from miningproxy.events.log import EventLog
from miningproxy.events.pool_events import PoolEvents, open_pool_stream, recompute_accounting
from miningproxy.pool.recovery import (
    judge_from_chain,
    judge_from_tx,
    settle_unfinished_blocks,
    unsettled_blocks,
)
from tests.hathor_vectors import PRIVATENET_ADDRESS
from tests.test_hardening_support import ROOT, free_port, pool_events, solve_nonce, start_app
from tests.test_stratum_server import Client

BLOCK_WEIGHT = 11.0


def proxy_config(tmp_path: Path, node_port: int) -> tuple[Path, int, int]:
    http_port, stratum_port = free_port(), free_port()
    config = tmp_path / "proxy.toml"
    config.write_text(
        f"""
[upstream]
nodes = ["http://127.0.0.1:{node_port}/v1a/"]
backoff_initial = 0.1
backoff_max = 0.5
[pool]
address = "{PRIVATENET_ADDRESS}"
tag = "kill"
[http]
listen = "127.0.0.1:{http_port}"
[stratum]
listen = "127.0.0.1:{stratum_port}"
shutdown_grace = 0.5
[stratum.vardiff]
initial_weight = 5.0
min_weight = 1.0
max_weight = 7.0
[events]
database = "{tmp_path / "events.sqlite3"}"
[log]
level = "info"
"""
    )
    return config, http_port, stratum_port


class Proxy:
    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.proc: trio.Process | None = None
        self.runs = 0

    async def start(self) -> None:
        self.runs += 1
        out = open(self.log.with_suffix(f".{self.runs}.log"), "w")  # noqa: SIM115 (the child owns it)
        self.proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "miningproxy.cli", "run", "--config", str(self.config)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        with trio.fail_after(60):
            while "miningproxy is running" not in self.output():
                assert self.proc.poll() is None, self.output()
                await trio.sleep(0.05)

    def output(self) -> str:
        return self.log.with_suffix(f".{self.runs}.log").read_text()

    async def stop(self, signum: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(signum)
        with trio.fail_after(30):
            return await self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()


class PipeliningRig:
    """Mines and keeps `depth` shares in flight; remembers the hash of every share told "ok"."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.acked: set[str] = set()
        self.sent: dict[int, str] = {}
        self.nonce = int.from_bytes(os.urandom(4), "big") << 40

    async def run(self, depth: int = 8) -> None:
        client = await Client.connect(self.port)
        while True:  # "10 node syncing" until the restarted proxy knows the node's network
            reply = await client.call("subscribe", {"address": PRIVATENET_ADDRESS})
            if reply.get("result") == "ok":
                break
            assert reply["error"]["code"] == 10, reply
            await trio.sleep(0.1)
        job = await client.job()
        in_flight = 0
        try:
            while True:
                while client.jobs:
                    job = client.jobs.pop(0)
                while in_flight < depth:
                    self.nonce = solve_nonce(job, job["weight"], self.nonce + 1)
                    digest = HeaderHasher(bytes.fromhex(job["data"])).hash_nonce(self.nonce).hex()
                    self.sent[self.nonce] = digest
                    params = {"job_id": job["job_id"], "nonce": f"{self.nonce:032x}"}
                    await client.send({"id": self.nonce, "method": "submit", "params": params})
                    in_flight += 1
                message = await client.line()
                if message is None:
                    return  # the proxy went away
                if "method" not in message and message.get("id") in self.sent:
                    in_flight -= 1
                    if message.get("result") == "ok":
                        self.acked.add(self.sent[message["id"]])
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return


def check_record(events: list[dict[str, Any]], acked: set[str]) -> None:
    ids = [e["id"] for e in events]
    assert ids == list(range(len(ids))), "the record has a gap or a repeated id"
    recompute_accounting(events)
    assert [e["type"] for e in events].count("LOAD_STARTED") == 1
    shares = Counter(e["data"]["hash"] for e in events if e["type"] == "POOL_SHARE_ACCEPTED")
    assert not acked - set(shares), f"{len(acked - set(shares))} acknowledged shares are not in the record"
    assert all(n == 1 for n in shares.values()), "a share was recorded twice"


def open_blocks(events: list[dict[str, Any]]) -> set[str]:
    found = {e["data"]["hash"] for e in events if e["type"] == "POOL_BLOCK_FOUND"}
    settled = {
        e["data"]["hash"] for e in events if e["type"] in ("POOL_BLOCK_ACCEPTED", "POOL_BLOCK_REJECTED")
    }
    return found - settled


async def restarted_and_settled(proxy: Proxy, http_port: int) -> list[dict[str, Any]]:
    """Start the proxy again; its record once every block found has a fate."""
    await proxy.start()
    with trio.fail_after(60):
        while open_blocks(events := await pool_events(http_port, timeout=0.5)):
            await trio.sleep(0.2)
    return events


async def kill_and_restart(tmp_path: Path, signals: list[int]) -> None:
    node = DevNode(DevNodeSettings(block_weight=BLOCK_WEIGHT, min_block_weight=8.0))
    async with trio.open_nursery() as nursery:
        node_port = await nursery.start(node.serve, "127.0.0.1", 0)
        config, http_port, stratum_port = proxy_config(tmp_path, node_port)
        proxy = Proxy(config, tmp_path / "proxy")
        acked: set[str] = set()
        try:
            for signum in signals:
                await proxy.start()
                rig = PipeliningRig(stratum_port)
                before = {b.hash.hex() for b in node.chain.blocks}
                with trio.fail_after(90):
                    async with trio.open_nursery() as mining:
                        mining.start_soon(rig.run)  # returns when the proxy closes the connection
                        # Until the rig holds an "ok" for a share that is a block: that "ok" waits
                        # for the block's record, as for any share. (A kill before the record is
                        # committed: the test after this one.)
                        while len(rig.acked) < 40 or not rig.acked & (
                            {b.hash.hex() for b in node.chain.blocks} - before
                        ):
                            await trio.sleep(0.01)
                        code = await proxy.stop(signum)  # mid-stream: shares are in flight
                acked |= rig.acked
                if signum == signal.SIGTERM:
                    assert code == 0, proxy.output()
                    assert "stopped" in proxy.output()
                else:
                    assert code == -signal.SIGKILL
            events = await restarted_and_settled(proxy, http_port)
            check_record(events, acked)
            assert any(e["type"] == "POOL_BLOCK_FOUND" for e in events)
            in_chain = {b.hash.hex() for b in node.chain.blocks}
            for event in events:
                if event["type"] == "POOL_BLOCK_ACCEPTED":
                    assert event["data"]["hash"] in in_chain
        finally:
            proxy.kill()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
async def test_a_signal_mid_stream_loses_no_acknowledged_share_and_no_block(tmp_path, signum):
    await kill_and_restart(tmp_path, [signum])


@pytest.mark.slow
async def test_repeated_kills_and_restarts(tmp_path):
    await kill_and_restart(
        tmp_path, [signal.SIGKILL, signal.SIGTERM, signal.SIGKILL, signal.SIGKILL, signal.SIGTERM]
    )


async def test_a_proxy_killed_the_moment_the_node_takes_its_block_still_records_the_block(tmp_path):
    # The dev node SIGKILLs the proxy as it stores a block from it: the block has left the proxy
    # a moment ago and its POOL_BLOCK_FOUND is not committed yet (the commit comes ms later). The
    # found-block journal has it, so the restarted proxy records it, and settles it as accepted.
    node = DevNode(DevNodeSettings(block_weight=BLOCK_WEIGHT, min_block_weight=8.0))
    taken: list[str] = []  # blocks the node stored just before killing the proxy
    submit = node.chain.submit

    def submit_then_kill(data: bytes, now: int) -> SubmitResult:
        result = submit(data, now)
        if result.accepted and proxy.proc is not None and proxy.proc.poll() is None:
            proxy.proc.kill()
            assert result.block_hash is not None
            taken.append(result.block_hash.hex())
        return result

    node.chain.submit = submit_then_kill  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        node_port = await nursery.start(node.serve, "127.0.0.1", 0)
        config, http_port, stratum_port = proxy_config(tmp_path, node_port)
        proxy = Proxy(config, tmp_path / "proxy")
        acked: set[str] = set()
        try:
            for kill in (1, 2):
                await proxy.start()
                rig = PipeliningRig(stratum_port)
                with trio.fail_after(90):
                    async with trio.open_nursery() as mining:
                        mining.start_soon(rig.run)  # returns when the proxy goes away
                        assert proxy.proc is not None
                        assert await proxy.proc.wait() == -signal.SIGKILL
                assert len(taken) == kill
                acked |= rig.acked
            events = await restarted_and_settled(proxy, http_port)
        finally:
            proxy.kill()
        nursery.cancel_scope.cancel()
    check_record(events, acked)
    found = [e["data"]["hash"] for e in events if e["type"] == "POOL_BLOCK_FOUND"]
    accepted = {e["data"]["hash"] for e in events if e["type"] == "POOL_BLOCK_ACCEPTED"}
    assert set(taken) <= set(found), "a block the node took is missing from the record"
    assert len(found) == len(set(found)), "a block was recorded twice"
    assert set(taken) <= accepted
    assert accepted <= {b.hash.hex() for b in node.chain.blocks}


# --- settling blocks a stopped proxy left open -------------------------------------------------------


def found_event(event_id: int, block_hash: str, height: int) -> str:
    data = {
        "hash": block_hash,
        "height": height,
        "weight": 10.0,
        "miner": "m",
        "worker": "w",
        "address": "a",
        "job_id": "j",
    }
    return json.dumps(
        {"id": event_id, "timestamp": 1.0, "type": "POOL_BLOCK_FOUND", "data": data, "group_id": None}
    )


def test_unsettled_blocks_are_the_found_ones_without_a_fate():
    accepted = json.dumps({"id": 3, "type": "POOL_BLOCK_ACCEPTED", "data": {"hash": "aa"}})
    rows = [(1, found_event(1, "aa", 5)), (2, found_event(2, "bb", 6)), (3, accepted), (4, '{"type":"X"}')]
    assert [b.hash for b in unsettled_blocks(rows)] == ["bb"]


def test_the_fate_from_each_kind_of_node_answer():
    (block,) = unsettled_blocks([(1, found_event(1, "aa", 5))])
    assert judge_from_tx(block, {"success": True, "meta": {"voided_by": []}})[0] == "accepted"
    assert judge_from_tx(block, {"success": True, "meta": {"voided_by": ["aa"]}})[0] == "stale"
    assert judge_from_tx(block, {"success": False, "message": "Transaction not found"})[0] == "error"
    assert judge_from_tx(block, {"success": False, "message": "wallet index is disabled"}) is None
    assert judge_from_tx(block, None) is None
    assert judge_from_chain(block, [(4, "xx"), (5, "aa"), (6, "yy")])[0] == "accepted"
    assert judge_from_chain(block, [(4, "xx"), (5, "zz")])[0] == "stale"
    assert judge_from_chain(block, [(10, "xx"), (11, "zz")]) is None
    assert judge_from_chain(block, []) is None


async def test_a_restarted_proxy_settles_the_blocks_the_stopped_one_left_open(tmp_path):
    # The record of a proxy killed between POOL_BLOCK_FOUND and the block's fate: the genesis
    # block (the node's chain has it: accepted), another block at height 0 (stale: the chain has
    # genesis there), and one far above the node's status window (unknown: recorded as error).
    node = DevNode(DevNodeSettings(block_weight=10.0, min_block_weight=8.0))
    genesis = node.chain.blocks[0].hash.hex()
    database = tmp_path / "events.sqlite3"
    with EventLog(database) as log:
        open_pool_stream(log, "privatenet")
        events = PoolEvents(EventFeed(log, "pool"))
        fields = {"weight": 10.0, "miner": "m", "worker": "w", "address": "a", "job_id": "j"}
        events.block_found(hash=genesis, height=0, **fields)
        events.block_found(hash="11" * 32, height=0, **fields)
        events.block_found(hash="22" * 32, height=10_000, **fields)
        events.block_found(hash="33" * 32, height=1, **fields)
        events.block_rejected(
            hash="33" * 32, height=1, miner="m", worker="w", address="a", node="n", status="stale", reason="r"
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(events.run)
            await events.flush()
            nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        app = await start_app(nursery, node, tmp_path, database=str(database))
        with trio.fail_after(30):
            while open_blocks(record := await pool_events(app.http_port, timeout=0.3)):
                await trio.sleep(0.1)
        fates = {
            e["data"]["hash"]: (e["type"], e["data"].get("status"))
            for e in record
            if e["type"] in ("POOL_BLOCK_ACCEPTED", "POOL_BLOCK_REJECTED") and e["id"] > 5
        }
        assert fates == {
            genesis: ("POOL_BLOCK_ACCEPTED", None),
            "11" * 32: ("POOL_BLOCK_REJECTED", "stale"),
            "22" * 32: ("POOL_BLOCK_REJECTED", "error"),
        }
        assert app.metrics.registry.get_sample_value("miningproxy_blocks_total", {"result": "recovered"}) == 3
        # Blocks this run finds are not the previous run's business: nothing is settled twice.
        assert await settle_unfinished_blocks(app.pool, [], upto=app.events.pool_feed.last_id) == 0
        nursery.cancel_scope.cancel()
    check_record(record, set())


async def test_no_rig_is_served_before_the_record_is_open(tmp_path, monkeypatch):
    # Bug fixed: rigs could subscribe as soon as the node's network was known, before the pool's
    # record was open; their shares were told "ok" and never recorded. Here the record opens
    # slowly, and a rig retrying its subscribe is only served once it is open.
    from miningproxy.events.service import EventsService

    slow_open = EventsService._pool_network

    async def slow(self):
        await trio.sleep(0.5)
        return await slow_open(self)

    monkeypatch.setattr(EventsService, "_pool_network", slow)
    node = DevNode(DevNodeSettings(block_weight=10.0, min_block_weight=8.0))
    async with trio.open_nursery() as nursery:
        from miningproxy.app import run_app
        from tests.test_hardening_support import app_config

        node_port = await nursery.start(node.serve, "127.0.0.1", 0)
        app = await nursery.start(run_app, app_config(node_port, tmp_path))
        client = await Client.connect(app.stratum.ports[0])
        with trio.fail_after(30):
            while (await client.call("subscribe", {"address": PRIVATENET_ADDRESS})).get("result") != "ok":
                assert app.pool.events is None
                await trio.sleep(0.02)
        assert app.pool.events is not None
        nursery.cancel_scope.cancel()
