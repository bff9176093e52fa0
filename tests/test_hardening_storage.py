"""The SQLite record on a full or read-only disk: a clear error, counted, no corruption, mining goes on.

The disk is a real 4 MiB tmpfs filled to the last byte when this process may mount one (root, as
on CI); otherwise SQLite's ``max_page_count`` gives the same SQLITE_FULL. A read-only record at
run time is SQLite's ``query_only`` (a filesystem with the database open for writing cannot be
remounted read-only); at start-up it is a real read-only mount.

What must hold while the record cannot be written: shares are refused with Stratum code 20 (not
"invalid solution", and without ban points: it is our disk, not the rig's fault), a rig waiting
for its "ok" to be durable is closed instead of frozen, a block found meanwhile is still submitted
to the node, the proxy stays up; once the disk is writable again, everything recorded meanwhile
(the block's events included) lands, ids contiguous, and PRAGMA integrity_check passes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from miningproxy.devnode.server import DevNode
from miningproxy.devnode.settings import DevNodeSettings
from miningproxy.events.feed import EventFeed
from miningproxy.events.log import EventLog, StoredEvent, StreamIdentity
from miningproxy.events.pool_events import PoolEvents, PoolEventsBusy, open_pool_stream, recompute_accounting
from tests.test_hardening_support import ROOT, free_port, pool_events, solve_nonce, start_app
from tests.test_stratum_server import Client

BLOCK_WEIGHT = 10.0


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "4m"):
    """A small tmpfs at ``path``; None when this process may not mount."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


class Disk:
    """Breaks and heals the record's storage: "disk-full" (tmpfs, else max_page_count) or "read-only"."""

    def __init__(self, mode: str, mount: Path | None) -> None:
        self.mode, self.mount = mode, mount
        self.filler: Path | None = None

    def _sql(self, app: Any, statement: str) -> None:
        log = app.events.log
        with log._write_lock:
            log._write.execute(statement)

    def break_(self, app: Any) -> None:
        if self.mode == "read-only":
            self._sql(app, "PRAGMA query_only=ON")
        elif self.mount is not None:
            self.filler = self.mount / "filler"
            try:  # ENOSPC may come from any write, the flush or the close: the disk is full then
                with open(self.filler, "wb") as f:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        else:
            log = app.events.log
            with log._write_lock:
                pages = log._write.execute("PRAGMA page_count").fetchone()[0]
                log._write.execute(f"PRAGMA max_page_count={pages}")

    def heal(self, app: Any) -> None:
        if self.mode == "read-only":
            self._sql(app, "PRAGMA query_only=OFF")
        elif self.filler is not None:
            self.filler.unlink()
        else:
            self._sql(app, "PRAGMA max_page_count=1073741823")


class Miner:
    """A raw-TCP rig that reconnects when the proxy closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.client: Client | None = None
        self.job: dict[str, Any] | None = None
        self.nonce = int.from_bytes(os.urandom(4), "big") << 32

    async def connect(self) -> None:
        self.client = await Client.connect(self.port)
        self.job = await self.client.subscribe()

    async def share(self, *, block: bool = False) -> dict[str, Any] | None:
        """Submit one share (a block when asked); the reply, or None when the connection closed."""
        if self.client is None:
            await self.connect()
        assert self.client is not None and self.job is not None
        while self.client.jobs:
            self.job = self.client.jobs.pop(0)
        self.nonce = solve_nonce(self.job, BLOCK_WEIGHT if block else self.job["weight"], self.nonce + 1)
        request = {"job_id": self.job["job_id"], "nonce": f"{self.nonce:032x}"}
        try:
            with trio.fail_after(10):
                await self.client.send({"id": self.nonce, "method": "submit", "params": request})
                while True:
                    message = await self.client.line()
                    if message is None:
                        break
                    if message.get("id") == self.nonce:
                        return message
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        await self.client.aclose()
        self.client = None
        return None


def metric(app: Any, name: str, **labels: str) -> float:
    return app.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("mode", ["disk-full", "read-only"])
async def test_a_failing_disk_refuses_shares_keeps_mining_and_loses_nothing(tmp_path, mode):
    with tmpfs(tmp_path / "disk") as mount:
        directory = mount if mode == "disk-full" and mount is not None else tmp_path
        database = directory / "events.sqlite3"
        disk = Disk(mode, mount if mode == "disk-full" else None)
        node = DevNode(DevNodeSettings(block_weight=BLOCK_WEIGHT, min_block_weight=8.0))
        async with trio.open_nursery() as nursery:
            app = await start_app(
                nursery,
                node,
                tmp_path,
                database=str(database),
                stratum={"send_timeout": 1.0, "ban": {"loopback": True, "threshold": 10, "invalid_share": 1}},
            )
            miner = Miner(app.stratum.ports[0])
            oks = 0
            while oks < 3:  # a stale answer (31) only means a share found a block just before
                reply = await miner.share()
                assert reply is not None and (reply.get("result") == "ok" or reply["error"]["code"] == 31), (
                    reply
                )
                oks += reply.get("result") == "ok"

            disk.break_(app)
            refused = 0
            with trio.fail_after(30):
                while refused < 15:  # 15 refusals: a ban at 10 points if they counted as invalid
                    reply = await miner.share()
                    if reply is not None and reply.get("error"):
                        if reply["error"]["code"] == 31:
                            continue  # a share can find a block: the next one may race the new tip
                        assert reply["error"]["code"] == 20, reply
                        refused += 1
            assert app.pool.events.failing is not None
            assert metric(app, "miningproxy_events_write_errors_total", stream="pool") >= 1
            assert (
                metric(app, "miningproxy_shares_total", result="rejected", reason="storage-busy") >= refused
            )
            assert metric(app, "miningproxy_stratum_limit_hits_total", limit="ban") == 0

            # A block found while the record is broken still goes to the node.
            tip = node.chain.tip.hash
            with trio.fail_after(30):
                while node.chain.tip.hash == tip:
                    await miner.share(block=True)
            block_hash = node.chain.tip.hash
            assert node.chain.tip.block.data.startswith(b"hard")

            disk.heal(app)
            with trio.fail_after(30):
                while app.pool.events.failing is not None or app.pool.events.pending:
                    await trio.sleep(0.05)
                while (reply := await miner.share()) is None or reply.get("result") != "ok":
                    pass
            events = await pool_events(app.http_port, timeout=1.0)
            nursery.cancel_scope.cancel()

        # The record: contiguous from 0, and the block found while broken is in it with its fate.
        recompute_accounting(events)
        by_type: dict[str, list[dict[str, Any]]] = {}
        for event in events:
            by_type.setdefault(event["type"], []).append(event["data"])
        hashes = {d["hash"] for d in by_type["POOL_BLOCK_FOUND"]}
        assert block_hash.hex() in hashes
        fates = {
            d["hash"] for d in by_type.get("POOL_BLOCK_ACCEPTED", []) + by_type.get("POOL_BLOCK_REJECTED", [])
        }
        assert block_hash.hex() in fates
        with contextlib.closing(sqlite3.connect(database)) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        with EventLog(database) as log:  # opening verifies both sequences are contiguous
            assert log.bounds("pool").last_id == events[-1]["id"]


def test_an_append_on_a_full_disk_raises_the_disk_error_and_keeps_the_file_intact(tmp_path):
    # Bug fixed: the failed COMMIT had already rolled back, and the explicit ROLLBACK replaced
    # "database or disk is full" with "cannot rollback - no transaction is active".
    with tmpfs(tmp_path / "disk", size="128k") as mount:
        if mount is None:
            pytest.skip("needs a tmpfs mount (root)")
        path = mount / "events.sqlite3"
        identity = StreamIdentity("p", "privatenet", "s")
        with EventLog(path) as log:
            n = 0
            with pytest.raises(sqlite3.OperationalError, match="full"):
                while True:
                    log.append(
                        "pool", [StoredEvent(n, 1.0, "x" * 700)], identity=identity if n == 0 else None
                    )
                    n += 1
            assert log.verify("pool").last_id == n - 1
        with contextlib.closing(sqlite3.connect(path)) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


async def test_block_events_are_never_refused_for_a_full_queue(tmp_path):
    # Bug fixed: with the queue full, block_found raised PoolEventsBusy out of the share check:
    # the block was never submitted (and block_submitted/_record_fate crashed the pool).
    log = EventLog(tmp_path / "events.sqlite3")
    open_pool_stream(log, "privatenet")
    events = PoolEvents(EventFeed(log, "pool"), max_pending=2)  # its writer is not running: stuck
    fields = {"miner": "m", "worker": "w", "address": "a"}
    for _ in range(2):
        events.template_changed(height=1, parent_hash="00", weight=1.0, reward=1, clean=True, node="n")
    with pytest.raises(PoolEventsBusy):
        events.share_accepted(**fields, job_id="j", share_weight=1.0, hash=b"\0" * 32, height=1)
    events.block_found(hash=b"\1" * 32, height=1, weight=1.0, job_id="j", **fields)
    events.block_submitted(hash=b"\1" * 32, height=1, node="n", **fields)
    events.block_accepted(hash=b"\1" * 32, height=1, node="n", **fields)
    assert events.pending == 5
    log.close()


def test_start_up_on_a_read_only_disk_is_a_clear_config_error(tmp_path):
    with tmpfs(tmp_path / "ro", size="1m") as mount:
        if mount is None:
            pytest.skip("needs a tmpfs mount (root)")
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        for database in (mount / "events.sqlite3",):  # (a missing directory there fails in mkdir, same path)
            config = tmp_path / "ro.toml"
            config.write_text(
                f'[upstream]\nnodes = ["http://127.0.0.1:{free_port()}/v1a/"]\n'
                '[pool]\naddress = "WY1URKUnqCTyiixW1Dw29vmeG99hNN4EW6"\n'
                f'[http]\nlisten = "127.0.0.1:0"\n[stratum]\nlisten = "127.0.0.1:0"\n'
                f"[events]\ndatabase = {json.dumps(str(database))}\n"
            )
            proc = subprocess.run(
                [sys.executable, "-m", "miningproxy.cli", "run", "--config", str(config)],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=ROOT,
            )
            assert proc.returncode == 2, proc.stderr
            assert "config error: events.database: cannot open" in proc.stderr
            assert "Traceback" not in proc.stderr
