"""The upstream consumer against a fake node event_ws (real loopback sockets)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from test_events_support import FakeNode, node_dumps, synthetic_events, transcript_events

from miningproxy.events.feed import EventFeed
from miningproxy.events.log import EventLog, StreamIdentity
from miningproxy.events.metrics import EventMetrics
from miningproxy.events.upstream import (
    FrameError,
    NodeEventConsumer,
    UpstreamError,
    UpstreamEvent,
    parse_upstream_frame,
)


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.005)


def stored(log: EventLog) -> list[tuple[int, str]]:
    bounds = log.bounds("node")
    return [] if bounds is None else log.read("node", bounds.first_id, bounds.last_id + 1)


def consumer(feed: EventFeed, node: FakeNode | list[str], **kwargs) -> NodeEventConsumer:
    nodes = node if isinstance(node, list) else [node.url]
    options = {"window_size": 5, "backoff_initial": 0.02, "backoff_max": 0.1, "connect_timeout": 2.0}
    options.update(kwargs)
    return NodeEventConsumer(feed, nodes, **options)


@pytest.fixture
def log(tmp_path: Path):
    with EventLog(tmp_path / "events.sqlite3") as event_log:
        yield event_log


# --- frames -----------------------------------------------------------------------------------------


def test_event_frames_keep_the_event_text_exactly() -> None:
    text = '{"type":"EVENT", "peer_id":"p" ,"network":"n","event": {"id": 7, "timestamp": 1e3, "x": "\\u00e9"} ,"latest_event_id":9,"stream_id":"s"}'
    frame = parse_upstream_frame(text)
    assert frame == UpstreamEvent(
        StreamIdentity("p", "n", "s"), 7, 1000.0, '{"id": 7, "timestamp": 1e3, "x": "\\u00e9"}', 9
    )


def test_error_frames_are_recognised() -> None:
    frame = parse_upstream_frame(
        '{"type":"EVENT_WS_NOT_RUNNING","invalid_request":null,"error_message":null}'
    )
    assert frame == UpstreamError("EVENT_WS_NOT_RUNNING", None, None)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        "{",
        '{"type":"EVENT"}',
        '{"type":"EVENT","peer_id":1,"network":"n","stream_id":"s",'
        '"latest_event_id":0,"event":{"id":0,"timestamp":1}}',
        '{"type":"EVENT","peer_id":"p","network":"n",'
        '"stream_id":"s","latest_event_id":0,"event":{"id":-1,"timestamp":1}}',
        '{"type":"HELLO"} x',
        '{"a" 1}',
    ],
)
def test_bad_frames_are_frame_errors(text: str) -> None:
    with pytest.raises(FrameError):
        parse_upstream_frame(text)


@given(st.one_of(st.text(max_size=300), st.binary(max_size=100)))
def test_frame_parsing_only_ever_raises_frame_error(text: str | bytes) -> None:
    try:
        parse_upstream_frame(text)
    except FrameError:
        pass


# --- consuming ----------------------------------------------------------------------------------------


async def test_consumes_the_node_stream_and_stores_its_exact_text(
    nursery: trio.Nursery, log: EventLog
) -> None:
    node = FakeNode(transcript_events())
    await node.serve(nursery)
    feed = EventFeed(log, "node")
    metrics = EventMetrics()
    upstream = consumer(feed, node, metrics=metrics)
    nursery.start_soon(upstream.run)
    await until(lambda: feed.last_id == 13)
    assert log.identity("node") == node.identity
    assert stored(log) == [(i, node.event_text(i)) for i in range(14)]
    assert json.loads(node.received[0]) == {
        "type": "START_STREAM",
        "last_ack_event_id": None,
        "window_size": 5,
    }
    assert upstream.status()["state"] == "streaming"
    # Live events keep coming.
    for event in synthetic_events(6)[14:]:  # ids 14..19
        node.broadcast(event)
    await until(lambda: feed.last_id == 19)
    assert stored(log)[14:] == [(i, node.event_text(i)) for i in range(14, 20)]


async def test_the_nodes_duplicate_resends_are_dropped(nursery: trio.Nursery, log: EventLog) -> None:
    """Early ACKs make the node rewind and send events again; each is stored once."""
    events = synthetic_events(200)
    node = FakeNode(events)
    await node.serve(nursery)
    feed = EventFeed(log, "node")
    upstream = consumer(feed, node, window_size=20, batch_max=7)
    nursery.start_soon(upstream.run)
    await until(lambda: feed.last_id == len(events) - 1)
    sent_ids = [json.loads(f)["event"]["id"] for f in node.sent]
    assert len(sent_ids) > len(set(sent_ids)), "the fake node should have re-sent events"
    assert upstream.duplicates > 0
    assert stored(log) == [(i, node.event_text(i)) for i in range(len(events))]
    # An ACK may race a rewind and be refused (ACK_TOO_LARGE); the consumer corrects itself and the
    # node ends up with everything acknowledged.
    await until(lambda: any(c.ack == len(events) - 1 for c in node.connections))


async def test_non_canonical_node_text_is_kept_byte_for_byte(nursery: trio.Nursery, log: EventLog) -> None:
    events = transcript_events()[:3]
    raw = {1: node_dumps(events[1]).replace('"nonce":261', '"nonce" : 261 ').replace(":8.0,", ":8.00,")}
    node = FakeNode(events, raw_events=raw)
    await node.serve(nursery)
    feed = EventFeed(log, "node")
    nursery.start_soon(consumer(feed, node).run)
    await until(lambda: feed.last_id == 2)
    assert log.read("node", 1, 1) == [(1, raw[1])]


async def test_a_node_restart_resumes_from_the_last_stored_id(nursery: trio.Nursery, log: EventLog) -> None:
    events = synthetic_events(60)
    node = FakeNode(events[:50])
    await node.serve(nursery)
    feed = EventFeed(log, "node")
    nursery.start_soon(consumer(feed, node, window_size=8).run)
    await until(lambda: feed.last_id == 49)
    received_before = len(node.received)
    await node.drop_connections()
    for event in events[50:]:
        node.events.append(event)  # stored by the node while we were away
    await until(lambda: feed.last_id == len(events) - 1)
    starts = [
        json.loads(m) for m in node.received[received_before:] if json.loads(m)["type"] == "START_STREAM"
    ]
    assert starts[0]["last_ack_event_id"] == 49
    assert stored(log) == [(i, node.event_text(i)) for i in range(len(events))]


async def test_a_proxy_restart_resumes_from_the_last_stored_id(nursery: trio.Nursery, tmp_path: Path) -> None:
    events = synthetic_events(40)
    node = FakeNode(events[:30])
    await node.serve(nursery)
    path = tmp_path / "events.sqlite3"
    with EventLog(path) as first_log:
        feed = EventFeed(first_log, "node")
        async with trio.open_nursery() as inner:
            inner.start_soon(consumer(feed, node).run)
            await until(lambda: feed.last_id == 29)
            inner.cancel_scope.cancel()
    await node.drop_connections()
    for event in events[30:]:
        node.broadcast(event)
    received_before = len(node.received)
    with EventLog(path) as second_log:
        feed = EventFeed(second_log, "node")
        assert feed.last_id == 29
        async with trio.open_nursery() as inner:
            inner.start_soon(consumer(feed, node).run)
            await until(lambda: feed.last_id == len(events) - 1)
            inner.cancel_scope.cancel()
        assert json.loads(node.received[received_before])["last_ack_event_id"] == 29
        assert stored(second_log) == [(i, node.event_text(i)) for i in range(len(events))]


@pytest.mark.parametrize("change", ["peer_id", "stream_id", "network"])
async def test_another_stream_upstream_stops_appending(
    nursery: trio.Nursery, log: EventLog, change: str, caplog: pytest.LogCaptureFixture
) -> None:
    events = synthetic_events(5)
    first = FakeNode(events)
    await first.serve(nursery)
    feed = EventFeed(log, "node")
    nursery.start_soon(consumer(feed, first).run)
    await until(lambda: feed.last_id == len(events) - 1)

    ident = first.identity
    other = StreamIdentity(
        "f" * 64 if change == "peer_id" else ident.peer_id,
        "testnet" if change == "network" else ident.network,
        "another-stream" if change == "stream_id" else ident.stream_id,
    )
    second = FakeNode(synthetic_events(8), identity=other)
    await second.serve(nursery)
    metrics = EventMetrics()
    switched = consumer(feed, second, metrics=metrics)
    caplog.set_level(logging.ERROR, logger="miningproxy.events.upstream")
    nursery.start_soon(switched.run)
    await until(lambda: switched.status()["mismatch"] is not None)
    await trio.sleep(0.2)  # several retries
    assert feed.last_id == len(events) - 1  # nothing appended
    assert log.identity("node") == ident
    assert metrics.upstream_identity_mismatch._value.get() >= 1
    assert switched.status()["mismatch"]["offered"][change] == getattr(other, change)
    messages = [r.getMessage() for r in caplog.records if "different event stream" in r.getMessage()]
    assert len(messages) == 1 and change in messages[0]  # one clear line, not one per retry


async def test_failover_to_the_next_node(nursery: trio.Nursery, log: EventLog) -> None:
    node = FakeNode(transcript_events())
    await node.serve(nursery)
    feed = EventFeed(log, "node")
    nursery.start_soon(consumer(feed, ["http://127.0.0.1:9/v1a/", node.url]).run)
    await until(lambda: feed.last_id == 13)


@pytest.mark.parametrize("how", ["not-running", "no-resource"])
async def test_an_upstream_without_event_queue(nursery: trio.Nursery, log: EventLog, how: str) -> None:
    node = FakeNode(transcript_events(), running=how != "not-running")
    node.refuse = how == "no-resource"
    await node.serve(nursery)
    feed = EventFeed(log, "node")
    upstream = consumer(feed, node)
    nursery.start_soon(upstream.run)
    await until(lambda: upstream.status()["state"] == "not-running")
    assert feed.identity is None and feed.last_id is None
    # When the node gets its event queue, the stream starts.
    node.running = True
    node.refuse = False
    await until(lambda: feed.last_id == 13)


_PROXY = """
import sys, trio
from miningproxy.events.feed import EventFeed
from miningproxy.events.log import EventLog
from miningproxy.events.upstream import NodeEventConsumer

async def main(db, url):
    feed = EventFeed(EventLog(db), "node")
    upstream = NodeEventConsumer(feed, [url], window_size=7, batch_max=5, backoff_initial=0.02, backoff_max=0.1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(upstream.run)
        last = None
        while True:
            if feed.last_id != last:
                last = feed.last_id
                print(last, flush=True)
            await trio.sleep(0.001)

trio.run(main, sys.argv[1], sys.argv[2])
"""


async def test_a_killed_proxy_loses_nothing_and_duplicates_nothing(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """SIGKILL the consuming process twice mid-stream; the log ends up exactly the node's stream."""
    import os
    import subprocess
    import sys

    events = synthetic_events(400)
    node = FakeNode(events)
    await node.serve(nursery)
    db = str(tmp_path / "events.sqlite3")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    last = -1
    for kill_after in (150, 450, None):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-c", _PROXY, db, node.url], stdout=subprocess.PIPE, env=env
        )
        buffer = b""
        with trio.fail_after(20):
            while True:
                chunk = await process.stdout.receive_some(4096)
                assert chunk, "the proxy process died"
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip() != b"None":
                        last = int(line)
                if kill_after is None and last == len(events) - 1:
                    break
                if kill_after is not None and last >= kill_after:
                    break
        process.kill()
        await process.wait()
        await node.drop_connections()
    with EventLog(db) as log:
        assert stored(log) == [(i, node.event_text(i)) for i in range(len(events))]
    starts = [
        json.loads(m)["last_ack_event_id"] for m in node.received if json.loads(m)["type"] == "START_STREAM"
    ]
    assert starts[0] is None and all(s is not None for s in starts[1:])  # each restart resumed from the log
