"""Upstream mining client: one websocket to the best healthy node; templates in, blocks out.

Shape of ``run()``: a loop that connects to the highest-priority node that is not backing off and
serves it until it fails (close, network error, no template for ``template_timeout`` even after a
``mining.refresh``), then moves on. While a lower-priority node is served, each higher-priority node
is probed (connect, receive a notify, stay up for ``failback_after``) and, once healthy, failed back to.

Found blocks go through one queue (or, when the node is idle and nothing is queued, straight
from :meth:`MiningUpstream.enqueue` to its socket and into the in-flight table, which a lost
connection requeues), so none is dropped silently: a block found while no node is
usable waits (bounded) and, on the next connection, is judged against the fresh template's tip
before it is sent. The node's fatal answer (-32603 and a close, after an invalid block or after
``optimistic: true`` on the broken real node) is survived the same way: reconnect, and the next
template tells whether the block became the tip.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import random
import socket
import struct as _struct
import termios
from collections import Counter, deque
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, fields
from typing import Literal

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)
from wsproto.connection import ConnectionState
from wsproto.events import TextMessage
from wsproto.utilities import LocalProtocolError

from miningproxy.hathor.block import BlockParseError, parse_block
from miningproxy.hathor.template import BlockTemplate
from miningproxy.latest import LatestValue
from miningproxy.upstream import jsonrpc
from miningproxy.upstream.backoff import Backoff
from miningproxy.upstream.urls import ws_url

logger = logging.getLogger("miningproxy.upstream")

MINING_WS_PATH = "mining_ws"
OptimisticMode = Literal["auto", "on", "off"]
SubmitStatus = Literal["accepted", "rejected", "stale", "error"]

COUNTERS = (
    "connects",  # connections that delivered a usable template
    "reconnects",  # ... after the first one
    "failovers",  # a connection to a different node than the previous one, after a failure
    "failbacks",  # a switch back to a higher-priority node that became healthy
    "refreshes",  # mining.refresh sent because no template came for template_timeout
    "template_timeouts",  # connections dropped because even the refresh brought nothing
    "protocol_errors",  # frames from the node we could not make sense of
    "blocks_submitted",  # mining.submit frames sent
    "blocks_accepted",
    "blocks_rejected",
    "blocks_stale",
    "blocks_error",
    "blocks_queued",  # blocks found while no node was usable
    "blocks_dropped",  # blocks pushed out of a full queue (also counted in blocks_error)
    "submit_timeouts",  # submit() calls that returned "error" before the block's fate was known
)

_TIOCOUTQ: int | None = getattr(termios, "TIOCOUTQ", None)  # bytes in a socket's send queue (Linux)
_NET_ERRORS = (HandshakeError, ConnectionClosed, OSError, trio.BrokenResourceError, trio.ClosedResourceError)
# Fields that make two templates different work; timestamp_now changes on every refresh.
_TEMPLATE_KEY = tuple(f.name for f in fields(BlockTemplate) if f.compare and f.name != "timestamp_now")


@dataclass(frozen=True)
class TemplateUpdate:
    node: str  # the node's base URL, as configured
    templates: tuple[BlockTemplate, ...]
    received_at: float  # trio.current_time()


@dataclass(frozen=True)
class SubmitOutcome:
    status: SubmitStatus
    node: str | None  # the node that decided (or was last tried)
    reason: str
    latency: float  # seconds from submit() to the outcome


@dataclass(frozen=True)
class NodeStatus:
    url: str
    ws_url: str
    state: str  # "connected" | "connecting" | "probing" | "backoff" | "idle"
    last_error: str | None
    consecutive_failures: int
    optimistic_supported: bool | None  # None: not learned yet
    retry_in: float | None  # seconds until the next attempt while backing off


@dataclass(frozen=True)
class UpstreamStatus:
    connected: str | None  # the node serving templates, None when none is usable
    nodes: tuple[NodeStatus, ...]
    template_age: float | None  # seconds since the last template from any node
    template_height: int | None
    queued_blocks: int
    counters: dict[str, int]


@dataclass(eq=False)
class _Node:
    url: str
    ws_url: str
    priority: int  # 0 is the most preferred
    state: str | None = None  # "connecting" | "connected" | "probing"; None: derived in status()
    last_error: str | None = None
    failures: int = 0  # consecutive; reset by a usable template
    retry_at: float = -math.inf
    optimistic_supported: bool | None = None


@dataclass(eq=False)
class _Block:
    struct: bytes
    hash: bytes
    parent: bytes  # parents[0]: the tip it was mined on
    queued_at: float
    done: trio.Event = field(default_factory=trio.Event)
    outcome: SubmitOutcome | None = None
    check_tip: bool = False  # judge against a fresh template's tip before (re)sending
    if_not_tip: tuple[SubmitStatus, str] | None = None  # verdict when the fresh tip is not this block
    node: str | None = None  # the node it was last sent to
    optimistic: bool = False  # how it was last sent
    timed_out: bool = False  # submit() already returned "error"; the real fate goes to on_late_fate
    on_late_fate: Callable[[SubmitOutcome], None] | None = None


class _Conn:
    """One live websocket to the node being served."""

    def __init__(self, node: _Node, ws: WebSocketConnection, now: float, *, failback: bool) -> None:
        self.node = node
        self.ws = ws
        self.failback = failback  # this connection is a fail-back (for the counters)
        self.session = jsonrpc.MiningSession()
        self.in_flight: dict[int, _Block] = {}
        self.idle = trio.Event()  # set when in_flight drains
        self.ready = trio.Event()  # set by the first usable template
        self.tips: frozenset[bytes] = frozenset()
        self.last_template_at = now
        self.scope = trio.CancelScope()
        self.end_reason: str | None = None
        self.failure = True
        self.draining = False  # no new submits: a fail-back is waiting for in-flight answers
        self.sending = False  # the sender task is writing a submit
        self.failback_to: _Node | None = None

    def end(self, reason: str, *, failure: bool) -> None:
        """Close this connection; the first reason given is the one recorded."""
        if self.end_reason is None:
            self.end_reason, self.failure = reason, failure
        self.scope.cancel()


def masked_text_frame(text: str, key: bytes) -> bytes:
    """One complete client-to-server websocket text frame (RFC 6455 5.2: FIN, opcode 1, the
    payload masked with the 4-byte ``key``), as wsproto writes it when no extension is in use.
    A quarter of the time wsproto's ``send`` takes (its frame, the largest step of a block's way
    through :meth:`MiningUpstream._send_now`: ~65 of ~155 us, measured in the submit benchmark)."""
    payload = text.encode()
    n = len(payload)
    if n < 126:
        header = bytes((0x81, 0x80 | n))
    elif n < 1 << 16:
        header = b"\x81\xfe" + n.to_bytes(2, "big")
    else:
        header = b"\x81\xff" + n.to_bytes(8, "big")
    mask = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "little") ^ int.from_bytes(mask, "little")).to_bytes(n, "little")
    return header + key + masked


def _plain_frames(wsconn: object) -> bool:
    """wsproto would write a message as one plain frame: no extension (trio-websocket negotiates
    none) and no fragmented message of ours under way (trio-websocket sends whole messages)."""
    proto = getattr(getattr(wsconn, "connection", None), "_proto", None)
    return (
        proto is not None
        and not getattr(proto, "extensions", True)
        and getattr(proto, "_outbound_opcode", 1) is None
    )


def _describe(e: BaseException) -> str:
    if isinstance(e, ConnectionClosed):
        r = e.reason
        if r is None:
            return "connection closed"
        return f"connection closed (code {r.code}{': ' + r.reason if r.reason else ''})"
    if isinstance(e, ConnectionRejected):
        return f"websocket handshake rejected with HTTP {e.status_code}"
    if isinstance(e, ConnectionTimeout):
        return "websocket handshake timed out"
    if isinstance(e, HandshakeError) and e.__cause__ is not None:
        return f"cannot connect: {e.__cause__}"
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _content(templates: Sequence[BlockTemplate]) -> tuple:
    return tuple(tuple(getattr(t, name) for name in _TEMPLATE_KEY) for t in templates)


class MiningUpstream:
    """Keeps one connection to the best healthy node; publishes templates; submits blocks."""

    def __init__(
        self,
        nodes: Sequence[str],
        *,
        template_timeout: float = 60.0,
        failback_after: float = 30.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        optimistic: OptimisticMode = "auto",
        submit_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        refresh_timeout: float | None = None,
        queue_max: int = 64,
        jitter: float = 0.5,
        rng: random.Random | None = None,
        max_message_size: int = 4 * 2**20,
    ) -> None:
        if not nodes:
            raise ValueError("at least one node URL is required")
        if len(set(nodes)) != len(nodes):
            raise ValueError(f"node URLs must be distinct, got {list(nodes)}")
        for name, value in (
            ("template_timeout", template_timeout),
            ("failback_after", failback_after),
            ("backoff_initial", backoff_initial),
            ("backoff_max", backoff_max),
            ("submit_timeout", submit_timeout),
            ("connect_timeout", connect_timeout),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        if backoff_max < backoff_initial:
            raise ValueError(f"backoff_max ({backoff_max}) must be >= backoff_initial ({backoff_initial})")
        if optimistic not in ("auto", "on", "off"):
            raise ValueError(f"optimistic must be 'auto', 'on' or 'off', got {optimistic!r}")
        if queue_max < 1:
            raise ValueError(f"queue_max must be at least 1, got {queue_max!r}")
        self._nodes = [_Node(url, ws_url(url, MINING_WS_PATH), i) for i, url in enumerate(nodes)]
        self._template_timeout = template_timeout
        self._failback_after = failback_after
        self._backoff = Backoff(backoff_initial, backoff_max, jitter, rng or random.Random())
        self._optimistic: OptimisticMode = optimistic
        self._submit_timeout = submit_timeout
        self._connect_timeout = connect_timeout
        self._refresh_timeout = min(template_timeout, 10.0) if refresh_timeout is None else refresh_timeout
        self._queue_max = queue_max
        self._max_message_size = max_message_size

        self.templates: LatestValue[TemplateUpdate] = LatestValue()
        self._running = False
        self._conn: _Conn | None = None  # the connection being served (handshake done)
        self._last_ready: _Node | None = None
        self._template_at: float | None = None
        self._queue: deque[_Block] = deque()
        self._queue_changed = trio.Event()
        self._counters: Counter[str] = Counter(dict.fromkeys(COUNTERS, 0))

    # ---- public API -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve nodes until cancelled. Started immediately; templates arrive on ``.templates``."""
        if self._running:
            raise RuntimeError("MiningUpstream.run() is already running")
        self._running = True
        task_status.started()
        try:
            failback_to: _Node | None = None
            while True:
                node = failback_to or await self._next_node()
                failback_to = await self._serve(node, failback=failback_to is not None)
        finally:
            self._running = False
            stopped = list(self._queue)
            self._queue.clear()
            for blk in stopped:
                self._resolve(blk, "error", "the upstream client stopped before the block's fate was known")

    async def submit(
        self,
        struct: bytes,
        *,
        block_hash: bytes,
        parent: bytes | None = None,
        on_late_fate: Callable[[SubmitOutcome], None] | None = None,
    ) -> SubmitOutcome:
        """Submit a full block (with nonce) whose PoW the caller has checked.

        Returns when the node has decided, or with status "error" after ``submit_timeout``; in that
        case the block stays queued, and its final fate is counted, logged and passed to
        ``on_late_fate`` when it is known. ``parent`` (the block's first parent, the tip it was
        mined on) spares parsing the block to learn it. The same as :meth:`enqueue` then
        :meth:`outcome`.
        """
        return await self.outcome(
            self.enqueue(struct, block_hash=block_hash, parent=parent, on_late_fate=on_late_fate)
        )

    def enqueue(
        self,
        struct: bytes,
        *,
        block_hash: bytes,
        parent: bytes | None = None,
        on_late_fate: Callable[[SubmitOutcome], None] | None = None,
    ) -> _Block:
        """Queue a full block (with nonce) whose PoW the caller has checked, without yielding.

        When the node is idle (ready, nothing queued, nobody writing) the submit is written to its
        socket before this returns (see :meth:`_send_now`); otherwise the block is queued and the
        sender writes it, in order, when a node is usable. Await :meth:`outcome` with the returned
        block for its fate. ``parent``: the block's first parent, when the caller knows it (else the block is
        parsed to learn it). A struct that is not a block comes back already decided ("error").
        """
        start = trio.current_time()
        if not isinstance(block_hash, bytes) or len(block_hash) != 32:
            raise ValueError(f"block_hash must be 32 bytes, got {block_hash!r:.80}")
        if parent is None:
            try:
                parents = parse_block(bytes(struct)).parents
            except BlockParseError as e:
                parents, bad = (), str(e)
            else:
                bad = "the block has no parents"
            if not parents:
                self._counters["blocks_error"] += 1
                logger.error("block %s not submitted: %s", block_hash.hex(), bad)
                blk = _Block(bytes(struct), block_hash, b"", start)
                blk.outcome = SubmitOutcome("error", None, f"not a block: {bad}", 0.0)
                blk.done.set()
                return blk
            parent = parents[0]
        elif not isinstance(parent, bytes) or len(parent) != 32:
            raise ValueError(f"parent must be 32 bytes, got {parent!r:.80}")

        blk = _Block(bytes(struct), block_hash, parent, start, on_late_fate=on_late_fate)
        conn = self._conn
        if conn is not None and not self._queue and self._send_now(conn, blk):
            return blk
        if conn is None or not conn.ready.is_set():
            self._counters["blocks_queued"] += 1
            logger.warning("block %s found while no node is usable: queued", block_hash.hex())
        if len(self._queue) >= self._queue_max:
            self._counters["blocks_dropped"] += 1
            self._resolve(
                self._queue.popleft(), "error", f"dropped: the submit queue is full ({self._queue_max})"
            )
        self._queue.append(blk)
        self._wake_sender()
        return blk

    async def outcome(self, blk: _Block) -> SubmitOutcome:
        """The fate of a block from :meth:`enqueue`: returns when the node has decided, or with
        status "error" after ``submit_timeout`` (see :meth:`submit`)."""
        with trio.move_on_after(self._submit_timeout):
            await blk.done.wait()  # a checkpoint even when already decided
        if blk.outcome is not None:
            return blk.outcome
        self._counters["submit_timeouts"] += 1
        blk.timed_out = True
        waiting = "awaiting the node's answer" if blk.node else "queued: no node usable"
        reason = f"no answer within {self._submit_timeout:g}s ({waiting}); its fate will be logged"
        logger.warning("block %s: %s", blk.hash.hex(), reason)
        return SubmitOutcome("error", blk.node, reason, trio.current_time() - blk.queued_at)

    def status(self) -> UpstreamStatus:
        now = trio.current_time()
        conn = self._conn
        current = self.templates.current
        return UpstreamStatus(
            connected=conn.node.url if conn is not None and conn.ready.is_set() else None,
            nodes=tuple(
                NodeStatus(
                    url=n.url,
                    ws_url=n.ws_url,
                    state=n.state or ("backoff" if n.retry_at > now else "idle"),
                    last_error=n.last_error,
                    consecutive_failures=n.failures,
                    optimistic_supported=n.optimistic_supported,
                    retry_in=n.retry_at - now if n.retry_at > now else None,
                )
                for n in self._nodes
            ),
            template_age=None if self._template_at is None else now - self._template_at,
            template_height=current.templates[0].height if current is not None else None,
            queued_blocks=len(self._queue),
            counters=dict(self._counters),
        )

    # ---- node selection and backoff ---------------------------------------------------------

    def backoff_delay(self, failures: int) -> float:
        """Delay before retrying a node after ``failures`` consecutive failures (>= 1), jittered
        down by up to ``jitter`` so that proxies restarted together do not retry in lockstep."""
        return self._backoff.delay(failures)

    async def _next_node(self) -> _Node:
        """The most preferred node that is not backing off; waits for one if all are."""
        while True:
            now = trio.current_time()
            for node in self._nodes:
                if node.retry_at <= now:
                    return node
            await trio.sleep_until(min(n.retry_at for n in self._nodes))

    def _node_failed(self, node: _Node, reason: str) -> None:
        node.failures += 1
        node.last_error = reason
        delay = self.backoff_delay(node.failures)
        node.retry_at = trio.current_time() + delay
        # The first failure is news; the following ones (a node down for hours) are routine.
        logger.log(
            logging.WARNING if node.failures == 1 else logging.INFO,
            "node %s: %s; retry in %.1fs (%d consecutive failures)",
            node.url,
            reason,
            delay,
            node.failures,
        )

    def _node_healthy(self, node: _Node) -> None:
        node.failures = 0
        node.retry_at = -math.inf

    # ---- one connection ---------------------------------------------------------------------

    def _open(self, node: _Node) -> AbstractAsyncContextManager[WebSocketConnection]:
        return open_websocket_url(
            node.ws_url,
            connect_timeout=self._connect_timeout,
            disconnect_timeout=min(self._connect_timeout, 2.0),  # a hung node must not delay failover
            max_message_size=self._max_message_size,
        )

    async def _serve(self, node: _Node, *, failback: bool) -> _Node | None:
        """Connect to ``node`` and serve it until the connection ends; returns a node to fail back to."""
        node.state = "connecting"
        conn: _Conn | None = None
        error = "connection ended"
        try:
            async with self._open(node) as ws:
                conn = self._conn = _Conn(node, ws, trio.current_time(), failback=failback)
                async with trio.open_nursery() as nursery:
                    conn.scope = nursery.cancel_scope
                    nursery.start_soon(self._reader, conn)
                    nursery.start_soon(self._watchdog, conn)
                    nursery.start_soon(self._sender, conn)
                    for higher in self._nodes[: node.priority]:
                        nursery.start_soon(self._probe, higher, conn)
        except _NET_ERRORS as e:
            error = _describe(e)
        finally:
            node.state = None
            if conn is not None:
                self._conn = None
                self._requeue_in_flight(conn)
        if conn is not None and conn.end_reason is not None:
            error = conn.end_reason
            if not conn.failure:
                logger.info("node %s: %s", node.url, error)
                return conn.failback_to
        self._node_failed(node, error)
        return None

    async def _reader(self, conn: _Conn) -> None:
        while True:
            try:
                frame = await conn.ws.get_message()
            except ConnectionClosed as e:
                conn.end(f"node closed the connection: {_describe(e)}", failure=True)
                return
            event = conn.session.receive(frame)
            if isinstance(event, jsonrpc.Notify):
                self._on_templates(conn, event.templates)
            elif isinstance(event, jsonrpc.Result):
                if event.request.method == jsonrpc.SUBMIT:
                    self._on_submit_result(conn, event)
                elif event.templates is not None:
                    self._on_templates(conn, event.templates)
            elif isinstance(event, jsonrpc.ErrorReply):
                self._on_error(conn, event)
            else:
                self._counters["protocol_errors"] += 1
                logger.warning("node %s: protocol error: %s: %r", conn.node.url, event.reason, event.excerpt)

    async def _send(self, conn: _Conn, text: str) -> bool:
        try:
            await conn.ws.send_message(text)
        except (ConnectionClosed, LocalProtocolError) as e:  # the latter: a close is under way
            conn.end(f"connection lost while sending: {_describe(e)}", failure=True)
            return False
        return True

    async def _watchdog(self, conn: _Conn) -> None:
        """No template for template_timeout: ask once with mining.refresh, then give up on the node."""
        while True:
            deadline = conn.last_template_at + self._template_timeout
            if trio.current_time() < deadline:
                await trio.sleep_until(deadline)
                continue
            seen = conn.last_template_at
            self._counters["refreshes"] += 1
            if not await self._send(conn, conn.session.refresh().text):
                return
            await trio.sleep(self._refresh_timeout)
            if conn.last_template_at == seen:
                self._counters["template_timeouts"] += 1
                conn.end(
                    f"no template for {self._template_timeout:g}s, and mining.refresh brought none",
                    failure=True,
                )
                return

    def _on_templates(self, conn: _Conn, templates: tuple[BlockTemplate, ...]) -> None:
        if not templates:
            logger.info("node %s sent an empty template list (syncing)", conn.node.url)
            return
        now = trio.current_time()
        conn.last_template_at = self._template_at = now
        conn.tips = frozenset(t.parents[0] for t in templates)
        if not conn.ready.is_set():
            self._on_ready(conn)
        current = self.templates.current
        if (
            current is None
            or current.node != conn.node.url
            or _content(current.templates) != _content(templates)
        ):
            self.templates.publish(TemplateUpdate(conn.node.url, templates, now))

    def _on_ready(self, conn: _Conn) -> None:
        node = conn.node
        node.state = "connected"
        self._node_healthy(node)
        conn.ready.set()
        # Blocks that waited for a connection are judged against this fresh template first.
        for blk in self._queue:
            blk.check_tip = True
        previous, self._last_ready = self._last_ready, node
        self._counters["connects"] += 1
        if previous is not None:
            self._counters["reconnects"] += 1
            if previous is not node:
                self._counters["failbacks" if conn.failback else "failovers"] += 1
                logger.warning(
                    "%s from %s to %s",
                    "failed back" if conn.failback else "failed over",
                    previous.url,
                    node.url,
                )
        logger.info("node %s: serving templates (%d queued blocks)", node.url, len(self._queue))

    # ---- blocks -----------------------------------------------------------------------------

    def _optimistic_for(self, node: _Node) -> bool:
        if self._optimistic == "auto":
            return node.optimistic_supported is not False
        return self._optimistic == "on"

    def _wake_sender(self) -> None:
        self._queue_changed.set()
        self._queue_changed = trio.Event()

    async def _sender(self, conn: _Conn) -> None:
        await conn.ready.wait()
        while conn.end_reason is None:  # an ended connection's tips are no verdict for requeued blocks
            if conn.draining or not self._queue:
                await self._queue_changed.wait()
                continue
            blk = self._queue.popleft()
            if blk.done.is_set():
                continue
            if blk.check_tip:
                blk.check_tip = False
                if self._judge(conn, blk):
                    continue
            optimistic = self._optimistic_for(conn.node)
            request = conn.session.submit(blk.struct.hex(), optimistic=optimistic)
            blk.node, blk.optimistic = conn.node.url, optimistic
            conn.in_flight[request.id] = blk  # before sending: a lost connection requeues it
            self._counters["blocks_submitted"] += 1
            conn.sending = True
            try:
                if not await self._send(conn, request.text):
                    return
            finally:
                conn.sending = False

    def _send_now(self, conn: _Conn, blk: _Block) -> bool:
        """Write a new block's submit straight to the node's socket, in the caller's step, when
        that can neither reorder nor split frames: the connection is ready and not ending or
        draining, the queue is empty (checked by the caller) and nobody is writing to the
        websocket, it is plain TCP and its send buffer is empty enough to take the frame whole.
        False: nothing was done, queue the block. Once the frame is built, the block is in flight:
        a write that fails (or, against the odds, is partial) ends the connection, which requeues it.
        """
        ws = conn.ws
        stream = getattr(ws, "_stream", None)
        lock = getattr(ws, "_stream_lock", None)
        wsconn = getattr(ws, "_wsproto", None)
        if (
            conn.end_reason is not None
            or conn.draining
            or conn.sending
            or not conn.ready.is_set()
            or not isinstance(stream, trio.SocketStream)
            or lock is None
            or lock.locked()
            or wsconn is None
            or getattr(ws, "_close_reason", True) is not None
            or wsconn.state is not ConnectionState.OPEN  # a close is under way
        ):
            return False
        optimistic = self._optimistic_for(conn.node)
        hexdata = blk.struct.hex()
        try:
            fd = stream.socket.fileno()
            if fd < 0 or _TIOCOUTQ is None:
                return False
            queued = _struct.unpack("i", fcntl.ioctl(fd, _TIOCOUTQ, b"\0\0\0\0"))[0]
            room = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2 - queued
        except OSError:
            return False
        if room < len(hexdata) + 256:  # the frame's JSON around the hex, and its header
            return False
        request = conn.session.submit(hexdata, optimistic=optimistic)
        if _plain_frames(wsconn):
            data = masked_text_frame(request.text, os.urandom(4))
        else:
            try:
                data = wsconn.send(TextMessage(data=request.text))
            except LocalProtocolError:  # a close is under way
                conn.session.abandon(request.id)
                return False
        blk.node, blk.optimistic = conn.node.url, optimistic
        conn.in_flight[request.id] = blk  # a lost connection requeues it
        self._counters["blocks_submitted"] += 1
        try:
            sent = os.write(fd, data)
        except OSError as e:  # BlockingIOError included: nothing written
            sent, error = 0, _describe(e)
        else:
            error = f"partial write ({sent} of {len(data)} bytes)"
        if sent != len(data):
            conn.end(f"connection lost while sending: {error}", failure=True)
        return True

    def _judge(self, conn: _Conn, blk: _Block) -> bool:
        """Decide a block from a fresh template's tip; False means: (re)send it."""
        node = conn.node.url
        if blk.hash in conn.tips:
            self._resolve(blk, "accepted", f"the tip of {node} is this block", node)
        elif blk.if_not_tip is not None:
            self._resolve(blk, *blk.if_not_tip, node)
        elif blk.parent in conn.tips:
            return False
        else:
            self._resolve(blk, "stale", f"its parent {blk.parent.hex()} is no longer the tip of {node}", node)
        return True

    def _take_in_flight(self, conn: _Conn, request: jsonrpc.Request | None) -> _Block | None:
        if request is None or request.method != jsonrpc.SUBMIT:
            return None
        blk = conn.in_flight.pop(request.id, None)
        if not conn.in_flight:
            conn.idle.set()
        return blk

    def _on_submit_result(self, conn: _Conn, event: jsonrpc.Result) -> None:
        blk = self._take_in_flight(conn, event.request)
        if blk is None:
            return
        node, value = conn.node.url, event.value
        if value is True:
            self._resolve(blk, "accepted", "node answered true", node)
        elif value is False:
            self._resolve(blk, "stale", "node answered false (not the tip)", node)
        elif value:
            # Optimistic mode working: the answer is the next template.
            if blk.optimistic:
                conn.node.optimistic_supported = True
            self._resolve(blk, "accepted", "node answered with the next template (optimistic)", node)
            if event.templates:
                self._on_templates(conn, event.templates)
        else:
            self._resolve(blk, "error", f"unexpected submit result {value!r:.60}", node)

    def _on_error(self, conn: _Conn, event: jsonrpc.ErrorReply) -> None:
        node = conn.node
        text = f"{event.message or 'error'} ({event.code})"
        blk = self._take_in_flight(conn, event.request)
        if not event.fatal:
            if blk is not None:
                self._resolve(blk, "rejected", f"node error: {text}", node.url)
            else:
                method = event.request.method if event.request else "nothing pending"
                logger.warning("node %s: error %s (to %s)", node.url, text, method)
            return
        if blk is None:
            conn.end(f"node sent fatal error {text}", failure=True)
            return
        # The node closes the socket now. Its next template tells whether the block got in.
        if blk.optimistic:
            if node.optimistic_supported is not False and self._optimistic == "auto":
                logger.warning(
                    "node %s answered %s to an optimistic submit: its optimistic mode is broken; "
                    "submitting to it with optimistic=false from now on",
                    node.url,
                    text,
                )
            node.optimistic_supported = False
        blk.if_not_tip = ("rejected", f"node answered {text} and the block did not become the tip")
        self._requeue([blk])
        conn.end(f"node answered {text} to a submit; reconnecting to learn the block's fate", failure=False)

    def _requeue(self, blocks: list[_Block]) -> None:
        for blk in blocks:
            blk.check_tip = True
        self._queue.extendleft(reversed(blocks))
        self._wake_sender()

    def _requeue_in_flight(self, conn: _Conn) -> None:
        """The connection is gone: unanswered blocks wait for the next template's verdict."""
        conn.session.abandon_pending()
        blocks = list(conn.in_flight.values())
        conn.in_flight.clear()
        self._requeue(blocks)

    def _resolve(self, blk: _Block, status: SubmitStatus, reason: str, node: str | None = None) -> None:
        if blk.done.is_set():
            return
        now = trio.current_time()
        blk.outcome = SubmitOutcome(status, node or blk.node, reason, now - blk.queued_at)
        blk.done.set()
        self._counters[f"blocks_{status}"] += 1
        level = logging.INFO if status == "accepted" and not blk.timed_out else logging.WARNING
        late = " (after submit() timed out)" if blk.timed_out else ""
        logger.log(level, "block %s %s%s: %s", blk.hash.hex(), status, late, reason)
        if blk.timed_out and blk.on_late_fate is not None:
            blk.on_late_fate(blk.outcome)

    # ---- fail-back --------------------------------------------------------------------------

    async def _probe(self, node: _Node, conn: _Conn) -> None:
        """Watch a more preferred node while a lesser one is served; fail back once it is healthy."""
        try:
            while True:
                await trio.sleep_until(node.retry_at)
                node.state = "probing"
                error = await self._probe_once(node)
                node.state = None
                if error is None:
                    break
                self._node_failed(node, f"probe: {error}")
        finally:
            if node.state == "probing":
                node.state = None
        self._node_healthy(node)
        await self._fail_back(conn, node)

    async def _probe_once(self, node: _Node) -> str | None:
        """Connect, wait for a notify, stay up for failback_after. None if healthy, else why not."""
        try:
            async with self._open(node) as ws:
                session = jsonrpc.MiningSession()
                with trio.move_on_after(self._template_timeout) as waiting:
                    while True:
                        event = session.receive(await ws.get_message())
                        if isinstance(event, jsonrpc.Notify) and event.templates:
                            break
                if waiting.cancelled_caught:
                    return f"no template within {self._template_timeout:g}s"
                with trio.move_on_after(self._failback_after):
                    while True:
                        await ws.get_message()
        except _NET_ERRORS as e:
            return _describe(e)
        return None

    async def _fail_back(self, conn: _Conn, node: _Node) -> None:
        if conn.failback_to is not None:
            return  # another probe got there first
        conn.failback_to = node
        logger.info(
            "node %s healthy for %gs: failing back from %s", node.url, self._failback_after, conn.node.url
        )
        # Let answers to in-flight submits arrive here first, so no block needs a second submission.
        conn.draining = True
        with trio.move_on_after(self._submit_timeout):
            while conn.in_flight:
                conn.idle = trio.Event()
                await conn.idle.wait()
        conn.end(f"failing back to {node.url}", failure=False)
