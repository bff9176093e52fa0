"""Consuming the upstream node's ``/v1a/event_ws`` into the ``node`` event sequence.

The consumer asks the node for the events after the last stored id, windowed, and appends them
durably before acknowledging them, so a restart of either side loses nothing: it resumes from what
is stored. The node's frames are kept as received (the event object's JSON text is cut out of the
frame, never re-encoded), which is what lets downstream clients see the node's bytes.

The node's quirks are expected, not feared:

- On every ACK the node rewinds to the acknowledged id and sends the events after it again; those
  duplicates are dropped by id (and counted). The consumer only acknowledges ids the node has just
  sent, and treats the node's ``ACK_TOO_LARGE``/``ACK_TOO_SMALL`` answers (possible when an ACK
  races a rewind) as hints to correct its own bookkeeping.
- A node without an event queue answers ``EVENT_WS_NOT_RUNNING`` (or has no such path at all); the
  consumer backs off and tries again later. Downstream, the proxy reports "not running" until it
  has received a first event.

A stored stream is bound to its node's (peer_id, network, stream_id). An upstream that sends
another one (another node behind the same URL, a node that reset its event queue) is refused: the
consumer stops appending, logs what differs, counts it and keeps the stored events served. It keeps
trying the configured nodes, so a failover node that carries the same stream, or the original node
coming back, resumes the stream; moving the events database aside starts a new one.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import trio
import trio_websocket

from miningproxy.events.feed import EventFeed
from miningproxy.events.log import IdentityMismatch, StoredEvent, StreamIdentity
from miningproxy.events.metrics import EventMetrics
from miningproxy.events.stream import ACK_TOO_LARGE, ACK_TOO_SMALL, EVENT_WS_NOT_RUNNING, dumps
from miningproxy.upstream.backoff import Backoff
from miningproxy.upstream.urls import ws_url

log = logging.getLogger("miningproxy.events.upstream")

MAX_MESSAGE_SIZE = 64 * 1024 * 1024  # a vertex with many inputs and outputs makes a big event


# --- frames ---------------------------------------------------------------------------------------


class FrameError(ValueError):
    """An upstream frame that is not the node's event_ws protocol."""


@dataclass(frozen=True, slots=True)
class UpstreamEvent:
    identity: StreamIdentity
    event_id: int
    timestamp: float
    text: str  # the "event" member's JSON text, exactly as it appears in the frame
    latest_event_id: int


@dataclass(frozen=True, slots=True)
class UpstreamError:
    type: str
    invalid_request: str | None
    error_message: str | None


_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _members(text: str) -> dict[str, tuple[Any, int, int]]:
    """The top-level members of a JSON object: key -> (value, start, end) of the value's text."""
    try:
        i = _WS.match(text, 0).end()  # type: ignore[union-attr]
        if text[i : i + 1] != "{":
            raise FrameError("a frame must be a JSON object")
        i = _WS.match(text, i + 1).end()  # type: ignore[union-attr]
        members: dict[str, tuple[Any, int, int]] = {}
        if text[i : i + 1] == "}":
            i += 1
        else:
            while True:
                if text[i : i + 1] != '"':
                    raise FrameError(f"expected a member name at offset {i}")
                key, i = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]
                i = _WS.match(text, i).end()  # type: ignore[union-attr]
                if text[i : i + 1] != ":":
                    raise FrameError(f"expected ':' at offset {i}")
                start = _WS.match(text, i + 1).end()  # type: ignore[union-attr]
                value, i = _DECODER.raw_decode(text, start)
                members[key] = (value, start, i)
                i = _WS.match(text, i).end()  # type: ignore[union-attr]
                separator = text[i : i + 1]
                i = _WS.match(text, i + 1).end()  # type: ignore[union-attr]
                if separator == "}":
                    break
                if separator != ",":
                    raise FrameError(f"expected ',' or '}}' at offset {i}")
        if _WS.match(text, i).end() != len(text):  # type: ignore[union-attr]
            raise FrameError("trailing data after the frame")
        return members
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, FrameError):
            raise
        raise FrameError(f"invalid JSON: {exc}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_upstream_frame(text: str | bytes) -> UpstreamEvent | UpstreamError:
    """Read one frame from a node's event_ws. Raises FrameError for anything else."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FrameError(f"frame is not UTF-8: {exc}") from None
    members = _members(text)
    kind = members.get("type", (None, 0, 0))[0]
    if kind == "EVENT":
        try:
            peer_id = members["peer_id"][0]
            network = members["network"][0]
            stream_id = members["stream_id"][0]
            latest = members["latest_event_id"][0]
            event, start, end = members["event"]
        except KeyError as exc:
            raise FrameError(f"EVENT frame without {exc.args[0]!r}") from None
        if not all(isinstance(v, str) for v in (peer_id, network, stream_id)):
            raise FrameError("EVENT frame: peer_id, network and stream_id must be strings")
        if not _is_int(latest) or not isinstance(event, dict):
            raise FrameError("EVENT frame: latest_event_id must be an int and event an object")
        event_id = event.get("id")
        timestamp = event.get("timestamp")
        if not _is_int(event_id) or event_id < 0:
            raise FrameError(f"EVENT frame: bad event id {event_id!r}")
        if not isinstance(timestamp, (int, float)) or isinstance(timestamp, bool):
            raise FrameError(f"EVENT frame: bad event timestamp {timestamp!r}")
        return UpstreamEvent(
            StreamIdentity(peer_id, network, stream_id), event_id, float(timestamp), text[start:end], latest
        )
    if isinstance(kind, str) and "invalid_request" in members:
        invalid = members["invalid_request"][0]
        message = members.get("error_message", (None, 0, 0))[0]
        return UpstreamError(
            kind, invalid if isinstance(invalid, str) else None, message if isinstance(message, str) else None
        )
    raise FrameError(f"unexpected frame type {kind!r}")


# --- the consumer ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Outcome:
    kind: str  # closed | not-running | mismatch | error
    detail: str = ""
    progressed: bool = False


@dataclass
class _SessionState:
    acked: int  # the last id this session acknowledged (-1: none)
    last_frame_id: int = -1  # id of the newest EVENT frame received (duplicates included)
    progressed: bool = False
    ending: _Outcome | None = None


class NodeEventConsumer:
    """Keeps the ``node`` feed in step with the upstream node's event queue.

    ``nodes`` are node API base URLs (``http://host:8080/v1a/``) in priority order; each round tries
    them in order and streams from the first that accepts. ``run`` never returns on its own.
    """

    def __init__(
        self,
        feed: EventFeed,
        nodes: Sequence[str],
        *,
        window_size: int = 256,
        batch_max: int = 1000,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        connect_timeout: float = 10.0,
        ping_interval: float = 30.0,
        ping_timeout: float = 20.0,
        metrics: EventMetrics | None = None,
    ) -> None:
        if not nodes:
            raise ValueError("NodeEventConsumer needs at least one node URL")
        if window_size < 1:
            raise ValueError("window_size must be at least 1")
        self.feed = feed
        self.nodes = list(nodes)
        self.urls = {node: ws_url(node, "event_ws") for node in self.nodes}
        self.window_size = window_size
        self.batch_max = batch_max
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.metrics = metrics
        self.state = "idle"
        self.node: str | None = None
        self.upstream_latest: int | None = None
        self.duplicates = 0
        self.last_error: str | None = None
        self.mismatch: dict[str, Any] | None = None
        self._logged_mismatch: set[tuple[str, StreamIdentity]] = set()
        feed.latest_hint = self._latest_hint

    def _latest_hint(self) -> int | None:
        return self.upstream_latest if self.state in ("connected", "streaming") else None

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "node": self.node,
            "stored_last_id": self.feed.last_id,
            "upstream_latest_event_id": self.upstream_latest,
            "duplicates_dropped": self.duplicates,
            "last_error": self.last_error,
            "mismatch": self.mismatch,
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        backoff = Backoff(self.backoff_initial, max(self.backoff_max, self.backoff_initial))
        failures = 0
        while True:
            outcome = _Outcome("error")
            for node in self.nodes:
                try:
                    outcome = await self._consume(node)
                except Exception as exc:  # a bug or a disk error must not end the consumer: retry
                    log.exception("upstream event consumer failed on %s; retrying", node)
                    outcome = _Outcome("error", f"internal error: {exc!r}")
                    self.last_error = outcome.detail
                self._count(outcome.kind)
                if outcome.progressed:
                    failures = 0
                    break  # it streamed and then ended: start over from the preferred node
            if outcome.kind == "mismatch" or (outcome.kind == "not-running" and not outcome.progressed):
                self.state = outcome.kind
            else:
                self.state = "reconnecting"
            failures += 1
            await trio.sleep(backoff.delay(failures))

    def _count(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.upstream_sessions.labels(kind).inc()

    async def _consume(self, node: str) -> _Outcome:
        url = self.urls[node]
        self.node = node
        self.state = "connecting"
        try:
            async with trio_websocket.open_websocket_url(
                url,
                connect_timeout=self.connect_timeout,
                disconnect_timeout=2.0,
                max_message_size=MAX_MESSAGE_SIZE,
                message_queue_size=64,
                receive_buffer_size=65536,
            ) as ws:
                outcome = await self._session(node, ws)
        except trio_websocket.ConnectionRejected as exc:
            status = getattr(exc, "status_code", None)
            outcome = _Outcome(
                "not-running", f"{url} refused the websocket (HTTP {status}): no event queue there"
            )
        except trio_websocket.HandshakeError as exc:
            outcome = _Outcome("error", f"cannot connect to {url}: {exc!r}")
        except (OSError, trio_websocket.ConnectionClosed) as exc:
            outcome = _Outcome("error", f"connection to {url} failed: {exc!r}")
        if outcome.kind == "closed":
            log.info(
                "upstream event stream from %s ended (%s); stored up to id %s",
                node,
                outcome.detail or "closed",
                self.feed.last_id,
            )
        elif outcome.kind == "not-running":
            if self.last_error != outcome.detail:
                log.warning("upstream %s has no running event queue: %s", node, outcome.detail)
        elif outcome.kind == "error":
            log.warning("upstream event stream from %s: %s", node, outcome.detail)
        if outcome.kind != "closed":
            self.last_error = outcome.detail
        return outcome

    async def _session(self, node: str, ws: trio_websocket.WebSocketConnection) -> _Outcome:
        feed = self.feed
        start = feed.last_id
        await ws.send_message(
            dumps({"type": "START_STREAM", "last_ack_event_id": start, "window_size": self.window_size})
        )
        state = _SessionState(acked=-1 if start is None else start)
        self.state = "connected"
        self.upstream_latest = None
        send, receive = trio.open_memory_channel[Any](2 * self.window_size + 64)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receiver, ws, send, state)
            nursery.start_soon(self._pinger, ws, state)
            outcome = await self._process(node, ws, receive, state)
            nursery.cancel_scope.cancel()
        if self.state in ("connected", "streaming"):
            self.state = "reconnecting"
        return outcome

    async def _receiver(
        self, ws: trio_websocket.WebSocketConnection, send: trio.MemorySendChannel[Any], state: _SessionState
    ) -> None:
        async with send:
            try:
                while True:
                    message = await ws.get_message()
                    try:
                        frame = parse_upstream_frame(message)
                    except FrameError as exc:
                        state.ending = state.ending or _Outcome("error", f"bad frame from the node: {exc}")
                        return
                    await send.send(frame)
            except trio_websocket.ConnectionClosed as exc:
                reason = exc.reason
                state.ending = state.ending or _Outcome(
                    "closed", f"code {reason.code} {reason.reason or ''}".strip()
                )

    async def _pinger(self, ws: trio_websocket.WebSocketConnection, state: _SessionState) -> None:
        # A silent node is normal (no new vertices); a dead TCP path is not: ping to tell them apart.
        try:
            while True:
                await trio.sleep(self.ping_interval)
                with trio.fail_after(self.ping_timeout):
                    await ws.ping()
        except trio.TooSlowError:
            state.ending = state.ending or _Outcome("error", f"no pong within {self.ping_timeout:g}s")
            with trio.move_on_after(1.0):
                await ws.aclose()
        except trio_websocket.ConnectionClosed:
            pass

    async def _process(
        self,
        node: str,
        ws: trio_websocket.WebSocketConnection,
        receive: trio.MemoryReceiveChannel[Any],
        state: _SessionState,
    ) -> _Outcome:
        feed = self.feed
        while True:
            try:
                batch = [await receive.receive()]
            except trio.EndOfChannel:
                ending = state.ending or _Outcome("closed")
                return _Outcome(ending.kind, ending.detail, state.progressed)
            while len(batch) < self.batch_max:
                try:
                    batch.append(receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            expected = feed.next_id
            identity = feed.identity
            to_store: list[StoredEvent] = []
            problem: _Outcome | None = None
            for item in batch:
                if isinstance(item, UpstreamError):
                    problem = self._on_error(node, item, state)
                    if problem is not None:
                        break
                    continue
                if identity is None:
                    identity = item.identity  # the first event ever: this node's stream becomes ours
                elif item.identity != identity:
                    problem = self._on_mismatch(node, identity, item.identity)
                    break
                state.last_frame_id = item.event_id
                if self.upstream_latest is None or item.latest_event_id > self.upstream_latest:
                    self.upstream_latest = item.latest_event_id
                if item.event_id < expected:
                    self.duplicates += 1
                    if self.metrics is not None:
                        self.metrics.upstream_duplicates.inc()
                    continue
                if item.event_id > expected:
                    problem = _Outcome(
                        "error", f"the node skipped from event {expected - 1} to {item.event_id}"
                    )
                    break
                to_store.append(StoredEvent(item.event_id, item.timestamp, item.text))
                expected += 1
            if to_store:
                try:
                    await feed.append(to_store, identity=identity)
                except IdentityMismatch as exc:  # the feed's view was stale; the log is the judge
                    return _Outcome("mismatch", str(exc), state.progressed)
                except Exception:  # disk full, read-only...: counted; run() logs it and retries
                    if self.metrics is not None:
                        self.metrics.write_errors.labels(feed.seq).inc()
                    raise
                if self.metrics is not None:
                    self.metrics.appended.labels(feed.seq).inc(len(to_store))
                if not state.progressed:
                    log.info(
                        "consuming events from %s (stream %s); stored up to id %s",
                        node,
                        identity.stream_id if identity else "?",
                        feed.last_id,
                    )
                state.progressed = True
                self.state = "streaming"
                self.mismatch = None
            if problem is not None:
                return _Outcome(problem.kind, problem.detail, state.progressed)
            try:
                await self._maybe_ack(ws, state)
            except trio_websocket.ConnectionClosed:
                continue  # the receiver saw it too: the channel ends and so does this loop

    async def _maybe_ack(self, ws: trio_websocket.WebSocketConnection, state: _SessionState) -> None:
        durable = self.feed.last_id
        if durable is None:
            return
        # Only acknowledge what the node has just sent: after a rewind its "last sent" is the
        # newest frame's id, and an ACK beyond it is refused as too large.
        candidate = min(durable, state.last_frame_id)
        if candidate > state.acked:
            state.acked = candidate
            await ws.send_message(  # ConnectionClosed ends the session (see _process)
                dumps({"type": "ACK", "ack_event_id": candidate, "window_size": self.window_size})
            )

    def _on_error(self, node: str, error: UpstreamError, state: _SessionState) -> _Outcome | None:
        if error.type == EVENT_WS_NOT_RUNNING:
            return _Outcome(
                "not-running", f"{node} answered EVENT_WS_NOT_RUNNING (is --enable-event-queue set?)"
            )
        acked = _ack_id(error.invalid_request)
        if error.type == ACK_TOO_LARGE and acked is not None:
            # The ACK raced one of the node's rewinds; it will resend, and we acknowledge again then.
            state.acked = min(state.acked, acked - 1)
            return None
        if error.type == ACK_TOO_SMALL and acked is not None:
            state.acked = max(state.acked, acked)
            return None
        return _Outcome(
            "error", f"{node} refused a request: {error.type} {error.error_message or ''}".strip()
        )

    def _on_mismatch(self, node: str, stored: StreamIdentity, offered: StreamIdentity) -> _Outcome:
        self.mismatch = {
            "node": node,
            "stored": {"peer_id": stored.peer_id, "network": stored.network, "stream_id": stored.stream_id},
            "offered": {
                "peer_id": offered.peer_id,
                "network": offered.network,
                "stream_id": offered.stream_id,
            },
        }
        if self.metrics is not None:
            self.metrics.upstream_identity_mismatch.inc()
        key = (node, offered)
        if key not in self._logged_mismatch:
            self._logged_mismatch.add(key)
            differs = [
                f"{name} {getattr(stored, name)} -> {getattr(offered, name)}"
                for name in ("peer_id", "network", "stream_id")
                if getattr(stored, name) != getattr(offered, name)
            ]
            log.error(
                "upstream %s sends a different event stream (%s): NOT appending; the stored events (up to id %s) "
                "are still served. Another node or a reset event queue; to follow the new stream, move the events "
                "database aside and restart.",
                node,
                "; ".join(differs),
                self.feed.last_id,
            )
        return _Outcome("mismatch", f"{node}: event stream identity changed")


def _ack_id(invalid_request: str | None) -> int | None:
    if not invalid_request:
        return None
    try:
        request = json.loads(invalid_request)
    except (ValueError, RecursionError):
        return None
    value = request.get("ack_event_id") if isinstance(request, dict) else None
    return value if _is_int(value) else None
