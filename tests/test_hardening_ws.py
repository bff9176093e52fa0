"""Hostile websocket clients against the whole app (/ws, /event_ws, /pool/event_ws, /mining).

A raw client (the handshake by hand, frames built here) sends what a library would refuse to:
frames over the 1 MiB message limit, text frames that are not UTF-8, deeply nested JSON, and
clients that never read. Each gets the protocol's answer (a close code or the endpoint's error
message) or is cut off, and a well-behaved client on the same path is served throughout.
"""

from __future__ import annotations

import json
import os
import socket
import struct

import pytest
import trio
from trio_websocket import open_websocket_url

from miningproxy.api.admin_session import MALFORMED
from miningproxy.devnode.server import DevNode
from miningproxy.devnode.settings import DevNodeSettings
from tests.stream_support import receive_or_eof
from tests.test_hardening_support import start_app

PATHS = ["/ws", "/event_ws", "/pool/event_ws", "/mining"]
MIB = 1 << 20


class RawWs:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream, self.buffer = stream, b""

    @classmethod
    async def open(cls, port: int, path: str, *, rcvbuf: int | None = None) -> RawWs:
        sock = trio.socket.socket()
        if rcvbuf is not None:  # before connecting, so the window we advertise stays small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect(("127.0.0.1", port))
        stream = trio.SocketStream(sock)
        await stream.send_all(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        ws = cls(stream)
        while b"\r\n\r\n" not in ws.buffer:
            ws.buffer += await stream.receive_some(4096)
        head, ws.buffer = ws.buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        return ws

    async def send(self, payload: bytes, opcode: int = 0x1, *, copies: int = 1) -> bool:
        """Send ``copies`` frames in one write; False once the server has closed."""
        try:
            await self.stream.send_all(client_frame(payload, opcode) * copies)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False  # the server gave up on us mid-frame: its close code tells why
        return True

    async def frame(self) -> tuple[int, bytes] | None:
        """The next frame from the server (opcode, payload); None at EOF."""
        while True:
            if len(self.buffer) >= 2:
                opcode, size = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F
                offset = 2
                if size == 126:
                    (size,), offset = struct.unpack("!H", self.buffer[2:4]), 4
                elif size == 127:
                    (size,), offset = struct.unpack("!Q", self.buffer[2:10]), 10
                if len(self.buffer) >= offset + size:
                    payload = self.buffer[offset : offset + size]
                    self.buffer = self.buffer[offset + size :]
                    return opcode, payload
            data = await receive_or_eof(self.stream)
            if not data:
                return None
            self.buffer += data

    async def close_code(self) -> int | None:
        with trio.fail_after(10):
            while (frame := await self.frame()) is not None:
                if frame[0] == 0x8:
                    return struct.unpack("!H", frame[1][:2])[0] if len(frame[1]) >= 2 else None
        return None

    async def text(self) -> dict:
        with trio.fail_after(10):
            while True:
                frame = await self.frame()
                assert frame is not None, "closed"
                if frame[0] == 0x1:
                    return json.loads(frame[1])


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One masked client frame (FIN set)."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    key = int.from_bytes(mask * ((size + 3) // 4), "big") >> (8 * (-size % 4))
    masked = (int.from_bytes(payload, "big") ^ key).to_bytes(size, "big") if size else b""
    return head + mask + masked


@pytest.fixture
async def app(nursery, tmp_path):
    node = DevNode(DevNodeSettings(block_weight=12.0, min_block_weight=8.0))
    return await start_app(
        nursery,
        node,
        tmp_path,
        events={"send_timeout": 1.0},
        mining_ws={"send_timeout": 1.0},
        admin_ws={"send_timeout": 1.0},
    )


async def still_served(port: int, path: str) -> None:
    """A well-behaved client of ``path`` gets its first answer."""
    async with open_websocket_url(f"ws://127.0.0.1:{port}{path}") as ws:
        with trio.fail_after(10):
            if path == "/ws":
                await ws.send_message('{"type": "ping"}')
                while json.loads(await ws.get_message())["type"] != "pong":
                    pass
            elif path == "/mining":
                await ws.send_message('{"id": 7, "method": "mining.refresh", "params": []}')
                while json.loads(await ws.get_message()).get("id") != 7:
                    pass
            else:
                await ws.send_message('{"type": "START_STREAM", "last_ack_event_id": null, "window_size": 1}')
                assert json.loads(await ws.get_message())["type"] in ("EVENT", "EVENT_WS_NOT_RUNNING")


@pytest.mark.parametrize("path", PATHS)
async def test_hostile_frames_get_the_protocol_answer_and_others_are_served(app, path):
    port = app.http_port
    big = await RawWs.open(port, path)
    await big.send(b"[" + b" " * MIB + b"]")
    assert await big.close_code() == 1009  # message too big
    bad = await RawWs.open(port, path)
    await bad.send(b'{"type": "\xff\xfe"}')
    # Invalid UTF-8: wsproto reports 1007, and trio-websocket drops the connection without a
    # close frame (its state machine never answers a close it raised itself): the client is cut.
    assert await bad.close_code() in (1007, None)
    nested = await RawWs.open(port, path)
    await nested.send(b"[" * 100_000)
    answer = await nested.text()
    while answer.get("type") == "capabilities" or "method" in answer:  # greetings, notifies
        answer = await nested.text()
    if path == "/ws":
        assert answer == MALFORMED, answer
    elif path == "/mining":
        assert answer["error"]["code"] == -32700
    else:
        assert answer["type"] in ("VALIDATION_ERROR", "EVENT_WS_NOT_RUNNING"), answer
    await still_served(port, path)


@pytest.mark.parametrize("path", PATHS)
async def test_a_client_that_never_reads_is_cut_off_and_others_are_served(app, path):
    # Each request gets an answer the client never reads: its answers pile up in the proxy,
    # which cuts it off (outbox overflow, or a send blocked for send_timeout).
    port = app.http_port
    deaf = await RawWs.open(port, path, rcvbuf=4096)
    request = {
        "/mining": b'{"id": 1, "method": "mining.refresh", "params": []}',
        "/ws": b"x",  # answered "Malformed command"
    }.get(path, b'{"type": "ACK", "ack_event_id": 1, "window_size": 1}')  # an error frame each

    async def flood() -> None:
        while await deaf.send(request, copies=500):
            await trio.sleep(0)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood)  # ends when the proxy has dropped the connection
            await still_served(port, path)  # served meanwhile
    await still_served(port, path)
