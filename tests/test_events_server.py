"""The proxy's /event_ws and GET /v1a/event, end to end: fake node -> consumer -> log -> server -> client."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import trio.testing
import trio_websocket
from test_events_support import FakeNode, node_dumps, synthetic_events, transcript_events

from miningproxy.api.http import HttpRequest, Router, serve_http, serve_http_stream
from miningproxy.events.feed import EventFeed
from miningproxy.events.log import EventLog, StoredEvent, StreamIdentity
from miningproxy.events.metrics import EventMetrics
from miningproxy.events.server import EventHttpApi, EventStreamServer
from miningproxy.events.upstream import NodeEventConsumer


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.005)


class Proxy:
    """The event part of the proxy: a log, its node feed, the consumer and the HTTP front."""

    def __init__(self, log: EventLog, node: FakeNode | None, metrics: EventMetrics | None = None) -> None:
        self.feed = EventFeed(log, "node")
        self.node = node
        self.metrics = metrics or EventMetrics()
        self.server = EventStreamServer(self.feed, metrics=self.metrics)
        self.router = Router()
        for path in ("/event_ws", "/v1a/event_ws"):
            self.router.websocket(path, self.server.handle)
        self.router.http("/v1a/event", EventHttpApi(self.feed).handle)
        self.port = 0

    async def start(self, nursery: trio.Nursery) -> None:
        if self.node is not None:
            upstream = NodeEventConsumer(
                self.feed, [self.node.url], window_size=50, backoff_initial=0.02, backoff_max=0.1
            )
            nursery.start_soon(upstream.run)
        listeners = await nursery.start(serve_http, self.router, "127.0.0.1", 0)
        self.port = listeners[0].socket.getsockname()[1]

    def ws(self, path: str = "/v1a/event_ws") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"


@pytest.fixture
def log(tmp_path: Path):
    with EventLog(tmp_path / "events.sqlite3") as event_log:
        yield event_log


async def synced(
    nursery: trio.Nursery, log: EventLog, events: list[dict[str, Any]]
) -> tuple[FakeNode, Proxy]:
    node = FakeNode(events)
    await node.serve(nursery)
    proxy = Proxy(log, node)
    await proxy.start(nursery)
    await until(lambda: proxy.feed.last_id == len(events) - 1)
    return node, proxy


class NodeClient:
    """A client written for the node's event queue, like the wallet-service daemon's: it keeps the id
    of the last event it processed, acknowledges each event, and drops events it already has."""

    def __init__(self, window: int = 1) -> None:
        self.window = window
        self.processed: dict[int, dict[str, Any]] = {}
        self.frames: list[str] = []
        self.last: int | None = None

    async def consume(self, url: str, until_id: int, *, start: int | None = None, ack_every: int = 1) -> None:
        self.last = start
        async with trio_websocket.open_websocket_url(url) as ws:
            await ws.send_message(
                json.dumps({"type": "START_STREAM", "last_ack_event_id": start, "window_size": self.window})
            )
            count = 0
            while self.last is None or self.last < until_id:
                message = await ws.get_message()
                self.frames.append(message)
                frame = json.loads(message)
                assert frame["type"] == "EVENT", frame
                event = frame["event"]
                if self.last is not None and event["id"] <= self.last:
                    continue  # a duplicate (the node re-sends after early ACKs)
                self.processed[event["id"]] = event
                self.last = event["id"]
                count += 1
                if count % ack_every == 0 or self.last == until_id:
                    await ws.send_message(
                        json.dumps({"type": "ACK", "ack_event_id": self.last, "window_size": self.window})
                    )


# --- a node client through the proxy ------------------------------------------------------------------


@pytest.mark.parametrize("window", [1, 5, 1000])
async def test_a_node_client_gets_the_same_results_through_the_proxy(
    nursery: trio.Nursery, log: EventLog, window: int
) -> None:
    events = synthetic_events(150)
    node, proxy = await synced(nursery, log, events)
    last = len(events) - 1
    direct, relayed = NodeClient(window), NodeClient(window)
    await direct.consume(f"ws://127.0.0.1:{node.port}/v1a/event_ws", last)
    await relayed.consume(proxy.ws(), last)
    assert relayed.processed == direct.processed
    assert list(relayed.processed) == list(range(len(events)))
    # Byte for byte: every frame is the one the node sends for that event (the node's latest id).
    assert relayed.frames == [node.frame(i) for i in range(len(events))]
    ids = [json.loads(f)["event"]["id"] for f in relayed.frames]
    assert len(ids) == len(set(ids))  # never twice (the node itself re-sends at window > 1)


@pytest.mark.parametrize("window", [1, 1000])
async def test_replay_from_an_id(nursery: trio.Nursery, log: EventLog, window: int) -> None:
    events = synthetic_events(40)
    node, proxy = await synced(nursery, log, events)
    client = NodeClient(window)
    await client.consume(proxy.ws("/event_ws"), len(events) - 1, start=41)
    assert client.frames == [node.frame(i) for i in range(42, len(events))]


async def test_the_transcript_session_through_the_proxy(nursery: trio.Nursery, log: EventLog) -> None:
    """The real node's window-1 session, replayed against the proxy: the same frames back."""
    from test_events_support import transcript

    events = transcript_events()
    node, proxy = await synced(nursery, log, events)
    async with trio_websocket.open_websocket_url(proxy.ws()) as ws:
        for entry in transcript("event_ws-window1.jsonl"):
            if entry["dir"] == "send":
                await ws.send_message(json.dumps(entry["frame"]))
            elif entry["dir"] == "recv":
                assert await ws.get_message() == node_dumps(entry["frame"])


async def test_live_events_reach_connected_clients(nursery: trio.Nursery, log: EventLog) -> None:
    events = synthetic_events(10)
    node, proxy = await synced(nursery, log, events[:20])
    clients = [NodeClient(10) for _ in range(3)]
    async with trio.open_nursery() as inner:
        for client in clients:
            inner.start_soon(client.consume, proxy.ws(), len(events) - 1)
        await trio.sleep(0.1)
        for event in events[20:]:
            node.broadcast(event)
    for client in clients:
        assert list(client.processed) == list(range(len(events)))


async def test_client_requests_errors_and_pause(nursery: trio.Nursery, log: EventLog) -> None:
    events = transcript_events()
    _, proxy = await synced(nursery, log, events)
    async with trio_websocket.open_websocket_url(proxy.ws()) as ws:

        async def request(obj: Any) -> dict[str, Any]:
            await ws.send_message(obj if isinstance(obj, str) else json.dumps(obj))
            return json.loads(await ws.get_message())

        assert (await request({"type": "ACK", "ack_event_id": 0, "window_size": 1}))[
            "type"
        ] == "STREAM_IS_INACTIVE"
        assert (await request({"type": "STOP_STREAM"}))["type"] == "STREAM_IS_INACTIVE"
        bad = await request("{oops")
        assert bad["type"] == "VALIDATION_ERROR" and bad["invalid_request"] == "{oops"
        assert (await request({"type": "START_STREAM", "last_ack_event_id": None, "window_size": 2}))[
            "event"
        ]["id"] == 0
        assert json.loads(await ws.get_message())["event"]["id"] == 1
        assert (await request({"type": "START_STREAM", "window_size": 2}))["type"] == "STREAM_IS_ACTIVE"
        assert (await request({"type": "ACK", "ack_event_id": 2, "window_size": 2}))[
            "type"
        ] == "ACK_TOO_LARGE"
        await ws.send_message(json.dumps({"type": "ACK", "ack_event_id": 1, "window_size": 0}))  # pause
        with trio.move_on_after(0.2) as quiet:
            await ws.get_message()
        assert quiet.cancelled_caught
        assert (await request({"type": "ACK", "ack_event_id": 0, "window_size": 1}))[
            "type"
        ] == "ACK_TOO_SMALL"
        assert (await request({"type": "ACK", "ack_event_id": 1, "window_size": 1}))["event"][
            "id"
        ] == 2  # resume


async def test_not_running_until_the_upstream_has_an_event_queue(
    nursery: trio.Nursery, log: EventLog
) -> None:
    node = FakeNode(transcript_events(), running=False)
    await node.serve(nursery)
    proxy = Proxy(log, node)
    await proxy.start(nursery)
    async with trio_websocket.open_websocket_url(proxy.ws()) as ws:
        assert json.loads(await ws.get_message()) == {
            "type": "EVENT_WS_NOT_RUNNING",
            "invalid_request": None,
            "error_message": None,
        }
        start = json.dumps({"type": "START_STREAM", "window_size": 1})
        await ws.send_message(start)
        assert json.loads(await ws.get_message()) == {
            "type": "EVENT_WS_NOT_RUNNING",
            "invalid_request": start,
            "error_message": None,
        }
    status, body = await http_get(proxy.port, "/v1a/event")
    assert (status, json.loads(body)) == (503, {"success": False, "error": "EventManager unavailable."})


async def test_a_pruned_start_gets_a_clear_error(nursery: trio.Nursery, log: EventLog) -> None:
    events = synthetic_events(20)
    _, proxy = await synced(nursery, log, events)
    await proxy.feed.prune(keep_count=10)
    first = proxy.feed.first_id
    async with trio_websocket.open_websocket_url(proxy.ws()) as ws:
        await ws.send_message(json.dumps({"type": "START_STREAM", "last_ack_event_id": 3, "window_size": 5}))
        error = json.loads(await ws.get_message())
        assert error["type"] == "VALIDATION_ERROR"
        assert (
            "event 4 was pruned" in error["error_message"]
            and f"oldest retained event is {first}" in error["error_message"]
        )
        await ws.send_message(
            json.dumps({"type": "START_STREAM", "last_ack_event_id": first - 1, "window_size": 5})
        )
        assert json.loads(await ws.get_message())["event"]["id"] == first


async def test_a_client_that_stops_reading_is_cut_off(autojump_clock: trio.testing.MockClock) -> None:
    """In memory (so the mock clock is honest): the client never reads, the server gives up."""
    with EventLog(":memory:") as log:
        feed = EventFeed(log, "node")
        big = "x" * 20_000
        await feed.append(
            [StoredEvent(i, 1.0, f'{{"id":{i},"pad":"{big}"}}') for i in range(200)],
            identity=StreamIdentity("p", "n", "s"),
        )
        metrics = EventMetrics()
        server = EventStreamServer(feed, send_timeout=30, metrics=metrics)
        router = Router()
        router.websocket("/event_ws", server.handle)
        client_stream, server_stream = trio.testing.lockstep_stream_pair()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_http_stream, server_stream, router)
            ws = await trio_websocket.wrap_client_stream(
                nursery, client_stream, "proxy", "/event_ws", message_queue_size=1
            )
            await ws.send_message(json.dumps({"type": "START_STREAM", "window_size": 1000}))
            started = trio.current_time()
            await until(lambda: server.connections == 0, timeout=300)
            assert 30 <= trio.current_time() - started < 60
            assert metrics.clients_cut_off.labels("node", "not-reading")._value.get() == 1
            nursery.cancel_scope.cancel()


# --- GET /v1a/event ---------------------------------------------------------------------------------


async def http_get(port: int, target: str) -> tuple[int, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = h11.Connection(h11.CLIENT)
    await stream.send_all(conn.send(h11.Request(method="GET", target=target, headers=[("host", "x")])))
    await stream.send_all(conn.send(h11.EndOfMessage()))
    status, body = 0, b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            await stream.aclose()
            return status, body


async def test_http_events_are_the_node_response(nursery: trio.Nursery, log: EventLog) -> None:
    events = synthetic_events(100)
    _, proxy = await synced(nursery, log, events)
    latest = len(events) - 1

    def expected(ids: range) -> bytes:
        return node_dumps({"events": [events[i] for i in ids], "latest_event_id": latest}).encode()

    assert await http_get(proxy.port, "/v1a/event") == (200, expected(range(100)))
    assert await http_get(proxy.port, "/v1a/event?last_ack_event_id=10&size=5") == (
        200,
        expected(range(11, 16)),
    )
    assert await http_get(proxy.port, "/v1a/event?size=1000&last_ack_event_id=150") == (
        200,
        expected(range(151, latest + 1)),
    )
    assert await http_get(proxy.port, "/v1a/event?size=0") == (200, expected(range(0)))
    assert await http_get(proxy.port, f"/v1a/event?last_ack_event_id={latest}") == (200, expected(range(0)))


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (
            "size=1001",
            "1 validation error for GetEventsParams\nsize\n  Input should be less than or equal to 1000 "
            "[type=less_than_equal, input_value='1001', input_type=str]",
        ),
        (
            "size=-1",
            "1 validation error for GetEventsParams\nsize\n  Input should be greater than or equal to 0 "
            "[type=greater_than_equal, input_value='-1', input_type=str]",
        ),
        (
            "last_ack_event_id=x",
            "1 validation error for GetEventsParams\nlast_ack_event_id\n  Input should be a "
            "valid integer, unable to parse string as an integer [type=int_parsing, "
            "input_value='x', input_type=str]",
        ),
        (
            "foo=1",
            "1 validation error for GetEventsParams\nfoo\n  Extra inputs are not permitted "
            "[type=extra_forbidden, input_value='1', input_type=str]",
        ),
        ("size=1&size=2", "expected one value at most"),
    ],
)
async def test_http_parameter_errors_are_the_nodes(
    nursery: trio.Nursery, log: EventLog, query: str, message: str
) -> None:
    _, proxy = await synced(nursery, log, transcript_events())
    status, body = await http_get(proxy.port, f"/v1a/event?{query}")
    assert status == 200  # the node answers parameter errors with 200
    assert json.loads(body) == {"success": False, "error": message}


async def test_http_pruned_id_is_gone(nursery: trio.Nursery, log: EventLog) -> None:
    _, proxy = await synced(nursery, log, transcript_events())
    await proxy.feed.prune(keep_count=4)
    status, body = await http_get(proxy.port, "/v1a/event?last_ack_event_id=2")
    assert status == 410
    assert "event 3 was pruned" in json.loads(body)["error"]
    assert (await http_get(proxy.port, "/v1a/event?last_ack_event_id=9"))[0] == 200


# --- GET /v1a/version relay ------------------------------------------------------------------------------


async def test_version_is_relayed_byte_for_byte_and_cached(nursery: trio.Nursery) -> None:
    from miningproxy.api.http import HttpResponse
    from miningproxy.events.version_relay import VersionRelay

    raw = Path("/work/shared/protocol/transcripts/http-version.txt").read_bytes().split(b"\r\n\r\n", 1)[1]
    calls = []

    async def version(request: HttpRequest) -> HttpResponse:
        calls.append(request.path)
        return HttpResponse(200, raw, content_type="application/json; charset=utf-8")

    node_router = Router()
    node_router.http("/v1a/version", version)
    node_port = (await nursery.start(serve_http, node_router, "127.0.0.1", 0))[0].socket.getsockname()[1]
    relay = VersionRelay(["http://127.0.0.1:9/v1a/", f"http://127.0.0.1:{node_port}/v1a/"], timeout=2)
    router = Router()
    router.http("/v1a/version", relay.handle)
    port = (await nursery.start(serve_http, router, "127.0.0.1", 0))[0].socket.getsockname()[1]
    assert await http_get(port, "/v1a/version") == (200, raw)
    assert await http_get(port, "/v1a/version/") == (200, raw)
    assert len(calls) == 1  # cached
    assert json.loads(raw)["network"] == "privatenet-fastmine"

    down = Router()
    down.http("/v1a/version", VersionRelay(["http://127.0.0.1:9/v1a/"], timeout=1).handle)
    down_port = (await nursery.start(serve_http, down, "127.0.0.1", 0))[0].socket.getsockname()[1]
    status, body = await http_get(down_port, "/v1a/version")
    assert status == 502 and "no upstream node answered" in json.loads(body)["error"]
