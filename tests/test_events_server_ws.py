"""/event_ws on the lean websocket, over loopback with a raw client: batches, fragments, pings, limits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from ws_client_support import RawClient, client_frame, close_payload, text_frame

from miningproxy.api import websocket as lean
from miningproxy.api.http import Router, serve_http
from miningproxy.events.feed import EventFeed
from miningproxy.events.log import EventLog, StoredEvent, StreamIdentity
from miningproxy.events.metrics import EventMetrics
from miningproxy.events.server import EventStreamServer
from miningproxy.events.stream import Envelope, StreamSession

IDENTITY = StreamIdentity("ab" * 32, "privatenet", "stream-1")
COUNT = 120


def event_text(i: int, pad: int = 40) -> str:
    return f'{{"id":{i},"type":"NEW_VERTEX_ACCEPTED","data":{{"pad":"{"x" * pad}"}},"group_id":null}}'


def start(window: int, last: int | None = None) -> str:
    return json.dumps({"type": "START_STREAM", "last_ack_event_id": last, "window_size": window})


def ack(event_id: int, window: int) -> str:
    return json.dumps({"type": "ACK", "ack_event_id": event_id, "window_size": window})


class Served:
    def __init__(self, feed: EventFeed, server: EventStreamServer, metrics: EventMetrics, port: int) -> None:
        self.feed, self.server, self.metrics, self.port = feed, server, metrics, port

    async def client(self, **kwargs: Any) -> RawClient:
        return await RawClient.open(self.port, "/v1a/event_ws", **kwargs)


async def serve(nursery: trio.Nursery, log: EventLog, *, pad: int = 40, send_timeout: float = 30) -> Served:
    # A small cache, so replays read SQLite too.
    feed = EventFeed(log, "node", cache_size=16)
    await feed.append([StoredEvent(i, 1.0, event_text(i, pad)) for i in range(COUNT)], identity=IDENTITY)
    metrics = EventMetrics()
    server = EventStreamServer(feed, send_timeout=send_timeout, metrics=metrics)
    router = Router()
    router.websocket("/v1a/event_ws", server.handle)
    listeners = await nursery.start(serve_http, router, "127.0.0.1", 0)
    return Served(feed, server, metrics, listeners[0].socket.getsockname()[1])


@pytest.fixture
def log(tmp_path: Path):
    with EventLog(tmp_path / "events.sqlite3") as event_log:
        yield event_log


def expected_frame(i: int) -> str:
    return Envelope(IDENTITY).frame(event_text(i), COUNT - 1)


async def consume(client: RawClient, window: int, *, batched: bool, extra: dict[int, str]) -> list[str]:
    """Stream everything: an ACK per event, each in its own write (batched=False), or the ACKs of a
    whole window in one write (batched=True). ``extra[i]``: a message sent right after event i's ACK."""
    frames: list[str] = []
    await client.send(text_frame(start(window)))
    pending: list[bytes] = []
    events = 0
    while events < COUNT:
        text = await client.text()
        frames.append(text)
        frame = json.loads(text)
        if frame["type"] != "EVENT":
            continue
        event_id = frame["event"]["id"]
        events += 1
        out = [text_frame(ack(event_id, window))]
        if event_id in extra:
            out.append(text_frame(extra[event_id]))
        if not batched:
            for data in out:
                await client.send(data)
            continue
        pending += out
        if events % window == 0 or events == COUNT:  # the window is full: ACK it all at once
            await client.send(b"".join(pending))
            pending = []
    return frames


async def test_acks_batched_in_one_write_give_the_stream_acks_one_by_one_give(
    nursery: trio.Nursery, log: EventLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = await serve(nursery, log)
    batch_sizes: list[int] = []
    original = StreamSession.receive_batch

    def recording(self: StreamSession, payloads: list[Any], **kwargs: Any) -> list[str]:
        batch_sizes.append(len(payloads))
        return original(self, payloads, **kwargs)

    monkeypatch.setattr(StreamSession, "receive_batch", recording)
    window = 8
    # Errors mixed in: an ACK beyond what was sent, one below the acknowledged id, a bad request.
    extra = {10: ack(50, window), 20: ack(3, window), 33: "{oops"}
    one_by_one = await consume(await served.client(), window, batched=False, extra=extra)
    singles = list(batch_sizes)
    batch_sizes.clear()
    batched = await consume(await served.client(), window, batched=True, extra=extra)
    assert max(batch_sizes) > 1  # the server did get several ACKs in one read
    assert max(singles, default=1) <= max(batch_sizes)

    def split(frames: list[str]) -> tuple[list[str], list[str]]:
        events = [f for f in frames if json.loads(f)["type"] == "EVENT"]
        return events, [f for f in frames if f not in events]

    events_one, errors_one = split(one_by_one)
    events_batched, errors_batched = split(batched)
    assert events_one == events_batched == [expected_frame(i) for i in range(COUNT)]
    assert errors_one == errors_batched
    assert [json.loads(f)["type"] for f in errors_one] == [
        "ACK_TOO_LARGE",
        "ACK_TOO_SMALL",
        "VALIDATION_ERROR",
    ]


async def test_a_fragmented_request_with_a_ping_between_fragments(
    nursery: trio.Nursery, log: EventLog
) -> None:
    served = await serve(nursery, log)
    client = await served.client()
    request = start(3).encode()
    await client.send(client_frame(request[:10], 0x1, fin=False) + client_frame(b"ping!", 0x9))
    with trio.fail_after(10):
        assert await client.frame() == (True, 0xA, b"ping!")
    await client.send(client_frame(request[10:20], 0x0, fin=False))
    await client.send(client_frame(request[20:], 0x0))
    assert [json.loads(await client.text())["event"]["id"] for _ in range(3)] == [0, 1, 2]


async def test_pings_are_answered_in_the_middle_of_a_stream(nursery: trio.Nursery, log: EventLog) -> None:
    served = await serve(nursery, log)
    client = await served.client()
    await client.send(text_frame(start(COUNT)) + client_frame(b"1", 0x9))
    seen: list[tuple[int, bytes]] = []
    with trio.fail_after(10):
        while len(seen) < COUNT + 2:
            if len(seen) == 40:
                await client.send(client_frame(b"2", 0x9))
            frame = await client.frame()
            assert frame is not None
            seen.append(frame[1:])
    assert [payload for opcode, payload in seen if opcode == 0xA] == [b"1", b"2"]
    assert [json.loads(payload)["event"]["id"] for opcode, payload in seen if opcode == 0x1] == list(
        range(COUNT)
    )


async def test_an_oversized_message_is_closed_with_1009_and_others_stream_on(
    nursery: trio.Nursery, log: EventLog
) -> None:
    served = await serve(nursery, log)
    good = await served.client()
    await good.send(text_frame(start(5)))
    assert json.loads(await good.text())["event"]["id"] == 0
    big = await served.client()
    async with trio.open_nursery() as inner:
        inner.start_soon(big.send, text_frame("[" + " " * lean.DEFAULT_MAX_MESSAGE_SIZE + "]"))
        assert (await big.close_frame())[0] == 1009
    await big.send(client_frame(close_payload(1009), 0x8))
    await big.eof(timeout=2)
    ids = [0] + [json.loads(await good.text())["event"]["id"] for _ in range(4)]
    await good.send(text_frame(ack(4, 5)))
    ids += [json.loads(await good.text())["event"]["id"] for _ in range(5)]
    assert ids == list(range(10))


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x00\x00\x00 not websocket frames at all",
        client_frame(b'{"type":"ACK"}', masked=False),
        client_frame(b'{"type": "\xff"}'),
    ],
)
async def test_garbage_closes_that_client_only(nursery: trio.Nursery, log: EventLog, garbage: bytes) -> None:
    served = await serve(nursery, log)
    good = await served.client()
    await good.send(text_frame(start(COUNT)))
    bad = await served.client()
    await bad.send(text_frame(start(2)))
    assert json.loads(await bad.text())["event"]["id"] == 0
    await bad.send(garbage)
    code, _ = await bad.close_frame() or (None, "")
    assert code in (1002, 1007)
    await bad.eof()
    assert [json.loads(await good.text())["event"]["id"] for _ in range(COUNT)] == list(range(COUNT))
    with trio.fail_after(10):
        while served.server.connections != 1:
            await trio.sleep(0.01)


async def test_a_client_that_stops_reading_is_cut_off_after_send_timeout(
    nursery: trio.Nursery, log: EventLog
) -> None:
    served = await serve(nursery, log, pad=20_000, send_timeout=0.5)
    deaf = await served.client(rcvbuf=4096)
    started = trio.current_time()
    await deaf.send(text_frame(start(1000)))
    with trio.fail_after(20):
        while served.metrics.clients_cut_off.labels("node", "not-reading")._value.get() < 1:
            await trio.sleep(0.01)
    assert trio.current_time() - started >= 0.5
    with trio.fail_after(10):
        while served.server.connections:
            await trio.sleep(0.01)
    good = await served.client()
    await good.send(text_frame(start(2)))
    assert json.loads(await good.text())["event"]["id"] == 0


async def test_not_running_answers_every_message_of_a_batch(nursery: trio.Nursery, log: EventLog) -> None:
    feed = EventFeed(log, "node")
    router = Router()
    router.websocket("/v1a/event_ws", EventStreamServer(feed).handle)
    port = (await nursery.start(serve_http, router, "127.0.0.1", 0))[0].socket.getsockname()[1]
    client = await RawClient.open(port, "/v1a/event_ws")
    assert json.loads(await client.text())["type"] == "EVENT_WS_NOT_RUNNING"
    await client.send(text_frame("a") + text_frame("b") + client_frame(b"c", 0x2))
    answers = [json.loads(await client.text()) for _ in range(3)]
    assert [(a["type"], a["invalid_request"]) for a in answers] == [
        ("EVENT_WS_NOT_RUNNING", m) for m in "abc"
    ]


async def test_a_client_that_never_reads_is_cut_off_while_not_running(
    nursery: trio.Nursery, log: EventLog
) -> None:
    metrics = EventMetrics()
    server = EventStreamServer(EventFeed(log, "node"), send_timeout=0.5, metrics=metrics)
    router = Router()
    router.websocket("/v1a/event_ws", server.handle)
    port = (await nursery.start(serve_http, router, "127.0.0.1", 0))[0].socket.getsockname()[1]
    deaf = await RawClient.open(port, "/v1a/event_ws", rcvbuf=4096)
    request = text_frame("x" * 100)  # each one is answered with an error frame that echoes it

    async def flood() -> None:
        while await deaf.send(request * 500):
            await trio.sleep(0)

    with trio.fail_after(30):
        async with trio.open_nursery() as inner:
            inner.start_soon(flood)  # ends when the server has dropped the connection
        while server.connections:  # the handler is on its way out
            await trio.sleep(0.01)
    assert metrics.clients_cut_off.labels("node", "not-reading")._value.get() == 1
