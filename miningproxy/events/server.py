"""Serving an event sequence: the event_ws websocket and the node's ``GET /v1a/event``.

:class:`EventStreamServer` drives one :class:`~miningproxy.events.stream.StreamSession` per
connection from an :class:`~miningproxy.events.feed.EventFeed`: a receive task applies the
client's requests, a send task streams what the window allows. The send path is bounded: the
window caps what is in flight, and a client that stops reading (a send blocked for
``send_timeout``) is cut off with a logged reason instead of holding memory or a task forever.

The websocket is the lean one (:mod:`miningproxy.api.websocket`): a client acknowledging every
event sends thousands of small messages per second, so every message of one socket read is applied
in one step (:meth:`StreamSession.receive_batch`) and the frames of a refill go out in one write.

A feed without an identity (the proxy has never received its upstream's events) is "not
running": like the node, the server answers EVENT_WS_NOT_RUNNING on open and to every request.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import trio

from miningproxy.api.http import HttpRequest, HttpResponse
from miningproxy.api.websocket import ConnectionClosed, WebSocket, lean_websocket
from miningproxy.events.feed import EventFeed
from miningproxy.events.log import PrunedError
from miningproxy.events.metrics import EventMetrics
from miningproxy.events.requests import FieldError, IntParseError, lax_int, render_errors
from miningproxy.events.stream import (
    EVENT_WS_NOT_RUNNING,
    StreamSession,
    error_frame,
    payload_text,
)

log = logging.getLogger("miningproxy.events")

DEFAULT_SEND_TIMEOUT = 30.0
DEFAULT_READ_CHUNK = 1000
READ_AHEAD_MIN = 64
SEND_BATCH = 256  # frames per write
SEND_BATCH_BYTES = 64 * 1024
COALESCE_TURNS = 8
REFILL_CHUNK = 64  # frames: the most a window refill waits for (a quarter of the window, if smaller)


class _CutOff(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


class EventStreamServer:
    """The event_ws handler for one feed: ``router.websocket(path, server.handle)``."""

    def __init__(
        self,
        feed: EventFeed,
        *,
        name: str | None = None,
        node_quirks: bool = False,
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
        read_chunk: int = DEFAULT_READ_CHUNK,
        metrics: EventMetrics | None = None,
    ) -> None:
        self.feed = feed
        self.name = name or feed.seq
        self.node_quirks = node_quirks
        self.send_timeout = send_timeout
        self.read_chunk = read_chunk
        self.metrics = metrics
        self.connections = 0

    @lean_websocket
    async def handle(self, ws: WebSocket, request: HttpRequest) -> None:
        self.connections += 1
        try:
            envelope = self.feed.envelope
            if envelope is None:
                await self._not_running(ws)
                return
            connection = _Connection(self, ws, StreamSession(envelope, node_quirks=self.node_quirks), request)
            await connection.run()
        except ConnectionClosed:
            pass
        except _CutOff as cut:
            await self._cut_off(ws, request.peer, cut)
        finally:
            self.connections -= 1

    async def _not_running(self, ws: WebSocket) -> None:
        self._count_error(EVENT_WS_NOT_RUNNING)
        await self._send(ws, [error_frame(EVENT_WS_NOT_RUNNING)])
        while True:
            messages = await ws.receive_messages()
            for _ in messages:
                self._count_error(EVENT_WS_NOT_RUNNING)
            await self._send(ws, [error_frame(EVENT_WS_NOT_RUNNING, payload_text(m)) for m in messages])

    async def _send(self, ws: WebSocket, frames: list[str]) -> None:
        """Send in one write; raises _CutOff when the client does not take it within send_timeout."""
        with trio.move_on_after(self.send_timeout) as scope:
            await ws.send_messages(frames)
        if scope.cancelled_caught:
            raise _CutOff(f"the client did not read for {self.send_timeout:g}s (a send was blocked)")

    async def _cut_off(self, ws: WebSocket, peer: str, cut: _CutOff) -> None:
        log.warning("event_ws %s: cutting off client %s: %s", self.name, peer or "?", cut.reason)
        if self.metrics is not None:
            self.metrics.clients_cut_off.labels(self.name, "not-reading").inc()
        # A cancelled send leaves half a frame on the wire: nothing more (not even a close frame,
        # which this client would not read anyway) can be sent. Drop the transport.
        await ws.abort()

    def _count_error(self, error_type: str) -> None:
        if self.metrics is not None:
            self.metrics.request_errors.labels(self.name, error_type).inc()


class _Connection:
    def __init__(
        self,
        server: EventStreamServer,
        ws: WebSocket,
        session: StreamSession,
        request: HttpRequest,
    ) -> None:
        self.server = server
        self.feed = server.feed
        self.ws = ws
        self.session = session
        self.peer = request.peer
        self._wake = trio.Event()
        self._requests = 0  # client messages handled so far

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        self.feed.add_listener(self.wake)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._guard, self._send_loop, nursery.cancel_scope)
                await self._guard(self._receive_loop, nursery.cancel_scope)
        finally:
            self.feed.remove_listener(self.wake)

    async def _guard(self, loop: Any, scope: trio.CancelScope) -> None:
        """Run one half of the connection; when it ends (closed, cut off), end the other too."""
        try:
            await loop()
        except ConnectionClosed:
            pass
        except _CutOff as cut:
            await self.server._cut_off(self.ws, self.peer, cut)
        finally:
            scope.cancel()

    async def _receive_loop(self) -> None:
        while True:
            # Every message of one read at once: a client acknowledging each event sends them in bursts.
            messages = await self.ws.receive_messages()
            frames = self.session.receive_batch(messages, first_id=self.feed.first_id)
            self._requests += len(messages)
            self._wake.set()
            for frame in frames:
                if self.server.metrics is not None:
                    self.server.metrics.request_errors.labels(self.server.name, _error_type(frame)).inc()
            if frames:
                await self._send(frames)

    async def _send_loop(self) -> None:
        session = self.session
        feed = self.feed
        metrics = self.server.metrics
        frames_sent = metrics.frames_sent.labels(self.server.name) if metrics is not None else None
        # Events read ahead of the window, so a client acknowledging one event at a time does not
        # cost one database read per event. Bounded: at most read_chunk events per connection.
        ahead: deque[tuple[int, str]] = deque()
        while True:
            self._wake = trio.Event()  # reset before looking, so no wake-up is ever lost
            want = session.wants()
            if (
                want is None
                or feed.last_id is None
                or feed.last_id < want.from_id
                # Refill a wide window in chunks: while the client still holds most of it, wait
                # for a chunk's worth of ACKs so one write carries many frames, not one each.
                or (session.in_flight and want.count < min(REFILL_CHUNK, session.window // 4))
            ):
                await self._wake.wait()
                # A client acknowledging every event sends ACKs in bursts: let the burst in
                # before writing, so one write carries many frames instead of one each. (With
                # nothing in flight no ACK can follow: a window-1 client waits for us.)
                seen = -1
                for _ in range(COALESCE_TURNS if session.in_flight else 0):
                    if seen == self._requests:
                        break
                    seen = self._requests
                    await trio.lowlevel.checkpoint()
                continue
            if not ahead or ahead[0][0] != want.from_id:
                ahead.clear()
                chunk = min(self.server.read_chunk, max(READ_AHEAD_MIN, 2 * want.count))
                try:
                    ahead.extend(await feed.read(want.from_id, chunk))
                except PrunedError as exc:
                    await self._send([session.fail_pruned(exc.first_id)])
                    continue
            latest = feed.latest_event_id()
            frames = []
            size = 0
            # A write is bounded in bytes too, so send_timeout measures a stalled client, not a
            # slow link working through a large write.
            while ahead and len(frames) < SEND_BATCH and size < SEND_BATCH_BYTES:
                event_id, text = ahead[0]
                frame = session.frame(event_id, text, latest)
                if frame is None:
                    break  # the window is full, or the client stopped or restarted meanwhile
                ahead.popleft()
                frames.append(frame)
                size += len(frame)
            if frames:
                await self._send(frames)
                if frames_sent is not None:
                    frames_sent.inc(len(frames))

    async def _send(self, frames: list[str]) -> None:
        await self.server._send(self.ws, frames)


def _error_type(frame: str) -> str:
    # Error frames start with {"type":"<TYPE>",... (see stream.error_frame).
    return frame[9 : frame.index('"', 9)]


# --- GET /v1a/event -------------------------------------------------------------------------------

EVENT_API_DEFAULT_SIZE = 100
EVENT_API_MAX_SIZE = 1000
_JSON = "application/json; charset=utf-8"


class EventHttpApi:
    """The node's ``GET /v1a/event?last_ack_event_id=N&size=K`` over a feed.

    Answers ``{"events": [...], "latest_event_id": N}`` with the stored event texts, like the node
    (size 0..1000, default 100; invalid parameters get ``{"success": false, "error": ...}`` with
    status 200 and pydantic's text, as the node does). A pruned ``last_ack_event_id`` gets status
    410 with the same error shape; a proxy that never received its upstream's events answers 503
    "EventManager unavailable.", as a node without an event queue does.
    """

    def __init__(self, feed: EventFeed) -> None:
        self.feed = feed

    async def handle(self, request: HttpRequest) -> HttpResponse:
        feed = self.feed
        if feed.identity is None and feed.last_id is None:
            return _error_response("EventManager unavailable.", 503)
        params = parse_event_query(request.query)
        if isinstance(params, str):
            return _error_response(params, 200)
        last_ack, size = params
        start = 0 if last_ack is None else last_ack + 1
        try:
            events = await feed.read(start, size) if size else []
            feed.check_retained(start)
        except PrunedError as exc:
            return _error_response(str(exc), 410)
        latest = "null" if feed.last_id is None else str(feed.last_id)
        body = '{"events":[' + ",".join(text for _, text in events) + '],"latest_event_id":' + latest + "}"
        return HttpResponse(200, body.encode("utf-8"), content_type=_JSON)


def parse_event_query(query: dict[str, list[str]]) -> tuple[int | None, int] | str:
    """Validate the query like the node's GetEventsParams; returns (last_ack, size) or the error text."""
    args: dict[str, str] = {}
    for key, values in query.items():
        if not key.endswith("[]") and len(values) > 1:
            return "expected one value at most"
        args[key] = values[0] if values else ""
    errors: list[FieldError] = []
    last_ack: int | None = None
    size = EVENT_API_DEFAULT_SIZE
    if "last_ack_event_id" in args:
        value = args["last_ack_event_id"]
        try:
            last_ack = lax_int(value)
            if last_ack < 0:
                errors.append(
                    FieldError(
                        "last_ack_event_id",
                        "Input should be greater than or equal to 0",
                        "greater_than_equal",
                        value,
                    )
                )
        except IntParseError as exc:
            errors.append(FieldError("last_ack_event_id", exc.msg, exc.type, value))
    if "size" in args:
        value = args["size"]
        try:
            size = lax_int(value)
            if size < 0:
                errors.append(
                    FieldError(
                        "size", "Input should be greater than or equal to 0", "greater_than_equal", value
                    )
                )
            elif size > EVENT_API_MAX_SIZE:
                errors.append(
                    FieldError(
                        "size",
                        f"Input should be less than or equal to {EVENT_API_MAX_SIZE}",
                        "less_than_equal",
                        value,
                    )
                )
        except IntParseError as exc:
            errors.append(FieldError("size", exc.msg, exc.type, value))
    for key, value in args.items():
        if key not in ("last_ack_event_id", "size"):
            errors.append(FieldError(key, "Extra inputs are not permitted", "extra_forbidden", value))
    if errors:
        return render_errors("GetEventsParams", errors)
    return last_ack, size


def _error_response(message: str, status: int) -> HttpResponse:
    return HttpResponse.json({"success": False, "error": message}, status, content_type=_JSON)
