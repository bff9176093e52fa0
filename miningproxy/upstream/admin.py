"""Upstream admin client: ONE websocket to a node's ``/v1a/ws`` shared by every downstream client.

What it does:
- keeps the connection up (reconnect with jittered exponential backoff; a ping every
  ``ping_interval``; a connection silent for ``idle_timeout`` is dropped), on the node the mining
  upstream currently uses when ``prefer`` says which, else the first healthy node in order;
- remembers the last ``dashboard:metrics`` values and the node's capabilities;
- hands ``network:new_tx_accepted`` and the per-address events (``wallet:address_history``,
  ``wallet:element_winner|voided``) to its listeners;
- holds the set of addresses downstream clients want, and reconciles the node's subscriptions with
  it: each address is subscribed once, whatever the number of clients, and all of them again after
  a reconnect;
- opens a dedicated connection per history stream (:meth:`AdminUpstream.open_history`), because a
  node serves one stream per connection.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, open_websocket_url
from wsproto.utilities import LocalProtocolError

from miningproxy.excgroups import first_leaf
from miningproxy.upstream.backoff import Backoff
from miningproxy.upstream.urls import ws_url

logger = logging.getLogger("miningproxy.upstream.admin")

ADMIN_WS_PATH = "ws"
HISTORY_STREAMING = "history-streaming"
# Events relayed to listeners; the address events go only to that address's subscribers.
BROADCAST_EVENTS = frozenset({"network:new_tx_accepted"})
ADDRESS_EVENTS = frozenset({"wallet:address_history", "wallet:element_winner", "wallet:element_voided"})
METRIC_KEYS = ("transactions", "blocks", "best_block_height", "hash_rate", "peers", "time")

_NET_ERRORS = (
    HandshakeError,
    ConnectionClosed,
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    LocalProtocolError,
)

Listener = Callable[[dict[str, Any]], None]


class HistoryUnavailable(Exception):
    """No upstream connection can serve a history stream now; the text says why."""


@dataclass(frozen=True)
class AdminUpstreamStatus:
    connected: str | None
    capabilities: tuple[str, ...]
    subscriptions: int  # addresses wanted by downstream clients
    subscribed: int  # ... of which the node has been told on this connection
    history_streams: int  # dedicated stream connections open now
    last_error: str | None
    metrics_age: float | None
    counters: dict[str, int]


def _describe(e: BaseException) -> str:
    if isinstance(e, ConnectionClosed):
        r = e.reason
        if r is None:
            return "connection closed"
        return f"connection closed (code {r.code}{': ' + r.reason if r.reason else ''})"
    if isinstance(e, HandshakeError) and e.__cause__ is not None:
        return f"cannot connect: {e.__cause__}"
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _first_leaf(group: BaseExceptionGroup) -> BaseException | None:
    """The exception that ended a connection's tasks: an _Ended first, else a network error."""
    return first_leaf(group, _Ended, _NET_ERRORS)


class _Ended(Exception):
    """This connection is over; ``failure`` says whether the node is to blame (backoff)."""

    def __init__(self, reason: str, *, failure: bool) -> None:
        super().__init__(reason)
        self.failure = failure


class AdminUpstream:
    def __init__(
        self,
        nodes: Sequence[str],
        *,
        prefer: Callable[[], str | None] | None = None,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        connect_timeout: float = 10.0,
        ping_interval: float = 5.0,
        idle_timeout: float = 20.0,
        follow_interval: float = 5.0,
        capabilities_timeout: float = 5.0,
        max_streams: int = 32,
        stream_slot_timeout: float = 10.0,
        max_message_size: int = 16 * 2**20,
        jitter: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        if not nodes:
            raise ValueError("at least one node URL is required")
        for name, value in (
            ("backoff_initial", backoff_initial),
            ("backoff_max", backoff_max),
            ("connect_timeout", connect_timeout),
            ("ping_interval", ping_interval),
            ("idle_timeout", idle_timeout),
            ("follow_interval", follow_interval),
            ("capabilities_timeout", capabilities_timeout),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        if max_streams < 1:
            raise ValueError(f"max_streams must be at least 1, got {max_streams!r}")
        self.nodes = list(nodes)
        self._ws_urls = {node: ws_url(node, ADMIN_WS_PATH) for node in self.nodes}
        self._prefer = prefer
        self._backoff = Backoff(backoff_initial, backoff_max, jitter, rng or random.Random())
        self._connect_timeout = connect_timeout
        self._ping_interval = ping_interval
        self._idle_timeout = idle_timeout
        self._follow_interval = follow_interval
        self._capabilities_timeout = capabilities_timeout
        self._max_message_size = max_message_size
        self._stream_slots = trio.CapacityLimiter(max_streams)
        self._slot_timeout = stream_slot_timeout

        self.connected: str | None = None  # the node of the live connection
        self.capabilities: tuple[str, ...] = ()
        self.metrics: dict[str, Any] | None = None  # last dashboard:metrics values (node keys only)
        self.metrics_at: float | None = None  # trio time they arrived
        self.last_error: str | None = None
        self._listeners: list[Listener] = []
        self._wanted: dict[str, None] = {}  # addresses downstream clients want (ordered set)
        self._told: set[str] = set()  # addresses subscribed on the live connection
        self._changed = trio.Event()
        self._connected_event = trio.Event()
        self._failures: Counter[str] = Counter()
        self._retry_at: dict[str, float] = dict.fromkeys(self.nodes, -math.inf)
        self._streams_open = 0
        self.counters: Counter[str] = Counter()

    # ---- public API -------------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """``listener(message)`` for every relayed event (called synchronously from the reader)."""
        self._listeners.append(listener)

    def subscribe(self, address: str) -> None:
        if address not in self._wanted:
            self._wanted[address] = None
            self._wake()

    def unsubscribe(self, address: str) -> None:
        if address in self._wanted:
            del self._wanted[address]
            self._wake()

    @property
    def subscriptions(self) -> tuple[str, ...]:
        return tuple(self._wanted)

    def history_available(self) -> bool:
        return self.connected is not None and HISTORY_STREAMING in self.capabilities

    async def wait_connected(self) -> None:
        while self.connected is None:
            await self._connected_event.wait()

    def status(self) -> AdminUpstreamStatus:
        return AdminUpstreamStatus(
            connected=self.connected,
            capabilities=self.capabilities,
            subscriptions=len(self._wanted),
            subscribed=len(self._told) if self.connected else 0,
            history_streams=self._streams_open,
            last_error=self.last_error,
            metrics_age=None if self.metrics_at is None else trio.current_time() - self.metrics_at,
            counters=dict(self.counters),
        )

    def backoff_delay(self, failures: int) -> float:
        return self._backoff.delay(failures)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            node = await self._next_node()
            try:
                await self._serve(node)
            except _Ended as ended:
                if ended.failure:
                    self._failed(node, str(ended))
                else:
                    logger.info("admin upstream %s: %s", node, ended)
            except _NET_ERRORS as e:
                self._failed(node, _describe(e))

    @asynccontextmanager
    async def open_history(self) -> AsyncIterator[HistoryChannel]:
        """A dedicated connection to the current node for one history stream.

        Raises :class:`HistoryUnavailable` when there is no node to use, it cannot be reached, it
        does not offer history streaming, or the connection is lost while streaming.
        """
        node = self.connected
        if node is None:
            raise HistoryUnavailable("no upstream node connected")
        # Streams whose clients stop acking hold their slot; others wait a while, then are told.
        acquired = False
        with trio.move_on_after(self._slot_timeout):
            await self._stream_slots.acquire()
            acquired = True
        if not acquired:
            self.counters["history_streams_refused"] += 1
            raise HistoryUnavailable(
                f"too many history streams in progress ({self._stream_slots.total_tokens}); try again later"
            )
        try:
            self._streams_open += 1
            self.counters["history_streams"] += 1
            try:
                async with open_websocket_url(
                    self._ws_urls[node],
                    connect_timeout=self._connect_timeout,
                    disconnect_timeout=2.0,
                    max_message_size=self._max_message_size,
                ) as ws:
                    channel = HistoryChannel(ws, node)
                    await channel.wait_capabilities(self._capabilities_timeout)
                    yield channel
            except _NET_ERRORS as e:
                raise HistoryUnavailable(f"upstream node {node}: {_describe(e)}") from None
            finally:
                self._streams_open -= 1
        finally:
            self._stream_slots.release()

    # ---- the shared connection --------------------------------------------------------------

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _failed(self, node: str, reason: str) -> None:
        self._failures[node] += 1
        delay = self.backoff_delay(self._failures[node])
        self._retry_at[node] = trio.current_time() + delay
        self.last_error = f"{node}: {reason}"
        self.counters["failures"] += 1
        logger.warning("admin upstream %s: %s; retry in %.1fs", node, reason, delay)

    def _preferred(self) -> str | None:
        if self._prefer is None:
            return None
        node = self._prefer()
        return node if node in self._retry_at else None

    async def _next_node(self) -> str:
        while True:
            now = trio.current_time()
            preferred = self._preferred()
            if preferred is not None and self._retry_at[preferred] <= now:
                return preferred
            for node in self.nodes:
                if self._retry_at[node] <= now:
                    return node
            await trio.sleep_until(min(self._retry_at.values()))

    async def _serve(self, node: str) -> None:
        async with open_websocket_url(
            self._ws_urls[node],
            connect_timeout=self._connect_timeout,
            disconnect_timeout=2.0,
            max_message_size=self._max_message_size,
        ) as ws:
            self._told = set()
            self.capabilities = ()
            self.connected = node
            self._failures[node] = 0
            self._retry_at[node] = -math.inf
            self.counters["connects"] += 1
            self._connected_event.set()
            self._connected_event = trio.Event()
            logger.info("admin upstream: connected to %s", node)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._reader, ws, node)
                    nursery.start_soon(self._sender, ws)
                    nursery.start_soon(self._pinger, ws)
                    nursery.start_soon(self._follower, node)
            except BaseExceptionGroup as group:
                leaf = _first_leaf(group)
                if leaf is None:
                    raise
                raise leaf from None
            finally:
                self.connected = None
                self.capabilities = ()
                self._told = set()

    async def _reader(self, ws: WebSocketConnection, node: str) -> None:
        last = trio.current_time()
        while True:
            with trio.move_on_at(last + self._idle_timeout):
                try:
                    frame = await ws.get_message()
                except ConnectionClosed as e:
                    raise _Ended(f"node closed the connection: {_describe(e)}", failure=True) from None
                last = trio.current_time()
                self._on_frame(frame, node)
                continue
            raise _Ended(f"no message for {self._idle_timeout:g}s", failure=True)

    def _on_frame(self, frame: str | bytes, node: str) -> None:
        try:
            message = json.loads(frame)
        except (ValueError, RecursionError):
            self.counters["protocol_errors"] += 1
            logger.warning("admin upstream %s: a frame that is not JSON: %.120r", node, frame)
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            self.counters["protocol_errors"] += 1
            return
        kind = message["type"]
        if kind == "dashboard:metrics":
            self.metrics = {k: message.get(k) for k in METRIC_KEYS}
            self.metrics_at = trio.current_time()
        elif kind == "capabilities":
            caps = message.get("capabilities")
            self.capabilities = tuple(c for c in caps if isinstance(c, str)) if isinstance(caps, list) else ()
        elif kind in BROADCAST_EVENTS or (kind in ADDRESS_EVENTS and isinstance(message.get("address"), str)):
            self.counters["events"] += 1
            for listener in self._listeners:
                try:
                    listener(message)
                except Exception:
                    logger.exception("admin upstream listener failed on %s", kind)
        elif kind == "subscribe_address" and message.get("success") is False:
            logger.warning(
                "admin upstream %s refused to subscribe %s: %s",
                node,
                message.get("address"),
                message.get("message"),
            )

    async def _send(self, ws: WebSocketConnection, message: dict[str, Any]) -> None:
        try:
            await ws.send_message(json.dumps(message, separators=(",", ":")))
        except (ConnectionClosed, LocalProtocolError) as e:
            raise _Ended(f"connection lost while sending: {_describe(e)}", failure=True) from None

    async def _sender(self, ws: WebSocketConnection) -> None:
        """Make the node's subscriptions on this connection match the wanted set."""
        while True:
            changed = self._changed
            for address in [a for a in self._wanted if a not in self._told]:
                self._told.add(address)
                await self._send(ws, {"type": "subscribe_address", "address": address})
            for address in [a for a in self._told if a not in self._wanted]:
                self._told.discard(address)
                await self._send(ws, {"type": "unsubscribe_address", "address": address})
            if changed is self._changed:
                await changed.wait()

    async def _pinger(self, ws: WebSocketConnection) -> None:
        while True:
            await self._send(ws, {"type": "ping"})
            await trio.sleep(self._ping_interval)

    async def _follower(self, node: str) -> None:
        """Move to the node the mining upstream uses, when it says which."""
        while True:
            await trio.sleep(self._follow_interval)
            preferred = self._preferred()
            if preferred is not None and preferred != node:
                raise _Ended(f"following the mining upstream to {preferred}", failure=False)


class HistoryChannel:
    """One dedicated connection carrying one history stream."""

    def __init__(self, ws: WebSocketConnection, node: str) -> None:
        self.ws = ws
        self.node = node
        self.capabilities: tuple[str, ...] = ()

    async def wait_capabilities(self, timeout: float) -> None:
        with trio.move_on_after(timeout):
            while True:
                message = self._parse(await self.ws.get_message())
                if message is not None and message.get("type") == "capabilities":
                    caps = message.get("capabilities")
                    self.capabilities = tuple(caps) if isinstance(caps, list) else ()
                    break
        if HISTORY_STREAMING not in self.capabilities:
            raise HistoryUnavailable(f"upstream node {self.node} does not offer history streaming")

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_message(json.dumps(message, separators=(",", ":")))

    async def receive(self) -> dict[str, Any]:
        """The next ``stream:history:*`` message (everything else on the connection is skipped)."""
        while True:
            message = self._parse(await self.ws.get_message())
            if message is not None and str(message.get("type", "")).startswith("stream:history:"):
                return message

    @staticmethod
    def _parse(frame: str | bytes) -> dict[str, Any] | None:
        try:
            message = json.loads(frame)
        except (ValueError, RecursionError):
            return None
        return message if isinstance(message, dict) else None
