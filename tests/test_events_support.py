"""Shared pieces of the event tests: the node transcripts and a faithful fake node event_ws.

The fake node follows hathor-core's ``hathor/event/websocket/protocol.py`` and ``factory.py``: the
same request rules, the ACK that rewinds ``last_sent`` to the acknowledged id, and sending through
``callLater(0)`` chains, one event per reactor turn -- which is what makes a real node send
duplicates. Its frames are encoded like the node's (``json.dumps`` compact, not ASCII-escaped).
The tests at the bottom check the fake against the real node's transcripts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import trio
import trio_websocket

from miningproxy.events.chain_events import ChainEventSource, Vertex, VertexOutput
from miningproxy.events.log import StreamIdentity

TRANSCRIPTS = Path("/work/shared/protocol/transcripts")


def transcript(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (TRANSCRIPTS / name).read_text().splitlines() if line.strip()]


def transcript_events() -> list[dict[str, Any]]:
    """The node's events 0..13 from the transcript, in id order."""
    events: dict[int, dict[str, Any]] = {}
    for entry in transcript("event_ws.jsonl"):
        frame = entry["frame"]
        if entry["dir"] == "recv" and frame.get("type") == "EVENT":
            events.setdefault(frame["event"]["id"], frame["event"])
    return [events[i] for i in sorted(events)]


def transcript_identity() -> StreamIdentity:
    for entry in transcript("event_ws.jsonl"):
        frame = entry["frame"]
        if frame.get("type") == "EVENT":
            return StreamIdentity(frame["peer_id"], frame["network"], frame["stream_id"])
    raise AssertionError("no EVENT frame in the transcript")


def node_dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def vertex_of(data: dict[str, Any]) -> Vertex:
    import base64

    return Vertex(
        data["hash"],
        data["nonce"],
        data["timestamp"],
        data["weight"],
        data["version"],
        tuple(data["parents"]),
        tuple(
            VertexOutput(o["value"], base64.b64decode(o["script"]), o["token_data"]) for o in data["outputs"]
        ),
        data["signal_bits"],
    )


def synthetic_events(n_blocks: int, *, start_time: float = 1795814404.0) -> list[dict[str, Any]]:
    """The transcript's genesis followed by ``n_blocks`` made-up blocks (2 events each), node-shaped."""
    base = transcript_events()
    clock = iter(start_time + i * 0.001 for i in range(10**9))
    source = ChainEventSource("privatenet-fastmine", clock=lambda: next(clock))
    events = source.load(vertex_of(base[1]["data"]), [vertex_of(base[2]["data"]), vertex_of(base[3]["data"])])
    parent = base[1]["data"]["hash"]
    txs = (base[3]["data"]["hash"], base[2]["data"]["hash"])
    script = bytes.fromhex("76a914" + "66" * 20 + "88ac")
    for height in range(1, n_blocks + 1):
        block_hash = f"{height:064x}"
        events += source.add_block(
            Vertex(
                block_hash, height, 1643902667 + height, 8.0, 0, (parent, *txs), (VertexOutput(6400, script),)
            )
        )
        parent = block_hash
    return events


class FakeNode:
    """A node's /v1a/event_ws over real loopback sockets (see the module docstring)."""

    def __init__(
        self,
        events: Iterable[dict[str, Any]] = (),
        *,
        identity: StreamIdentity | None = None,
        running: bool = True,
        raw_events: dict[int, str] | None = None,
    ) -> None:
        self.identity = identity or transcript_identity()
        self.events: list[dict[str, Any]] = []
        self.raw: dict[int, str] = dict(raw_events or {})  # id -> event text to send instead of dumps(event)
        self.running = running
        self.refuse = False  # answer the handshake with HTTP 404, like a node without the resource
        self.connections: set[_NodeConnection] = set()
        self.received: list[str] = []
        self.sent: list[str] = []
        self.port = 0
        for event in events:
            self.events.append(event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1a/"

    async def serve(self, nursery: trio.Nursery) -> int:
        server = await nursery.start(trio_websocket.serve_websocket, self._handler, "127.0.0.1", 0, None)
        self.port = server.port
        return self.port

    def latest_event_id(self) -> int:
        return len(self.events) - 1

    def event_text(self, event_id: int) -> str:
        return self.raw.get(event_id) or node_dumps(self.events[event_id])

    def frame(self, event_id: int, latest: int | None = None) -> str:
        """The EVENT frame the node sends for ``event_id`` (with its current latest id by default)."""
        ident = self.identity
        latest = self.latest_event_id() if latest is None else latest
        return (
            f'{{"type":"EVENT","peer_id":{node_dumps(ident.peer_id)},"network":{node_dumps(ident.network)},'
            f'"event":{self.event_text(event_id)},"latest_event_id":{latest},"stream_id":{node_dumps(ident.stream_id)}}}'
        )

    def broadcast(self, event: dict[str, Any]) -> None:
        """A new event, as EventManager saves and broadcasts it."""
        assert event["id"] == len(self.events), "the node's ids are contiguous"
        self.events.append(event)
        for connection in list(self.connections):
            connection.send_event(event["id"])

    async def drop_connections(self) -> None:
        """Close every client connection (as a node restart does)."""
        for connection in list(self.connections):
            with trio.move_on_after(2):
                await connection.ws.aclose()

    async def _handler(self, request: trio_websocket.WebSocketRequest) -> None:
        if self.refuse:
            await request.reject(404, body=b"No Such Resource")
            return
        ws = await request.accept()
        async with trio.open_nursery() as nursery:
            connection = _NodeConnection(self, ws, nursery)
            nursery.start_soon(connection.writer)
            if self.running:
                self.connections.add(connection)
            else:
                connection.error("EVENT_WS_NOT_RUNNING", None)
            try:
                while True:
                    message = await ws.get_message()
                    self.received.append(message)
                    connection.on_message(message)
            except trio_websocket.ConnectionClosed:
                pass
            finally:
                self.connections.discard(connection)
                nursery.cancel_scope.cancel()


class _NodeConnection:
    def __init__(self, node: FakeNode, ws: trio_websocket.WebSocketConnection, nursery: trio.Nursery) -> None:
        self.node = node
        self.ws = ws
        self.nursery = nursery
        self.out_send, self.out_receive = trio.open_memory_channel[str](math.inf)
        self.last_sent: int | None = None
        self.ack: int | None = None
        self.window = 0
        self.active = False

    async def writer(self) -> None:
        async for frame in self.out_receive:
            try:
                await self.ws.send_message(frame)
            except trio_websocket.ConnectionClosed:
                return

    def _send(self, frame: str) -> None:
        self.out_send.send_nowait(frame)  # autobahn's sendMessage buffers and never blocks

    def error(self, error_type: str, payload: str | None) -> None:
        self._send(node_dumps({"type": error_type, "invalid_request": payload, "error_message": None}))

    # --- hathor-core protocol.py -------------------------------------------------------------------

    def next_expected(self) -> int:
        return 0 if self.last_sent is None else self.last_sent + 1

    def can_receive(self, event_id: int) -> bool:
        pending = 0
        if self.last_sent is not None:
            pending = self.last_sent - (-1 if self.ack is None else self.ack)
        return self.active and event_id == self.next_expected() and pending < self.window

    def on_message(self, payload: str) -> None:
        request = json.loads(payload)
        try:
            kind = request["type"]
            if kind == "START_STREAM":
                if self.active:
                    raise _Invalid("STREAM_IS_ACTIVE")
                self.last_sent = request.get("last_ack_event_id")
                self._update_ack(request.get("last_ack_event_id"))
                self.window = request["window_size"]
                self.active = True
                self.send_next()
            elif kind == "ACK":
                if not self.active:
                    raise _Invalid("STREAM_IS_INACTIVE")
                self._update_ack(request["ack_event_id"])
                self.last_sent = request["ack_event_id"]
                self.window = request["window_size"]
                self.send_next()
            elif kind == "STOP_STREAM":
                if not self.active:
                    raise _Invalid("STREAM_IS_INACTIVE")
                self.active = False
        except _Invalid as exc:
            self.error(exc.args[0], payload)

    def _update_ack(self, ack: int | None) -> None:
        if self.ack is not None and (ack is None or ack <= self.ack):
            raise _Invalid("ACK_TOO_SMALL")
        if ack is not None and (self.last_sent is None or self.last_sent < ack):
            raise _Invalid("ACK_TOO_LARGE")
        self.ack = ack

    # --- hathor-core factory.py --------------------------------------------------------------------

    def send_next(self) -> None:
        event_id = self.next_expected()
        if not self.can_receive(event_id):
            return
        if event_id < len(self.node.events):
            self.send_event(event_id)
            self.nursery.start_soon(self._call_later)

    async def _call_later(self) -> None:
        await trio.sleep(0)  # reactor.callLater(0, ...)
        self.send_next()

    def send_event(self, event_id: int) -> None:
        if not self.can_receive(event_id):
            return
        frame = self.node.frame(event_id)
        self.node.sent.append(frame)
        self._send(frame)
        self.last_sent = event_id


class _Invalid(Exception):
    pass


# --- the fake against the real node ---------------------------------------------------------------


async def test_fake_node_window1_matches_the_transcript(nursery: trio.Nursery) -> None:
    """Window 1, one ACK per event, then an ACK below the last: the real node's exact frames."""
    entries = transcript("event_ws-window1.jsonl")
    events = transcript_events()
    node = FakeNode(events)
    await node.serve(nursery)
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{node.port}/v1a/event_ws") as ws:
        for entry in entries:
            if entry["dir"] == "send":
                await ws.send_message(json.dumps(entry["frame"]))
            elif entry["dir"] == "recv":
                got = json.loads(await ws.get_message())
                expected = dict(entry["frame"])
                if expected.get("type") == "EVENT":
                    expected["latest_event_id"] = got["latest_event_id"]  # the node had 14 events by then
                assert got == expected


async def test_fake_node_rewinds_on_ack_like_the_real_node(nursery: trio.Nursery) -> None:
    """Window 5 with early ACKs: the node sends events again, as in the transcript."""
    node = FakeNode(transcript_events()[:5])
    await node.serve(nursery)
    received = []
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{node.port}/v1a/event_ws") as ws:
        await ws.send_message(
            json.dumps({"type": "START_STREAM", "last_ack_event_id": None, "window_size": 5})
        )
        for _ in range(3):
            event_id = json.loads(await ws.get_message())["event"]["id"]
            received.append(event_id)
            await ws.send_message(json.dumps({"type": "ACK", "ack_event_id": event_id, "window_size": 5}))
        with trio.move_on_after(0.5):
            while True:
                received.append(json.loads(await ws.get_message())["event"]["id"])
    assert sorted(set(received)) == [0, 1, 2, 3, 4]
    assert len(received) > len(set(received)), f"expected duplicates after early ACKs, got {received}"
