"""A lean server-side websocket connection for high-rate routes (the event streams), on wsproto.

trio-websocket gives every connection a reader task that parses one message at a time with wsproto
and hands it over through a memory channel: a consumer that acknowledges every event costs a
scheduler round trip, a channel hop and a full wsproto frame parse (~25 us) per ACK, and sending
costs a wsproto frame build (~9 us) per event. :class:`WebSocket` serves the same protocol to one
handler task without any of that: :meth:`WebSocket.receive_messages` returns *every* complete
message of one socket read, and :meth:`WebSocket.send_messages` writes many text messages in one
write.

The protocol is wsproto's (RFC 6455): the handshake (:func:`server_handshake`), close handshake, pings,
fragmented messages, control frames between fragments, masking, UTF-8 validation and every
protocol error go through a wsproto ``Connection``. :class:`FrameReader` only finds frame
boundaries from the headers so it can take one shortcut: a complete, unfragmented, masked text
frame with a valid header outside a fragmented message -- a client's ordinary message -- is
unmasked and decoded here, which gives exactly what wsproto would give for that frame. Anything
else (a partial or large frame, fragments, control frames, binary, any unusual header) is passed
to wsproto byte for byte, so its state always matches the stream. Server frames are unmasked text
frames without extensions: :func:`encode_text_frames` builds them (the same bytes as wsproto).

Limits: messages over ``max_message_size`` bytes are refused with close code 1009 as soon as a frame
header announces them (nothing is buffered beyond it); a protocol violation is answered with
wsproto's close code (1002, or 1007 for invalid UTF-8) and ends the connection. A write that is
interrupted (cancelled: the client stopped reading) leaves a partial frame on the wire, so after
one nothing more is written: :meth:`WebSocket.aclose` then just drops the transport, as
:meth:`WebSocket.abort` does.

One task receives at a time; any number of tasks may send (writes are serialized by a lock).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    TextMessage,
)
from wsproto.events import Request as WsRequest
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError

if TYPE_CHECKING:
    from miningproxy.api.http import HttpRequest

DEFAULT_MAX_MESSAGE_SIZE = 1 << 20  # as trio-websocket's default, so every route has the same limit
RECEIVE_SIZE = 65536
FAST_FRAME_MAX = 65536  # a frame up to this size (header included) is collected whole and decoded here
DRAIN_MAX_BYTES = 4 << 20  # after our close frame: how much more is read (and dropped) at most
FAIL_LINGER = 0.5  # seconds a protocol violator's bytes are still drained after our close frame
CONTROL_TIMEOUT = 30.0

CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_ABNORMAL = 1006  # never sent: the connection ended without a close frame
CLOSE_MESSAGE_TOO_BIG = 1009


@dataclass(frozen=True, slots=True)
class CloseReason:
    code: int
    reason: str | None = None


class ConnectionClosed(Exception):
    """The websocket is closed (or closing): ``reason`` says how."""

    def __init__(self, reason: CloseReason) -> None:
        super().__init__(reason)
        self.reason = reason


# --- receiving, sans-IO --------------------------------------------------------------------------


class FrameReader:
    """Client frames in, complete messages out (sans-IO); see the module docstring.

    After :meth:`receive_data`: ``messages`` holds the complete messages (``str`` for text, ``bytes``
    for binary), ``replies`` the pong frames to send. Once the peer closed (``peer_close``) or broke
    the protocol (``failure``: the close frame to answer with), nothing more is parsed -- except in
    ``draining`` mode (after our close frame went out), where parsing goes on while the framing is
    still known (after a 1009 it is: the refused frame is skipped), so the peer's close is seen.
    """

    def __init__(self, connection: Connection, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.connection = connection
        self.max_message_size = max_message_size
        self.messages: list[str | bytes] = []
        self.replies: list[bytes] = []
        self.peer_close: CloseConnection | None = None
        self.failure: CloseConnection | None = None
        self.framing_intact = True  # False after wsproto refused the stream: it cannot be parsed on
        self.draining = False
        self._buffer = bytearray()
        self._owed = 0  # bytes of the current frame that still go to wsproto
        self._skip = 0  # bytes of a refused oversized frame still to drop
        self._fragmenting = False  # a fragmented data message is in progress (in wsproto)
        self._message_size = 0  # payload bytes of that message so far
        self._parts: list[Any] = []

    @property
    def done(self) -> bool:
        """The peer closed, or broke the protocol."""
        return self.peer_close is not None or self.failure is not None

    def _halted(self) -> bool:
        return (
            self.peer_close is not None
            or not self.framing_intact
            or (self.failure is not None and not self.draining)
        )

    def receive_data(self, data: bytes) -> None:
        if self._halted():
            return
        buf = self._buffer
        buf += data
        end = len(buf)
        pos = 0
        messages = self.messages
        while pos < end:
            if self._skip:
                take = min(self._skip, end - pos)
                self._skip -= take
                pos += take
                continue
            if self._owed:
                take = min(self._owed, end - pos)
                self._owed -= take
                self._to_wsproto(bytes(buf[pos : pos + take]))
                pos += take
                if self._halted():
                    break
                continue
            if end - pos < 2:
                break
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            header = 2
            minimal = True
            if length == 126:
                if end - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                header = 4
                minimal = length > 125
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                header = 10
                minimal = 0xFFFF < length < 1 << 63
            if b1 & 0x80:
                header += 4
            opcode = b0 & 0x0F
            # A header wsproto accepts, of a data frame in a valid sequence: its size can be checked
            # now, and the ordinary text frame can take the shortcut.
            valid = (
                minimal and b1 & 0x80 and not b0 & 0x70 and opcode < 3 and (opcode == 0) == self._fragmenting
            )
            if valid:
                if (self._message_size + length if opcode == 0 else length) > self.max_message_size:
                    self._fail(
                        CLOSE_MESSAGE_TOO_BIG, f"Exceeded maximum message size: {self.max_message_size} bytes"
                    )
                    self._skip = header + length  # the refused frame is dropped unparsed
                    if self.draining:
                        continue
                    break
                if b0 == 0x81:
                    total = header + length
                    if end - pos >= total:
                        start = pos + header
                        payload = buf[start : start + length]
                        if length:
                            mask = buf[start - 4 : start]
                            key = (mask * ((length >> 2) + 1))[:length]
                            payload = (
                                int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")
                            ).to_bytes(length, "little")
                        try:
                            messages.append(payload.decode("utf-8"))
                        except UnicodeDecodeError:
                            pass  # wsproto answers it (1007)
                        else:
                            pos += total
                            continue
                    elif total <= FAST_FRAME_MAX:
                        break  # wait for the rest of the frame
                fin = b0 & 0x80
                self._fragmenting = not fin
                self._message_size = 0 if fin else (self._message_size + length if opcode == 0 else length)
            elif end - pos < header:
                break  # a whole header first (wsproto refuses a bad one at once)
            # Everything else goes to wsproto: exactly this frame's bytes.
            self._owed = header + length
        del buf[:pos]

    def _to_wsproto(self, data: bytes) -> None:
        connection = self.connection
        connection.receive_data(data)
        state = connection.state
        for event in connection.events():
            if isinstance(event, TextMessage | BytesMessage):
                self._parts.append(event.data)
                if event.message_finished:
                    parts, self._parts = self._parts, []
                    if isinstance(event, TextMessage):
                        self.messages.append("".join(parts))
                    else:
                        self.messages.append(b"".join(parts))
            elif isinstance(event, Ping):
                if connection.state is ConnectionState.OPEN:
                    self.replies.append(connection.send(event.response()))
            elif isinstance(event, CloseConnection):
                # wsproto reports a protocol violation as a CloseConnection too (with the code to
                # answer), but only a close frame from the peer moves it to a closing state.
                if connection.state is state:
                    self._fail(event.code, event.reason)
                    self.framing_intact = False  # wsproto's parser is done with this stream
                else:
                    self.peer_close = event
                return

    def _fail(self, code: int, reason: str | None) -> None:
        if self.failure is None:
            self.failure = CloseConnection(code=code, reason=reason)


# --- sending, sans-IO ----------------------------------------------------------------------------


def encode_text_frames(messages: Sequence[str]) -> bytes:
    """Server text frames (FIN, unmasked, no extensions) for ``messages``, concatenated: the bytes
    wsproto's server connection would send for each ``TextMessage``."""
    parts: list[bytes] = []
    append = parts.append
    for message in messages:
        data = message.encode("utf-8")
        size = len(data)
        if size < 126:
            append(bytes((0x81, size)))
        elif size < 65536:
            append(b"\x81\x7e" + size.to_bytes(2, "big"))
        else:
            append(b"\x81\x7f" + size.to_bytes(8, "big"))
        append(data)
    return b"".join(parts)


def encode_binary_frame(message: bytes) -> bytes:
    size = len(message)
    if size < 126:
        head = bytes((0x82, size))
    elif size < 65536:
        head = b"\x82\x7e" + size.to_bytes(2, "big")
    else:
        head = b"\x82\x7f" + size.to_bytes(8, "big")
    return head + bytes(message)


# --- the connection ------------------------------------------------------------------------------


class WebSocket:
    """A server websocket over a trio stream whose handshake is done (see :func:`server_handshake`).

    ``received``: bytes already read behind the handshake (a client may send frames right away).
    ``control_timeout``: how long answering a ping may block (a client that pings but never reads)
    before the connection is dropped.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        connection: Connection,
        *,
        received: bytes = b"",
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        receive_size: int = RECEIVE_SIZE,
        control_timeout: float = CONTROL_TIMEOUT,
    ) -> None:
        self.stream = stream
        self.control_timeout = control_timeout
        self._connection = connection
        self._reader = FrameReader(connection, max_message_size=max_message_size)
        self._receive_size = receive_size
        self._lock = trio.Lock()
        self._closed: CloseReason | None = None
        self._broken = False  # a write was interrupted or failed: nothing more can be written
        self._aborted = False
        self._pending = received

    @property
    def closed(self) -> CloseReason | None:
        """Why the connection closed, once it has (or is closing); None while it is open."""
        return self._closed

    # --- receiving -------------------------------------------------------------------------------

    async def receive_messages(self) -> list[str | bytes]:
        """Wait for at least one complete message; returns every message complete so far, in order.

        Pings are answered on the way. Raises :class:`ConnectionClosed` once the peer closed, broke
        the protocol (the close frame saying so is sent by :meth:`aclose`), or went away; messages
        that arrived before that are returned first.
        """
        reader = self._reader
        while True:
            if reader.messages:
                messages, reader.messages = reader.messages, []
                return messages
            if self._closed is not None:
                raise ConnectionClosed(self._closed)
            if reader.peer_close is not None:
                self._closed = CloseReason(int(reader.peer_close.code), reader.peer_close.reason)
                continue
            if reader.failure is not None:
                self._closed = CloseReason(int(reader.failure.code), reader.failure.reason)
                continue
            data = await self._read_more()
            if not data:
                self._broken = True  # nobody left to read a close frame
                self._closed = CloseReason(CLOSE_ABNORMAL, "the connection was lost")
                continue
            reader.receive_data(data)
            if reader.replies:
                replies, reader.replies = reader.replies, []
                with trio.move_on_after(self.control_timeout) as scope:
                    await self._write(b"".join(replies))
                if scope.cancelled_caught:
                    await self.abort()
                    raise ConnectionClosed(self._closed or CloseReason(CLOSE_ABNORMAL))

    # --- sending ---------------------------------------------------------------------------------

    async def send_messages(self, messages: Sequence[str]) -> None:
        """Send text messages, all in one write."""
        self._check_open()
        await self._write(encode_text_frames(messages))

    async def send_message(self, message: str | bytes) -> None:
        self._check_open()
        if isinstance(message, str):
            await self._write(encode_text_frames((message,)))
        else:
            await self._write(encode_binary_frame(message))

    def _check_open(self) -> None:
        # Until the handler has seen the close (receive_messages raised), it may still answer the
        # messages that arrived before it: they go out ahead of the close frame.
        if self._closed is not None:
            raise ConnectionClosed(self._closed)

    async def _write(self, data: bytes) -> None:
        async with self._lock:
            if self._broken:
                raise ConnectionClosed(self._closed or CloseReason(CLOSE_ABNORMAL, "the connection was lost"))
            # A cancellation now leaves nothing half-written; once send_all runs, it might.
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._broken = True
                if self._closed is None:
                    self._closed = CloseReason(CLOSE_ABNORMAL, "the connection was lost")
                raise ConnectionClosed(self._closed) from None
            except BaseException:
                self._broken = True  # interrupted mid-write: the peer may hold half a frame
                raise

    # --- closing ---------------------------------------------------------------------------------

    async def aclose(self, code: int = CLOSE_NORMAL, reason: str | None = None) -> None:
        """The close handshake, then the transport is closed. Bound it with a timeout: a peer that
        never answers our close frame is waited for.

        If the peer closed, its close frame is answered; if it broke the protocol, the close frame
        says why (``code`` is then ignored) and what it still sends is read and dropped (so its
        unread bytes do not reset the connection under the close frame); a connection whose last
        write was interrupted is just dropped.
        """
        if self._aborted:
            return
        reader = self._reader
        connection = self._connection
        try:
            if reader.failure is not None:
                close = reader.failure
            elif reader.peer_close is not None:
                close = reader.peer_close.response()
            else:
                close = CloseConnection(code=code, reason=reason)
            if self._closed is None:
                self._closed = CloseReason(int(close.code), close.reason)
            if not self._broken and connection.state in (
                ConnectionState.OPEN,
                ConnectionState.REMOTE_CLOSING,
            ):
                await self._write(connection.send(close))
                if connection.state is ConnectionState.LOCAL_CLOSING:
                    # A peer that broke the protocol is failed (RFC 6455 7.1.7): its close frame is
                    # not awaited, what it sent meanwhile is only drained for a moment.
                    with trio.move_on_after(FAIL_LINGER if reader.failure is not None else math.inf):
                        await self._wait_for_peer_close()
        except ConnectionClosed:
            pass
        finally:
            await self.abort()

    async def _wait_for_peer_close(self) -> None:
        """After our close frame: read until the peer's close frame or EOF, dropping what else comes
        (bounded: DRAIN_MAX_BYTES, and the caller's timeout)."""
        reader = self._reader
        reader.draining = True
        drained = 0
        while reader.peer_close is None and drained < DRAIN_MAX_BYTES:
            data = await self._read_more()
            if not data:
                return
            drained += len(data)
            reader.receive_data(data)  # a no-op once the stream cannot be parsed any more
            reader.messages.clear()
            reader.replies.clear()

    async def _read_more(self) -> bytes:
        """Bytes read past the handshake first, then the socket's; b"" once the peer is gone."""
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        try:
            return await self.stream.receive_some(self._receive_size)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    async def abort(self) -> None:
        """Drop the transport now, without a close frame (a client that stopped reading)."""
        if self._aborted:
            return
        self._aborted = True
        self._broken = True
        if self._closed is None:
            self._closed = CloseReason(CLOSE_ABNORMAL, "the connection was dropped")
        await trio.aclose_forcefully(self.stream)


# --- the handshake and the route marker ----------------------------------------------------------


class HandshakeError(Exception):
    """wsproto refuses the upgrade request (the message says why)."""


def server_handshake(head: bytes) -> tuple[bytes, Connection]:
    """Accept a websocket upgrade request: ``head`` is the complete request head. Returns the 101
    response to send and the wsproto connection for the frames after it (no subprotocol, no
    extensions: the same answer trio-websocket gives). Raises :class:`HandshakeError`."""
    handshake = H11Handshake(ConnectionType.SERVER)
    try:
        handshake.receive_data(head)
        requests = [event for event in handshake.events() if isinstance(event, WsRequest)]
    except RemoteProtocolError as exc:
        raise HandshakeError(str(exc)) from None
    if not requests:
        raise HandshakeError("incomplete websocket upgrade request")
    response = handshake.send(AcceptConnection())
    connection = handshake.connection
    assert connection is not None
    return response, connection


LEAN_MARK = "__lean_websocket__"
LeanWebSocketHandler = Callable[[WebSocket, "HttpRequest"], Awaitable[None]]
_Handler = TypeVar("_Handler", bound=Callable[..., Awaitable[None]])


def lean_websocket(handler: _Handler) -> _Handler:
    """Mark a websocket handler as taking a :class:`WebSocket` (not a trio-websocket connection):
    ``Router.websocket`` then serves its route with this module. Works on functions and methods."""
    setattr(handler, LEAN_MARK, True)  # noqa: B010
    return handler


def is_lean_websocket(handler: object) -> bool:
    return bool(getattr(handler, LEAN_MARK, False))
