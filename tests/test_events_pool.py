"""The pool's own event stream: identity, group commit, exact accounting, crash safety."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio
import trio_websocket
from test_events_server import NodeClient

from miningproxy.api.http import Router, serve_http
from miningproxy.events.feed import EventFeed
from miningproxy.events.log import EventLog, IdentityMismatch
from miningproxy.events.pool_events import (
    AccountingError,
    PoolEvents,
    PoolEventsBusy,
    open_pool_stream,
    recompute_accounting,
)
from miningproxy.events.server import EventStreamServer


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "events.sqlite3"


def test_the_stream_is_created_once_with_load_started(path: Path) -> None:
    with EventLog(path) as log:
        identity = open_pool_stream(log, "privatenet", clock=lambda: 1234.5)
        assert len(identity.peer_id) == 64 and int(identity.peer_id, 16) >= 0
        assert log.read("pool", 0, 5) == [
            (0, '{"id":0,"timestamp":1234.5,"type":"LOAD_STARTED","data":{},"group_id":null}')
        ]
    with EventLog(path) as log:
        assert open_pool_stream(log, "privatenet") == identity  # made once, kept
        assert log.bounds("pool").last_id == 0
        assert log.get_meta("proxy.peer_id") == identity.peer_id
        with pytest.raises(IdentityMismatch, match="network=privatenet"):
            open_pool_stream(log, "mainnet")


async def test_record_assigns_ids_at_once_and_commits_in_order(path: Path, nursery: trio.Nursery) -> None:
    with EventLog(path) as log:
        open_pool_stream(log, "privatenet")
        feed = EventFeed(log, "pool")
        events = PoolEvents(feed, clock=lambda: 7.0)
        ids = [events.miner_connected(miner="c1", worker="rig1", address="WAddr", peer="1.2.3.4:5")]
        await nursery.start(events.run)
        ids.append(
            events.share_accepted(
                miner="c1",
                worker="rig1",
                address="WAddr",
                job_id="j" * 32,
                share_weight=20.5,
                hash=bytes(32),
                height=9,
            )
        )
        ids.append(
            events.block_rejected(
                hash="ab" * 32,
                height=9,
                miner="c1",
                worker="rig1",
                address="WAddr",
                node="http://n/v1a/",
                status="stale",
                reason="not the tip",
            )
        )
        assert ids == [1, 2, 3]
        await events.wait_durable(3)
        assert feed.last_id == 3
        texts = [text for _, text in log.read("pool", 1, 10)]
        assert json.loads(texts[1]) == {
            "id": 2,
            "timestamp": 7.0,
            "type": "POOL_SHARE_ACCEPTED",
            "data": {
                "miner": "c1",
                "worker": "rig1",
                "address": "WAddr",
                "job_id": "j" * 32,
                "share_weight": 20.5,
                "work": str(math.floor(0.5 + 2**20.5)),
                "hash": "00" * 32,
                "height": 9,
            },
            "group_id": None,
        }
        assert json.loads(texts[2])["data"]["status"] == "stale"


async def test_shares_recorded_while_the_writer_idles_or_writes_are_all_committed(
    path: Path, nursery: trio.Nursery
) -> None:
    # The share event wakes the writer only when nothing was pending: the writer waits for
    # work only then. Shares recorded to an idle writer, and while it writes, all get to disk.
    # (No sleeps: the writer parks on its wake-up event in the step that started it, and in the
    # step that committed the last batch, before the task waiting for that batch runs again.)
    def share(n: int) -> int:
        return events.share_accepted(
            miner="c1", worker="rig1", address="WAddr", job_id=f"{n:032x}", share_weight=1.0,
            hash=bytes(32), height=9,
        )  # fmt: skip

    with EventLog(path) as log:
        open_pool_stream(log, "privatenet")
        feed = EventFeed(log, "pool")
        events = PoolEvents(feed, clock=lambda: 7.0, max_batch=3)
        await nursery.start(events.run)
        for count in (1, 7, 1):  # 7: more than a batch, recorded while the writer writes
            assert events.pending == 0  # the writer idles, waiting for work
            ids = [share(n) for n in range(count)]
            with trio.fail_after(10):
                await events.wait_durable(ids[-1])
            assert feed.last_id == ids[-1]
            assert [event_id for event_id, _ in log.read("pool", ids[0], 10)] == ids


async def test_a_stuck_disk_is_reported_not_buffered_forever(path: Path) -> None:
    with EventLog(path) as log:
        open_pool_stream(log, "privatenet")
        events = PoolEvents(EventFeed(log, "pool"), max_pending=3)  # run() never started: nothing commits
        for _ in range(3):
            events.upstream_changed(node="a", previous=None)
        with pytest.raises(PoolEventsBusy):
            events.upstream_changed(node="b", previous="a")
        with pytest.raises(ValueError):
            events.record("POOL_SOMETHING", {})


def test_accounting_refuses_an_incomplete_record() -> None:
    with pytest.raises(AccountingError, match="expected event 1, got 2"):
        recompute_accounting(
            [{"id": 0, "type": "LOAD_STARTED", "data": {}}, {"id": 2, "type": "LOAD_STARTED"}]
        )


async def test_a_payout_reader_recomputes_every_address_exactly(path: Path, nursery: trio.Nursery) -> None:
    """Shares and blocks from many concurrent miners, read back from /pool/event_ws from id 0."""
    rng = random.Random(5)
    addresses = [f"W{'abcdefgh'[i]}{'x' * 32}" for i in range(6)]
    truth: dict[str, dict[str, int]] = {
        a: {"shares": 0, "work": 0, "found": 0, "accepted": 0, "rejected": 0} for a in addresses
    }
    with EventLog(path) as log:
        open_pool_stream(log, "privatenet")
        feed = EventFeed(log, "pool")
        events = PoolEvents(feed, max_batch=37)
        await nursery.start(events.run)

        async def miner(n: int) -> None:
            address = addresses[n % len(addresses)]
            worker = f"rig{n}"
            events.miner_connected(miner=f"c{n}", worker=worker, address=address)
            for k in range(120):
                weight = rng.uniform(8.0, 60.0)
                event_id = events.share_accepted(
                    miner=f"c{n}",
                    worker=worker,
                    address=address,
                    job_id=f"{k:032x}",
                    share_weight=weight,
                    hash=rng.randbytes(32),
                    height=k,
                )
                truth[address]["shares"] += 1
                truth[address]["work"] += math.floor(0.5 + 2**weight)  # exact integers, no float sums
                if k % 29 == 0:
                    block = rng.randbytes(32)
                    events.block_found(
                        hash=block,
                        height=k,
                        weight=weight,
                        miner=f"c{n}",
                        worker=worker,
                        address=address,
                        job_id=f"{k:032x}",
                    )
                    events.block_submitted(
                        hash=block, height=k, miner=f"c{n}", worker=worker, address=address, node="n"
                    )
                    truth[address]["found"] += 1
                    if k % 58 == 0:
                        events.block_accepted(
                            hash=block, height=k, miner=f"c{n}", worker=worker, address=address, node="n"
                        )
                        truth[address]["accepted"] += 1
                    else:
                        events.block_rejected(
                            hash=block,
                            height=k,
                            miner=f"c{n}",
                            worker=worker,
                            address=address,
                            node="n",
                            status="rejected",
                            reason="weight too low",
                        )
                        truth[address]["rejected"] += 1
                if k % 10 == 0:
                    await events.wait_durable(event_id)  # what the rig is told is on disk first
                await trio.sleep(0)
            events.miner_disconnected(miner=f"c{n}", worker=worker, address=address, reason="bye")

        async with trio.open_nursery() as miners:
            for n in range(12):
                miners.start_soon(miner, n)
        await events.flush()

        router = Router()
        router.websocket("/pool/event_ws", EventStreamServer(feed).handle)
        listeners = await nursery.start(serve_http, router, "127.0.0.1", 0)
        url = f"ws://127.0.0.1:{listeners[0].socket.getsockname()[1]}/pool/event_ws"
        for window in (1000, 1):
            client = NodeClient(window)
            await client.consume(url, feed.last_id)
            assert list(client.processed) == list(range(feed.last_id + 1))
            accounts = recompute_accounting(client.frames)
            assert {
                a: {
                    "shares": acc.shares,
                    "work": acc.work,
                    "found": acc.blocks_found,
                    "accepted": acc.blocks_accepted,
                    "rejected": acc.blocks_rejected,
                }
                for a, acc in accounts.items()
            } == truth
            assert accounts[addresses[0]].workers == {"rig0", "rig6"}
            frame = json.loads(client.frames[0])
            assert (frame["peer_id"], frame["stream_id"]) == (feed.identity.peer_id, feed.identity.stream_id)
            assert frame["network"] == "privatenet" and frame["event"]["type"] == "LOAD_STARTED"


# --- crash safety -----------------------------------------------------------------------------------

_POOL_WRITER = textwrap.dedent(
    """
    import sys, trio
    from miningproxy.events.feed import EventFeed
    from miningproxy.events.log import EventLog
    from miningproxy.events.pool_events import PoolEvents, open_pool_stream

    async def main():
        log = EventLog(sys.argv[1])
        open_pool_stream(log, "privatenet")
        events = PoolEvents(EventFeed(log, "pool"), max_batch=25)
        async with trio.open_nursery() as nursery:
            await nursery.start(events.run)

            async def rig(n):
                k = 0
                while True:
                    k += 1
                    event_id = events.share_accepted(miner=f"c{n}", worker="w", address=f"W{n}", job_id="j",
                                                     share_weight=10.0 + n, hash=bytes(32), height=k)
                    await events.wait_durable(event_id)
                    print(event_id, n, flush=True)  # the rig is told: accepted

            for n in range(4):
                nursery.start_soon(rig, n)

    trio.run(main)
    """
)


def test_sigkill_of_the_pool_writer_loses_no_acknowledged_share(path: Path) -> None:
    acknowledged: dict[int, int] = {}
    for round_ in range(2):
        child = subprocess.Popen(
            [sys.executable, "-c", _POOL_WRITER, str(path)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        )
        assert child.stdout is not None
        for count, line in enumerate(child.stdout):
            event_id, rig = map(int, line.split())
            acknowledged[event_id] = rig
            if count >= 150 + 100 * round_:
                break
        child.send_signal(signal.SIGKILL)
        child.wait()
        for line in child.stdout:
            event_id, rig = map(int, line.split())
            acknowledged[event_id] = rig
        with EventLog(path) as log:
            bounds = log.verify("pool")
            assert bounds is not None and bounds.first_id == 0
            rows = dict(log.read("pool", 0, bounds.last_id + 1))
            assert set(acknowledged) <= set(rows)  # every acknowledged share is in the record
            for event_id, rig in acknowledged.items():
                assert json.loads(rows[event_id])["data"]["address"] == f"W{rig}"
            recompute_accounting(json.loads(rows[i]) for i in range(bounds.last_id + 1))  # no gap


async def test_pool_event_ws_is_running_from_the_start(path: Path, nursery: trio.Nursery) -> None:
    with EventLog(path) as log:
        open_pool_stream(log, "privatenet")
        router = Router()
        router.websocket("/pool/event_ws", EventStreamServer(EventFeed(log, "pool")).handle)
        listeners = await nursery.start(serve_http, router, "127.0.0.1", 0)
        port = listeners[0].socket.getsockname()[1]
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/pool/event_ws") as ws:
            await ws.send_message(json.dumps({"type": "START_STREAM", "window_size": 1}))
            assert json.loads(await ws.get_message())["event"]["id"] == 0
