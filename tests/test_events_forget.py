"""A relayed node sequence can be forgotten whole (the embedded dev node's chain dies with it)."""

from __future__ import annotations

import trio

from miningproxy.app import run_app
from miningproxy.config import config_from_dict
from miningproxy.events.log import EventLog, StoredEvent, StreamIdentity
from tests.hathor_vectors import PRIVATENET_ADDRESS

A = StreamIdentity("peer", "privatenet", "stream-a")
B = StreamIdentity("peer", "privatenet", "stream-b")


def test_forget_drops_events_and_identity_of_one_sequence_only(tmp_path):
    with EventLog(tmp_path / "e.sqlite3") as log:
        log.append("node", [StoredEvent(i, 0.0, f'{{"id":{i}}}') for i in range(5)], identity=A)
        log.append("pool", [StoredEvent(0, 0.0, '{"id":0}')], identity=B)
        assert log.forget("node") == 5
        assert log.bounds("node") is None and log.identity("node") is None
        assert log.identity("pool") == B and log.bounds("pool").last_id == 0
        # A new sequence (another stream) may now start from 0.
        log.append("node", [StoredEvent(0, 0.0, '{"id":0}')], identity=B)
    with EventLog(tmp_path / "e.sqlite3") as log:
        assert log.identity("node") == B


async def test_each_devnet_run_relays_its_new_dev_node_and_keeps_the_pool_record(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        node_port = s.getsockname()[1]
    data = {
        "devnode": {
            "enabled": True,
            "listen": f"127.0.0.1:{node_port}",
            "block_weight": 10.0,
            "min_weight": 8.0,
        },
        "upstream": {"nodes": [f"http://127.0.0.1:{node_port}/v1a/"], "backoff_initial": 0.1},
        "pool": {"address": PRIVATENET_ADDRESS},
        "http": {"listen": "127.0.0.1:0"},
        "stratum": {"listen": "127.0.0.1:0"},
        "events": {"database": str(tmp_path / "events.sqlite3")},
    }
    pool_ids = []
    for _ in range(2):
        async with trio.open_nursery() as nursery:
            app = await nursery.start(run_app, config_from_dict(data))
            with trio.fail_after(30):
                while app.events.consumer.state != "streaming" or (app.events.pool_feed.last_id or 0) < (
                    pool_ids[-1] + 1 if pool_ids else 1
                ):
                    await trio.sleep(0.05)
            pool_ids.append(app.events.pool_feed.last_id)
            assert app.events.node_feed.first_id == 0  # the new dev node's own sequence from 0
            nursery.cancel_scope.cancel()
    assert pool_ids[1] > pool_ids[0]  # the pool's record carried over
