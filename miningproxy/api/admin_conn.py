"""The trio side of one admin websocket connection (``/ws``), shared by the proxy and the dev node.

Three tasks per connection, all dying with it: the reader feeds client frames to the sans-IO
:class:`AdminSession`; the writer drains the connection's :class:`Outbox`; and, while a history
stream is open, its source (the backend's ``run_stream``) offers items through a
:class:`StreamFeed`. Where the items come from is the backend's business (the dev node's chain, a
relay of the upstream node); subscriptions, broadcasts and the per-connection rules live elsewhere.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Protocol

import trio
import trio_websocket

from miningproxy.api.admin_session import (
    AddMoreAddresses,
    AdminSession,
    CloseStream,
    OpenStream,
    Output,
    SessionLimits,
    StreamRequest,
    Subscribe,
    Unsubscribe,
)
from miningproxy.api.fanout import ClientTooSlow, Outbox, cut_off, encode, write_outbox
from miningproxy.api.history_stream import Item
from miningproxy.hathor.networks import Network

log = logging.getLogger("miningproxy.api.admin")

DEFAULT_OUTBOX = 256
DEFAULT_SEND_TIMEOUT = 30.0


class AdminBackend(Protocol):
    network: Network
    limits: SessionLimits

    def history_available(self) -> bool: ...

    def register(self, conn: AdminConnection) -> None: ...

    def unregister(self, conn: AdminConnection) -> None: ...

    def subscribe(self, conn: AdminConnection, address: str) -> None: ...

    def unsubscribe(self, conn: AdminConnection, address: str) -> None: ...

    async def run_stream(self, request: StreamRequest, feed: StreamFeed) -> None: ...


class StreamFeed:
    """What a stream source sees: offer items (waits while the client's window and buffer are
    full), take more manual addresses, finish or fail. Cancelled when the stream ends early."""

    def __init__(self, conn: AdminConnection, request: StreamRequest) -> None:
        self.conn = conn
        self.request = request
        self.stream_id = request.stream_id
        self._more_send, self._more = trio.open_memory_channel[AddMoreAddresses](64)
        self.last = request.last  # the manual stream got its last addresses

    @property
    def last_sent_tag(self) -> Any:
        """The tag of the last item delivered to the client (the relay acks upstream with it)."""
        stream = self.conn.session.stream
        return stream.last_sent_tag if stream is not None and stream.id == self.stream_id else None

    async def offer(self, item: Item) -> None:
        session = self.conn.session
        while not session.stream_wants_more(self.stream_id):
            if session.stream is None or session.stream.id != self.stream_id:
                await trio.sleep_forever()  # the stream ended; the source is being cancelled
            await self.conn.stream_progress()
        session.stream_offer(self.stream_id, item)
        self.conn.pump()

    def finish(self) -> None:
        self.conn.session.stream_finish(self.stream_id)
        self.conn.pump()

    def fail(self, errmsg: str) -> None:
        self.conn.deliver(self.conn.session.stream_fail(self.stream_id, errmsg))

    async def wait_progress(self) -> None:
        """Wait until something was delivered to the client or acked by it."""
        await self.conn.stream_progress()

    async def more_addresses(self) -> AddMoreAddresses:
        """The next batch of manual addresses the client sent."""
        batch = await self._more.receive()
        if batch.last:
            self.last = True
        return batch

    def _add(self, batch: AddMoreAddresses) -> None:
        try:
            self._more_send.send_nowait(batch)
        except trio.WouldBlock:
            self.fail("List of addresses is too long.")


class AdminConnection:
    def __init__(
        self,
        backend: AdminBackend,
        ws: trio_websocket.WebSocketConnection,
        peer: str = "",
        *,
        outbox_limit: int = DEFAULT_OUTBOX,
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
    ) -> None:
        self.backend = backend
        self.ws = ws
        self.peer = peer
        self.outbox = Outbox(outbox_limit)
        self.send_timeout = send_timeout
        self.session = AdminSession(
            network=backend.network, history=backend.history_available(), limits=backend.limits
        )
        self._nursery: trio.Nursery | None = None
        self._closing = False
        self._stream_scope: trio.CancelScope | None = None
        self._feed: StreamFeed | None = None
        self._progress = trio.Event()

    # -- running ------------------------------------------------------------------------------
    async def run(self) -> None:
        self.backend.register(self)
        reason: str | None = None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self._closing:
                    nursery.cancel_scope.cancel()
                self.deliver(self.session.open())
                nursery.start_soon(self._write, nursery.cancel_scope)
                nursery.start_soon(self._watch_cut, nursery.cancel_scope)
                try:
                    await self._read()
                except trio_websocket.ConnectionClosed:
                    pass
                nursery.cancel_scope.cancel()
        except* ClientTooSlow as group:
            reason = str(group.exceptions[0])
        except* trio_websocket.ConnectionClosed:
            pass
        finally:
            self._nursery = None
            self.deliver(self.session.close())
            self.backend.unregister(self)
        reason = reason or self.outbox.overflow
        if reason is not None:
            log.warning("admin client %s cut off: %s", self.peer or "?", reason)
            await cut_off(self.ws, reason)

    def close(self) -> None:
        """End this connection (the server going away); the websocket is closed normally."""
        self._closing = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _read(self) -> None:
        while True:
            payload = await self.ws.get_message()
            self.deliver(self.session.receive(payload))
            self._progressed()
            self.pump()

    async def _write(self, scope: trio.CancelScope) -> None:
        try:
            await write_outbox(
                self.ws, self.outbox, send_timeout=self.send_timeout, after_send=self._after_send
            )
        except trio_websocket.ConnectionClosed:
            scope.cancel()

    async def _watch_cut(self, scope: trio.CancelScope) -> None:
        await self.outbox.cut.wait()
        raise ClientTooSlow(self.outbox.overflow or "too slow")

    def _after_send(self) -> None:
        if self.session.stream_can_send():
            self.pump()

    # -- sending ------------------------------------------------------------------------------
    def send_text(self, text: str) -> bool:
        return self.outbox.put(text)

    def send_latest(self, key: str, text: str) -> bool:
        return self.outbox.put_latest(key, text)

    def pump(self) -> None:
        """Move what the stream's window allows into the outbox, leaving half of it for events."""
        budget = self.outbox.limit // 2 - len(self.outbox)
        if budget > 0 and self.session.stream_can_send():
            self.deliver(self.session.pump(budget))
            self._progressed()

    def deliver(self, out: Output) -> None:
        for message in out.messages:
            if message.get("type") == "pong":
                self.outbox.put_first(encode(message))  # never stuck behind a backlog
            else:
                self.outbox.put(encode(message))
        self._act(out.actions)

    def _act(self, actions: Iterable[Any]) -> None:
        for action in actions:
            if isinstance(action, Subscribe):
                self.backend.subscribe(self, action.address)
            elif isinstance(action, Unsubscribe):
                self.backend.unsubscribe(self, action.address)
            elif isinstance(action, OpenStream):
                self._open_stream(action.request)
            elif isinstance(action, AddMoreAddresses):
                if self._feed is not None and self._feed.stream_id == action.stream_id:
                    self._feed._add(action)
            elif isinstance(action, CloseStream):
                self._close_stream()

    # -- the history stream -------------------------------------------------------------------
    async def stream_progress(self) -> None:
        await self._progress.wait()

    def _progressed(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    def _open_stream(self, request: StreamRequest) -> None:
        if self._nursery is None:
            return
        self._close_stream()
        scope = trio.CancelScope()
        feed = StreamFeed(self, request)
        self._stream_scope, self._feed = scope, feed
        self._nursery.start_soon(self._run_stream, request, feed, scope)

    async def _run_stream(self, request: StreamRequest, feed: StreamFeed, scope: trio.CancelScope) -> None:
        with scope:
            try:
                await self.backend.run_stream(request, feed)
            except Exception as exc:  # a bug in a source must not take the connection down
                log.exception("history stream %r failed", request.stream_id)
                feed.fail(f"Internal error: {type(exc).__name__}")
        if self._feed is feed:
            self._stream_scope, self._feed = None, None

    def _close_stream(self) -> None:
        if self._stream_scope is not None:
            self._stream_scope.cancel()
        self._stream_scope, self._feed = None, None
        self._progressed()
