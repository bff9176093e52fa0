"""A raw websocket client for tests: the handshake by hand, any frame (valid or not) built here."""

from __future__ import annotations

import os
import socket
import struct

import trio

from tests.stream_support import receive_or_eof


def client_frame(
    payload: bytes,
    opcode: int = 0x1,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    form: str | None = None,
    key: bytes | None = None,
) -> bytes:
    """One client frame. ``form`` picks the length encoding: "7", "16" or "64" bits (default: the
    minimal one; any other is a protocol error a server must refuse)."""
    size = len(payload)
    form = form or ("7" if size < 126 else "16" if size < 1 << 16 else "64")
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if masked else 0
    if form == "7":
        assert size < 126
        head = bytes((b0, mask_bit | size))
    elif form == "16":
        head = bytes((b0, mask_bit | 126)) + struct.pack("!H", size)
    else:
        head = bytes((b0, mask_bit | 127)) + struct.pack("!Q", size)
    if not masked:
        return head + payload
    key = os.urandom(4) if key is None else key
    stream = (key * (size // 4 + 1))[:size]
    body = (
        (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(size, "big")
        if size
        else b""
    )
    return head + key + body


def text_frame(text: str, **kwargs) -> bytes:
    return client_frame(text.encode("utf-8"), 0x1, **kwargs)


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode("utf-8")


class RawClient:
    """A websocket client on a raw socket: what it sends is exactly what the test built."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def open(cls, port: int, path: str, *, first: bytes = b"", rcvbuf: int | None = None) -> RawClient:
        """Connect and handshake; ``first`` is sent in the same write as the upgrade request."""
        sock = trio.socket.socket()
        if rcvbuf is not None:  # before connecting, so the window we advertise stays small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect(("127.0.0.1", port))
        stream = trio.SocketStream(sock)
        await stream.send_all(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            + first
        )
        client = cls(stream)
        with trio.fail_after(10):
            while b"\r\n\r\n" not in client.buffer:
                chunk = await stream.receive_some(4096)
                assert chunk, "closed during the handshake"
                client.buffer += chunk
        head, client.buffer = client.buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head  # RFC 6455's example key and answer
        return client

    async def send(self, data: bytes) -> bool:
        """Write raw bytes; False once the server has gone."""
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def frame(self) -> tuple[bool, int, bytes] | None:
        """The next server frame (fin, opcode, payload), checked unmasked; None at EOF."""
        while True:
            if len(self.buffer) >= 2:
                b0, b1 = self.buffer[0], self.buffer[1]
                assert not b1 & 0x80, "a server frame must not be masked"
                assert not b0 & 0x70, "no extension was negotiated"
                size, offset = b1 & 0x7F, 2
                if size == 126 and len(self.buffer) >= 4:
                    (size,), offset = struct.unpack("!H", self.buffer[2:4]), 4
                elif size == 127 and len(self.buffer) >= 10:
                    (size,), offset = struct.unpack("!Q", self.buffer[2:10]), 10
                if size < 126 or offset > 2:
                    if len(self.buffer) >= offset + size:
                        payload = self.buffer[offset : offset + size]
                        self.buffer = self.buffer[offset + size :]
                        return bool(b0 & 0x80), b0 & 0x0F, payload
            data = await receive_or_eof(self.stream)
            if not data:
                return None
            self.buffer += data

    async def text(self, timeout: float = 10) -> str:
        """The next text message (unfragmented: the server never fragments)."""
        with trio.fail_after(timeout):
            while True:
                frame = await self.frame()
                assert frame is not None, "closed by the server"
                fin, opcode, payload = frame
                assert opcode != 0x8, f"closed by the server: {payload!r}"
                if opcode == 0x1:
                    assert fin
                    return payload.decode("utf-8")

    async def close_frame(self, timeout: float = 10) -> tuple[int | None, str] | None:
        """Read until the server's close frame: (code, reason); None at EOF without one."""
        with trio.fail_after(timeout):
            while (frame := await self.frame()) is not None:
                if frame[1] == 0x8:
                    payload = frame[2]
                    if len(payload) < 2:
                        return None, ""
                    return struct.unpack("!H", payload[:2])[0], payload[2:].decode("utf-8")
        return None

    async def eof(self, timeout: float = 10) -> None:
        """Wait until the server closes the TCP connection (frames on the way are dropped)."""
        with trio.fail_after(timeout):
            while await self.frame() is not None:
                pass

    async def aclose(self) -> None:
        await self.stream.aclose()
