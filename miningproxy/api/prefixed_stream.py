"""A stream that replays bytes already read before reading from the wrapped stream.

The HTTP front parses a request head itself before it knows the request is a websocket upgrade;
the websocket library must then see the connection from its first byte. This wrapper hands back
the consumed bytes first and forwards everything else.

wsproto (under trio-websocket) drops any bytes that reach it after the handshake request and before
the server accepts: a client frame sent right behind the request head would be lost. So the bytes
after the head can be *held*: ``receive_some`` returns the head, then waits until :meth:`release`
(called once the handshake is accepted) before it returns the held bytes or reads the stream.
"""

from __future__ import annotations

import trio


class PrefixedStream(trio.abc.HalfCloseableStream):
    """``prefix`` is returned by ``receive_some`` before anything else; with ``hold=True``, the
    ``held`` bytes and the wrapped stream only after :meth:`release`."""

    def __init__(
        self, prefix: bytes, stream: trio.abc.Stream, *, held: bytes = b"", hold: bool = False
    ) -> None:
        self._prefix = memoryview(bytes(prefix))
        self._held = memoryview(bytes(held))
        self._released = trio.Event()
        if not hold:
            self._released.set()
        self.stream = stream

    def release(self) -> None:
        self._released.set()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            chunk, self._prefix = _split(self._prefix, max_bytes)
            # A checkpoint keeps the Stream contract (every receive may yield) without delaying.
            await trio.lowlevel.checkpoint()
            return chunk
        await self._released.wait()
        if self._held:
            chunk, self._held = _split(self._held, max_bytes)
            await trio.lowlevel.checkpoint()
            return chunk
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        send_eof = getattr(self.stream, "send_eof", None)
        if send_eof is None:
            raise trio.BrokenResourceError("the wrapped stream cannot half-close")
        await send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


def _split(view: memoryview, max_bytes: int | None) -> tuple[bytes, memoryview]:
    end = len(view) if max_bytes is None else min(len(view), max_bytes)
    return bytes(view[:end]), view[end:]
