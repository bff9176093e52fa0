"""The wired event streams, as the app mounts and runs them."""

from __future__ import annotations

import json
from pathlib import Path

import trio
import trio_websocket
from prometheus_client import CollectorRegistry, generate_latest
from test_events_server import NodeClient, http_get, until
from test_events_support import FakeNode, transcript_events

from miningproxy.api.http import HttpRequest, HttpResponse, Router, serve_http
from miningproxy.events.pool_events import recompute_accounting
from miningproxy.events.service import EventsService


async def test_the_service_serves_both_streams(nursery: trio.Nursery, tmp_path: Path) -> None:
    node = FakeNode(transcript_events())
    await node.serve(nursery)
    registry = CollectorRegistry()
    events = EventsService(
        database=str(tmp_path / "ev.sqlite3"),
        nodes=[node.url],
        network="privatenet-fastmine",
        registry=registry,
        backoff_initial=0.02,
        backoff_max=0.1,
    )
    router = Router()
    events.mount(router, version=False)
    port = (await nursery.start(serve_http, router, "127.0.0.1", 0))[0].socket.getsockname()[1]
    await nursery.start(events.run)
    assert events.pool is not None
    events.pool.share_accepted(
        miner="c1", worker="w", address="WX", job_id="j", share_weight=10.0, hash=b"\1" * 32, height=1
    )
    await events.pool.flush()
    await until(lambda: events.node_feed.last_id == 13)

    node_client, pool_client = NodeClient(5), NodeClient(5)
    await node_client.consume(f"ws://127.0.0.1:{port}/event_ws", 13)
    await pool_client.consume(f"ws://127.0.0.1:{port}/pool/event_ws", 1)
    assert node_client.frames == [node.frame(i) for i in range(14)]
    assert recompute_accounting(pool_client.frames)["WX"].work == 1024
    pool_frame = json.loads(pool_client.frames[0])
    assert pool_frame["network"] == "privatenet-fastmine" and pool_frame["peer_id"] != node.identity.peer_id

    status, body = await http_get(port, "/pool/event?size=5")
    assert status == 200 and [e["type"] for e in json.loads(body)["events"]] == [
        "LOAD_STARTED",
        "POOL_SHARE_ACCEPTED",
    ]
    registry.register(_Gauges(events))
    text = generate_latest(registry).decode()
    assert 'miningproxy_events_last_id{stream="node"} 13.0' in text
    assert "miningproxy_events_upstream_streaming 1.0" in text


class _Gauges:
    def __init__(self, events: EventsService) -> None:
        self.events = events

    def collect(self):
        return list(self.events.gauges())


async def test_the_pool_network_is_learned_from_the_node(nursery: trio.Nursery, tmp_path: Path) -> None:
    async def version(request: HttpRequest) -> HttpResponse:
        return HttpResponse.json({"version": "0.69.0", "network": "testnet-hotel"})

    node_router = Router()
    node_router.http("/v1a/version", version)
    node_port = (await nursery.start(serve_http, node_router, "127.0.0.1", 0))[0].socket.getsockname()[1]
    events = EventsService(
        database=str(tmp_path / "ev.sqlite3"),
        nodes=[f"http://127.0.0.1:{node_port}/v1a/"],
        consume_upstream=False,
    )
    router = Router()
    events.mount(router)
    port = (await nursery.start(serve_http, router, "127.0.0.1", 0))[0].socket.getsockname()[1]
    await nursery.start(events.run)
    assert events.pool_feed.identity.network == "testnet-hotel"
    assert json.loads((await http_get(port, "/v1a/version"))[1])["network"] == "testnet-hotel"
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/event_ws") as ws:
        assert json.loads(await ws.get_message())["type"] == "EVENT_WS_NOT_RUNNING"


async def test_the_pool_record_gets_its_found_block_journal(nursery: trio.Nursery, tmp_path: Path) -> None:
    events = EventsService(
        database=str(tmp_path / "ev.sqlite3"), nodes=[], network="privatenet", consume_upstream=False
    )
    await nursery.start(events.run)
    assert events.pool is not None and events.pool.journal is not None
    events.pool.journal_block(b"\xab" * 32, 3, 60.0, "m", "w", "a", "j")
    assert b"ab" * 32 in (tmp_path / "ev.sqlite3-found-blocks").read_bytes()


async def test_a_journal_that_cannot_be_opened_is_logged_counted_and_done_without(
    nursery: trio.Nursery, tmp_path: Path, caplog
) -> None:
    (tmp_path / "ev.sqlite3-found-blocks").mkdir()  # a directory where the file should be
    registry = CollectorRegistry()
    events = EventsService(
        database=str(tmp_path / "ev.sqlite3"),
        nodes=[],
        network="privatenet",
        consume_upstream=False,
        registry=registry,
    )
    await nursery.start(events.run)
    assert events.pool is not None and events.pool.journal is None
    assert "cannot open the found-block journal" in caplog.text
    stream = {"stream": "found-blocks"}
    assert registry.get_sample_value("miningproxy_events_write_errors_total", stream) == 1
    found = events.pool.block_found(
        hash="ab" * 32, height=3, weight=60.0, miner="m", worker="w", address="a", job_id="j"
    )
    await events.pool.wait_durable(found)  # the record itself works as before
