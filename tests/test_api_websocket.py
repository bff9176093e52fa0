"""The lean websocket (miningproxy.api.websocket): sans-IO against wsproto, then over loopback.

The frame reader takes a shortcut for ordinary text frames and hands everything else to wsproto,
so the property test feeds random frame sequences -- valid, fragmented, interleaved with control
frames, and broken in every way a header or payload can be -- cut at random points, and compares
the outcome with wsproto given the same frames whole.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket
from hypothesis import given, settings
from hypothesis import strategies as st
from ws_client_support import RawClient, client_frame, close_payload, text_frame
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from miningproxy.api import websocket as lean
from miningproxy.api.http import HttpRequest, Router, serve_http, serve_http_stream
from miningproxy.api.websocket import (
    FrameReader,
    WebSocket,
    encode_text_frames,
    lean_websocket,
    server_handshake,
)

# --- sans-IO: the frame reader against wsproto ---------------------------------------------------


@dataclass(frozen=True)
class Frame:
    opcode: int
    payload: bytes
    fin: bool = True
    rsv: int = 0
    masked: bool = True
    form: str | None = None  # length encoding; None: the minimal one

    @property
    def minimal(self) -> bool:
        size = len(self.payload)
        return self.form is None or self.form == ("7" if size < 126 else "16" if size < 1 << 16 else "64")

    def encode(self) -> bytes:
        return client_frame(
            self.payload, self.opcode, fin=self.fin, rsv=self.rsv, masked=self.masked, form=self.form
        )


@dataclass
class Outcome:
    messages: list[Any]
    pongs: list[bytes]
    peer_close: tuple[int, str | None] | None = None
    failure: int | None = None  # the close code (wsproto's reason text depends on how bytes were cut)


def reference(frames: list[Frame], max_size: int) -> Outcome:
    """wsproto, given each frame whole, plus the size rule: a data frame with a header wsproto
    accepts, in a valid sequence, that takes its message beyond ``max_size`` ends it with 1009."""
    conn = Connection(ConnectionType.SERVER)
    out = Outcome([], [])
    parts: list[Any] = []
    fragmenting, size = False, 0
    for frame in frames:
        data_frame = frame.opcode in (0, 1, 2) and (frame.opcode == 0) == fragmenting
        if frame.rsv == 0 and frame.masked and frame.minimal and data_frame:
            total = size + len(frame.payload) if frame.opcode == 0 else len(frame.payload)
            if total > max_size:
                out.failure = 1009
                return out
            fragmenting, size = not frame.fin, 0 if frame.fin else total
        conn.receive_data(frame.encode())
        for event in conn.events():
            if isinstance(event, TextMessage | BytesMessage):
                parts.append(event.data)
                if event.message_finished:
                    joined = "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)
                    out.messages.append(joined)
                    parts = []
            elif isinstance(event, Ping):
                out.pongs.append(conn.send(event.response()))
            elif isinstance(event, CloseConnection):
                # wsproto: a close frame moves the state on; a protocol violation (reported the
                # same way, with the code to answer) does not.
                if conn.state is ConnectionState.REMOTE_CLOSING:
                    assert frame.opcode == 0x8
                    out.peer_close = (int(event.code), event.reason)
                else:
                    assert conn.state is ConnectionState.OPEN
                    out.failure = int(event.code)
                return out
    return out


def run_reader(data: bytes, cuts: list[int], max_size: int) -> Outcome:
    reader = FrameReader(Connection(ConnectionType.SERVER), max_message_size=max_size)
    out = Outcome([], [])
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for start, stop in zip(points, points[1:], strict=False):
        reader.receive_data(data[start:stop])
        out.messages += reader.messages
        out.pongs += reader.replies
        reader.messages, reader.replies = [], []
    if reader.peer_close is not None:
        out.peer_close = (int(reader.peer_close.code), reader.peer_close.reason)
    if reader.failure is not None:
        out.failure = int(reader.failure.code)
    return out


_text = st.text(max_size=40)
_small = st.binary(max_size=40)


@st.composite
def _payload(draw: Any, text: bool) -> bytes:
    kind = draw(st.sampled_from(["small", "small", "small", "medium", "bad-utf8", "large"]))
    if kind == "small":
        return draw(_text).encode("utf-8") if text else draw(_small)
    if kind == "medium":  # the 16-bit length form
        return draw(_text).encode("utf-8") * 8 + b"x" * draw(st.integers(126, 400))
    if kind == "bad-utf8":
        return draw(_text).encode("utf-8") + draw(
            st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xe2\x82", b"\xc0\xaf"])
        )
    return b"y" * draw(st.integers(65536, 70000))  # the 64-bit length form


@st.composite
def _control(draw: Any) -> Frame:
    kind = draw(st.sampled_from(["ping", "ping", "pong", "close"]))
    if kind == "close":
        payload = draw(
            st.sampled_from(
                [
                    b"",
                    close_payload(1000),
                    close_payload(1001, "bye"),
                    close_payload(4000, "app"),
                    b"\x03",  # one byte: invalid
                    close_payload(999),
                    close_payload(1005),
                    close_payload(2999),
                    close_payload(1000, "\xff".encode("latin-1").decode("latin-1")),
                    struct.pack("!H", 1000) + b"\xff\xfe",
                ]
            )
        )
        return Frame(0x8, payload)
    return Frame(0x9 if kind == "ping" else 0xA, draw(st.binary(max_size=125)))


@st.composite
def _broken(draw: Any) -> Frame:
    payload = draw(_small)
    kind = draw(
        st.sampled_from(
            [
                "unmasked",
                "rsv",
                "opcode",
                "continuation",
                "unfinished",
                "control-fragment",
                "control-long",
                "non-minimal",
            ]
        )
    )
    if kind == "unmasked":
        return Frame(0x1, payload, masked=False)
    if kind == "rsv":
        return Frame(draw(st.sampled_from([0x1, 0x2, 0x9])), payload, rsv=draw(st.integers(1, 7)))
    if kind == "opcode":
        return Frame(draw(st.sampled_from([0x3, 0x7, 0xB, 0xF])), payload)
    if kind == "continuation":
        return Frame(0x0, payload, fin=draw(st.booleans()))
    if kind == "unfinished":  # a fragmented message that the next frames interrupt
        return Frame(draw(st.sampled_from([0x1, 0x2])), payload, fin=False)
    if kind == "control-fragment":
        return Frame(0x9, payload[:125], fin=False)
    if kind == "control-long":
        return Frame(0x9, b"z" * 126)
    return Frame(draw(st.sampled_from([0x1, 0x2])), payload[:100], form=draw(st.sampled_from(["16", "64"])))


@st.composite
def _message_frames(draw: Any) -> list[Frame]:
    """One message: whole, or fragmented with control frames between the fragments."""
    opcode = draw(st.sampled_from([0x1, 0x1, 0x1, 0x2]))
    payload = draw(_payload(opcode == 0x1))
    if draw(st.integers(0, 3)):
        return [Frame(opcode, payload)]
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), min_size=1, max_size=4)))
    pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=False)]
    frames = []
    for i, piece in enumerate(pieces):
        frames.append(Frame(opcode if i == 0 else 0x0, piece, fin=i == len(pieces) - 1))
        if i < len(pieces) - 1 and draw(st.integers(0, 2)) == 0:
            frames.append(Frame(draw(st.sampled_from([0x9, 0xA])), draw(st.binary(max_size=20))))
    return frames


_sequence = st.lists(
    st.one_of(
        _message_frames(),
        _message_frames(),
        _message_frames(),
        _control().map(lambda f: [f]),
        _broken().map(lambda f: [f]),
    ),
    max_size=8,
).map(lambda groups: [frame for group in groups for frame in group])


@settings(max_examples=400)
@given(_sequence, st.lists(st.integers(0, 1 << 20), max_size=12), st.sampled_from([60, 300, 1 << 20]))
def test_the_reader_gives_what_wsproto_gives(frames: list[Frame], cuts: list[int], max_size: int) -> None:
    data = b"".join(frame.encode() for frame in frames)
    assert run_reader(data, cuts, max_size) == reference(frames, max_size)


def test_ordinary_frames_take_the_shortcut(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole text frames never reach wsproto (so the property test above compares the shortcut)."""
    reader = FrameReader(Connection(ConnectionType.SERVER))
    monkeypatch.setattr(reader, "_to_wsproto", lambda data: pytest.fail("went to wsproto"))
    texts = ["", "a", "é" * 50, "x" * 125, "y" * 126, "z" * 60000]
    reader.receive_data(b"".join(text_frame(t) for t in texts))
    assert reader.messages == texts


def test_a_frame_split_anywhere_is_collected_whole() -> None:
    message = json.dumps({"type": "ACK", "ack_event_id": 1, "window_size": 2})
    data = text_frame(message) * 3
    for cut in range(len(data)):
        reader = FrameReader(Connection(ConnectionType.SERVER))
        reader.receive_data(data[:cut])
        reader.receive_data(data[cut:])
        assert reader.messages == [message] * 3


def test_an_oversized_frame_is_refused_at_its_header() -> None:
    reader = FrameReader(Connection(ConnectionType.SERVER), max_message_size=100)
    frame = text_frame("x" * 101)
    reader.receive_data(text_frame("ok") + frame[:4])  # the header alone says it all
    assert reader.messages == ["ok"]
    assert reader.failure is not None and reader.failure.code == 1009
    # Fragments count together.
    reader = FrameReader(Connection(ConnectionType.SERVER), max_message_size=100)
    reader.receive_data(text_frame("a" * 60, fin=False) + client_frame(b"b" * 41, 0x0))
    assert reader.messages == [] and reader.failure is not None and reader.failure.code == 1009


def test_a_64_bit_length_with_the_top_bit_set_is_a_protocol_error_not_a_size() -> None:
    header = b"\x81\xff" + ((1 << 63) | 5).to_bytes(8, "big") + b"\x00\x00\x00\x00"
    reader = FrameReader(Connection(ConnectionType.SERVER), max_message_size=100)
    reader.receive_data(header + b"hello")
    assert reader.failure is not None and reader.failure.code == 1002  # as wsproto says
    wsproto = Connection(ConnectionType.SERVER)
    wsproto.receive_data(header + b"hello")
    assert [(type(e), e.code) for e in wsproto.events()] == [(CloseConnection, 1002)]


def test_after_a_1009_the_close_handshake_can_still_be_read() -> None:
    """The refused frame is skipped, so a client answering our close frame is understood."""
    conn = Connection(ConnectionType.SERVER)
    reader = FrameReader(conn, max_message_size=100)
    frame = text_frame("x" * 5000)
    reader.receive_data(frame[:1000])
    assert reader.failure is not None and reader.failure.code == 1009
    conn.send(CloseConnection(1009, "too big"))  # what aclose() does
    reader.draining = True
    reader.receive_data(frame[1000:] + text_frame("dropped") + client_frame(close_payload(1009), 0x8))
    assert reader.peer_close is not None and reader.peer_close.code == 1009
    assert conn.state is ConnectionState.CLOSED


@settings(max_examples=200)
@given(
    st.lists(
        st.text(max_size=300)
        | st.builds(lambda c, n: c * n, st.sampled_from("aé"), st.integers(32760, 65540)),
        max_size=4,
    )
)
def test_server_frames_are_the_bytes_wsproto_sends(messages: list[str]) -> None:
    conn = Connection(ConnectionType.SERVER)
    assert encode_text_frames(messages) == b"".join(conn.send(TextMessage(data=m)) for m in messages)


def test_handshake_answers_like_wsproto() -> None:
    head = (
        b"GET /x HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
    )
    response, conn = server_handshake(head)
    assert response.startswith(b"HTTP/1.1 101 ")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in response
    assert b"extensions" not in response.lower()  # no compression: frames are never RSV1
    assert conn.state is ConnectionState.OPEN
    with pytest.raises(lean.HandshakeError):
        server_handshake(head.replace(b"Upgrade: websocket", b"Upgrade: websocket, h2c"))


# --- over loopback, through the HTTP front ---------------------------------------------------------


@lean_websocket
async def _echo(ws: WebSocket, request: HttpRequest) -> None:
    """Echoes each batch of messages as one JSON list (so a test sees what arrived together)."""
    while True:
        messages = await ws.receive_messages()
        if "boom" in messages:
            raise RuntimeError("handler bug")
        if "bye" in messages:
            return
        await ws.send_messages([json.dumps([m if isinstance(m, str) else m.hex() for m in messages])])


@pytest.fixture
async def port(nursery: trio.Nursery) -> int:
    router = Router()
    router.websocket("/lean", _echo)
    listeners = await nursery.start(serve_http, router, "127.0.0.1", 0)
    return listeners[0].socket.getsockname()[1]


async def test_a_library_client_talks_and_closes_promptly(port: int) -> None:
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/lean") as ws:
        await ws.send_message("hello")
        assert json.loads(await ws.get_message()) == ["hello"]
        await ws.send_message(b"\x00\x01")
        assert json.loads(await ws.get_message()) == ["0001"]
        started = trio.current_time()
    assert ws.closed is not None and ws.closed.code == 1000
    assert trio.current_time() - started < 2  # the server answered the close (no 5 s wait)


async def test_messages_of_one_write_arrive_together(port: int) -> None:
    client = await RawClient.open(port, "/lean")
    await client.send(text_frame("a") + text_frame("b") + client_frame(b"\x01", 0x2) + text_frame("c"))
    assert json.loads(await client.text()) == ["a", "b", "01", "c"]


async def test_frames_pipelined_behind_the_handshake_are_read(port: int) -> None:
    client = await RawClient.open(port, "/lean", first=text_frame("early") + text_frame("bird"))
    assert json.loads(await client.text()) == ["early", "bird"]


async def test_fragmented_message_with_a_ping_between_fragments(port: int) -> None:
    client = await RawClient.open(port, "/lean")
    await client.send(text_frame("hé", fin=False))
    await trio.sleep(0.05)
    await client.send(client_frame(b"p1", 0x9) + client_frame(b"llo ", 0x0, fin=False))
    with trio.fail_after(10):
        assert await client.frame() == (True, 0xA, b"p1")  # pong, before the message is complete
    await client.send(client_frame("wörld".encode(), 0x0))
    assert json.loads(await client.text()) == ["héllo wörld"]


async def test_a_ping_is_answered(port: int) -> None:
    client = await RawClient.open(port, "/lean")
    await client.send(client_frame(b"are you there", 0x9) + client_frame(b"", 0x9))
    with trio.fail_after(10):
        assert await client.frame() == (True, 0xA, b"are you there")
        assert await client.frame() == (True, 0xA, b"")


async def test_an_oversized_message_is_closed_with_1009(port: int) -> None:
    client = await RawClient.open(port, "/lean")
    size = lean.DEFAULT_MAX_MESSAGE_SIZE + 1
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send, text_frame("x" * size))  # the server reads (and drops) it all
        code, reason = await client.close_frame()
    assert code == 1009 and "maximum message size" in reason
    started = trio.current_time()
    await client.send(client_frame(close_payload(1009), 0x8))
    await client.eof()  # the server closes once we answered: no waiting for a timeout
    assert trio.current_time() - started < 2


@pytest.mark.parametrize(
    ("garbage", "code"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", 1002),  # not frames at all
        (client_frame(b"hi", masked=False), 1002),
        (client_frame(b"hi", rsv=4), 1002),
        (client_frame(b"hi", 0x0), 1002),  # a continuation of nothing
        (client_frame(b"hi", form="16"), 1002),
        (client_frame(b'{"a": "\xff\xfe"}'), 1007),
        (text_frame("a", fin=False) + text_frame("b"), 1002),
    ],
)
async def test_a_protocol_violation_is_closed_and_others_are_served(
    port: int, garbage: bytes, code: int
) -> None:
    bad = await RawClient.open(port, "/lean")
    good = await RawClient.open(port, "/lean")
    await bad.send(text_frame("before") + garbage)
    assert json.loads(await bad.text()) == ["before"]
    assert (await bad.close_frame())[0] == code
    await bad.eof()  # the connection is dropped (what it sends after the violation cannot be parsed)
    await good.send(text_frame("still here"))
    assert json.loads(await good.text()) == ["still here"]


async def test_a_handler_that_returns_closes_with_1000_and_one_that_fails_with_1011(port: int) -> None:
    client = await RawClient.open(port, "/lean")
    await client.send(text_frame("bye"))
    assert await client.close_frame() == (1000, "")
    await client.send(client_frame(close_payload(1000), 0x8))
    await client.eof(timeout=2)
    client = await RawClient.open(port, "/lean")
    await client.send(text_frame("boom"))
    assert (await client.close_frame())[0] == 1011


async def test_a_client_close_is_answered(port: int) -> None:
    client = await RawClient.open(port, "/lean")
    await client.send(text_frame("last") + client_frame(close_payload(1001, "going away"), 0x8))
    assert json.loads(await client.text()) == ["last"]  # what came before the close is handled
    assert await client.close_frame() == (1001, "going away")
    await client.eof(timeout=2)


async def test_a_handshake_wsproto_refuses_gets_400(port: int) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(
        b"GET /lean HTTP/1.1\r\nHost: x\r\nUpgrade: websocket, h2c\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    data = b""
    with trio.fail_after(10):
        while chunk := await stream.receive_some(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 ")
    assert b"bad websocket upgrade" in data


async def test_an_interrupted_write_drops_the_connection(nursery: trio.Nursery) -> None:
    """A send cancelled mid-frame (the client stopped reading) poisons the connection: no further
    frame, not even a close frame, is written after it, and closing just drops the transport."""
    outcome: dict[str, Any] = {}

    @lean_websocket
    async def flood(ws: WebSocket, request: HttpRequest) -> None:
        await ws.receive_messages()
        with trio.move_on_after(0.5) as scope:
            while True:
                await ws.send_messages(["z" * 60000] * 4)
        outcome["cancelled"] = scope.cancelled_caught
        with pytest.raises(lean.ConnectionClosed):
            await ws.send_messages(["more"])
        started = trio.current_time()
        await ws.aclose()
        outcome["close_seconds"] = trio.current_time() - started

    router = Router()
    router.websocket("/flood", flood)
    listeners = await nursery.start(serve_http, router, "127.0.0.1", 0)
    client = await RawClient.open(listeners[0].socket.getsockname()[1], "/flood", rcvbuf=4096)
    await client.send(text_frame("go"))
    with trio.fail_after(10):
        while "close_seconds" not in outcome:
            await trio.sleep(0.05)
    assert outcome["cancelled"] and outcome["close_seconds"] < 0.5
    # What the client still reads ends mid-frame or right after a frame, never in a close frame.
    while (frame := await client.frame()) is not None:
        assert frame[1] == 0x1


def test_the_route_marker_reaches_the_router() -> None:
    class Server:
        @lean_websocket
        async def handle(self, ws: WebSocket, request: HttpRequest) -> None:
            pass

    async def plain(ws: Any, request: HttpRequest) -> None:
        pass

    assert lean.is_lean_websocket(Server().handle) and lean.is_lean_websocket(_echo)
    assert not lean.is_lean_websocket(plain)


def test_frames_are_masked_by_the_support_client() -> None:
    frame = client_frame(b"abcd", key=b"\x01\x02\x03\x04")
    assert frame == b"\x81\x84\x01\x02\x03\x04" + bytes(
        a ^ b for a, b in zip(b"abcd", b"\x01\x02\x03\x04", strict=True)
    )
    assert len(os.urandom(4)) == 4


async def test_a_client_that_pings_but_never_reads_is_dropped(autojump_clock: trio.testing.MockClock) -> None:
    """In memory (so the mock clock is honest): the pong cannot be written, the server gives up."""
    router = Router()
    router.websocket("/lean", _echo)
    client, server = trio.testing.lockstep_stream_pair()
    ended: list[float] = []

    async def serve() -> None:
        await serve_http_stream(server, router)
        ended.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        await client.send_all(
            b"GET /lean HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += await client.receive_some(4096)
        assert head.startswith(b"HTTP/1.1 101")
        await client.send_all(client_frame(b"are you there", 0x9))  # and never read the answer
        started = trio.current_time()
        with trio.fail_after(300):
            while not ended:
                await trio.sleep(1)
        assert lean.CONTROL_TIMEOUT <= ended[0] - started < lean.CONTROL_TIMEOUT + 5
