"""The admin websocket protocol (``/ws``, the node's ``/v1a/ws``) for one connection, sans-IO.

A session takes client frames and returns what to send back and what the server must do about it
(subscribe an address upstream, open a history stream, ...). It follows hathor-core's
``hathor/websocket/`` observable behaviour, including its reply shapes and error texts, so that
wallets written for a node work unchanged:

- on open: ``{"type": "capabilities", "capabilities": [...]}``;
- ``ping`` -> ``pong``; a frame that is not a JSON object -> ``{"type": "error", "success": false,
  "errmsg": "Malformed command"}``; an unknown (or missing) ``type`` is ignored;
- ``subscribe_address`` -> ``{"type": "subscribe_address", "address", "success"[, "message"]}``
  with the node's texts (``Invalid address: X``, ``Reached maximum number of subscribed addresses
  (N).``, ``Missing or invalid 'address' parameter.``); ``unsubscribe_address`` is answered
  ``{"type": "unsubscribe_address", "success": true}`` only when the address was subscribed;
- history streaming: ``request:history:xpub|manual|ack|stop`` -> ``stream:history:*`` with the
  node's texts; every streamed address is subscribed on this connection (and counts toward its limit).

Where the node would crash on a malformed request (a missing ``id``, a non-integer ``gap-limit``)
this session answers a ``stream:history:error`` instead; every message it emits has a string ``type``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from miningproxy.api.history_stream import (
    AddressItem,
    HistoryStream,
    Item,
    StreamState,
    VertexItem,
    error_message,
)
from miningproxy.hathor.addresses import AddressError, decode_address
from miningproxy.hathor.networks import Network
from miningproxy.hathor.xpub import ExtendedPublicKey, XPubError, parse_xpub

HISTORY_STREAMING = "history-streaming"
ADDRESS_B58_SIZE = 34
MAX_GAP_LIMIT = 10_000
DEFAULT_GAP_LIMIT = 20
MAX_PENDING_ADDRESSES = 5_000

MALFORMED = {"type": "error", "success": False, "errmsg": "Malformed command"}
PONG = {"type": "pong"}


# --- what the server must do -------------------------------------------------------------------


@dataclass(frozen=True)
class StreamRequest:
    """A history stream to produce. ``xpub`` set: derive addresses from ``first_index`` on;
    otherwise stream ``addresses`` (more may follow with :class:`AddMoreAddresses`)."""

    stream_id: Any
    gap_limit: int
    window: int | None
    xpub: ExtendedPublicKey | None = None
    xpub_text: str = ""
    first_index: int = 0
    addresses: tuple[AddressItem, ...] = ()
    last: bool = False

    @property
    def kind(self) -> str:
        return "xpub" if self.xpub is not None else "manual"


@dataclass(frozen=True)
class Subscribe:
    address: str


@dataclass(frozen=True)
class Unsubscribe:
    address: str


@dataclass(frozen=True)
class OpenStream:
    request: StreamRequest


@dataclass(frozen=True)
class AddMoreAddresses:
    stream_id: Any
    addresses: tuple[AddressItem, ...]
    last: bool


@dataclass(frozen=True)
class CloseStream:
    """Stop producing this stream (finished, stopped by the client, or failed)."""

    stream_id: Any
    success: bool


Action = Subscribe | Unsubscribe | OpenStream | AddMoreAddresses | CloseStream


@dataclass
class Output:
    messages: list[dict[str, Any]] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)

    def extend(self, other: Output) -> Output:
        self.messages.extend(other.messages)
        self.actions.extend(other.actions)
        return self


@dataclass(frozen=True)
class SessionLimits:
    max_subscriptions: int | None = None  # per connection; None = unlimited (the node's default)
    max_gap_limit: int = MAX_GAP_LIMIT
    max_pending_addresses: int = MAX_PENDING_ADDRESSES
    stream_buffer: int = 64


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Invalid(Exception):
    """A request field is unusable: answered with a stream error carrying this text."""


class AdminSession:
    def __init__(
        self,
        *,
        network: Network,
        history: bool = True,
        limits: SessionLimits | None = None,
    ) -> None:
        self.network = network
        self.history = history
        self.limits = limits or SessionLimits()
        self.subscribed: dict[str, None] = {}  # an ordered set
        self.stream: HistoryStream | None = None
        self.stream_kind: str | None = None
        self._manual_added = 0  # addresses given for the manual stream so far
        self.closed = False

    @property
    def capabilities(self) -> list[str]:
        return [HISTORY_STREAMING] if self.history else []

    def open(self) -> Output:
        return Output([{"type": "capabilities", "capabilities": self.capabilities}])

    def close(self) -> Output:
        """The connection is gone: release every subscription and the stream."""
        out = Output()
        if self.closed:
            return out
        self.closed = True
        if self.stream is not None:
            self.stream.stop()
            out.actions.append(CloseStream(self.stream.id, False))
            self.stream = None
        out.actions.extend(Unsubscribe(a) for a in self.subscribed)
        self.subscribed.clear()
        return out

    # -- client frames ------------------------------------------------------------------------
    def receive(self, payload: str | bytes) -> Output:
        try:
            message = json.loads(payload)
        except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            return Output([dict(MALFORMED)])
        if not isinstance(message, dict):
            return Output([dict(MALFORMED)])
        kind = message.get("type")
        if kind == "ping":
            return Output([dict(PONG)])
        if kind == "subscribe_address":
            return self._subscribe_request(message)
        if kind == "unsubscribe_address":
            return self._unsubscribe_request(message)
        if kind == "request:history:xpub":
            return self._guard(self._xpub_request, message)
        if kind == "request:history:manual":
            return self._guard(self._manual_request, message)
        if kind == "request:history:stop":
            return self._stop_request(message)
        if kind == "request:history:ack":
            return self._ack_request(message)
        return Output()  # unknown types are ignored, as on the node

    # -- subscriptions ------------------------------------------------------------------------
    def subscribe(self, address: Any) -> tuple[bool, str, list[Action]]:
        """Subscribe this connection; (success, error text, actions)."""
        if not isinstance(address, str):
            return False, "Missing or invalid 'address' parameter.", []
        if not self.valid_address(address):
            return False, f"Invalid address: {address}", []
        if address in self.subscribed:
            return True, "", []
        limit = self.limits.max_subscriptions
        if limit is not None and len(self.subscribed) >= limit:
            return False, f"Reached maximum number of subscribed addresses ({limit}).", []
        self.subscribed[address] = None
        return True, "", [Subscribe(address)]

    def valid_address(self, address: str) -> bool:
        """The node's decode_address_strict: 34 characters, checksum, this network's version bytes."""
        if len(address) != ADDRESS_B58_SIZE:
            return False
        try:
            decode_address(address, self.network)
        except AddressError:
            return False
        return True

    def _subscribe_request(self, message: dict[str, Any]) -> Output:
        address = message.get("address")
        success, errmsg, actions = self.subscribe(address)
        reply: dict[str, Any] = {"type": "subscribe_address", "address": address, "success": success}
        if not success:
            reply["message"] = errmsg
        return Output([reply], actions)

    def _unsubscribe_request(self, message: dict[str, Any]) -> Output:
        address = message.get("address")
        if not isinstance(address, str) or address not in self.subscribed:
            return Output()  # the node answers only an actual unsubscription
        del self.subscribed[address]
        return Output([{"type": "unsubscribe_address", "success": True}], [Unsubscribe(address)])

    # -- history streaming --------------------------------------------------------------------
    def _guard(self, handler, message: dict[str, Any]) -> Output:
        if not self.history:
            return Output([error_message("", "Streaming history is disabled.")])
        stream_id = message.get("id")
        if not isinstance(stream_id, str) and not _is_int(stream_id):
            return Output([error_message("", "Missing or invalid 'id' parameter.")])
        try:
            return handler(stream_id, message)
        except _Invalid as exc:
            return Output([error_message(stream_id, str(exc))])

    def _window(self, message: dict[str, Any]) -> int | None:
        window = message.get("window-size")
        if window is not None and not _is_int(window):
            raise _Invalid("Invalid window-size.")
        return window

    def _gap_limit(self, message: dict[str, Any]) -> int:
        gap_limit = message.get("gap-limit", DEFAULT_GAP_LIMIT)
        if not _is_int(gap_limit):
            raise _Invalid("Invalid gap-limit.")
        if gap_limit > self.limits.max_gap_limit:
            raise _Invalid(f"GAP limit is too big. Maximum: {self.limits.max_gap_limit}")
        return gap_limit

    def _xpub_request(self, stream_id: Any, message: dict[str, Any]) -> Output:
        if self.stream is not None:
            raise _Invalid("Streaming is already opened.")
        xpub_text = message.get("xpub")
        gap_limit = self._gap_limit(message)
        first_index = message.get("first-index", 0)
        if not _is_int(first_index) or first_index < 0:
            raise _Invalid("Invalid first-index.")
        try:
            xpub = parse_xpub(xpub_text)  # type: ignore[arg-type]  # checked inside
        except XPubError:
            raise _Invalid(f"Invalid XPub: {xpub_text}") from None
        window = self._window(message)
        request = StreamRequest(
            stream_id, gap_limit, window, xpub=xpub, xpub_text=xpub_text, first_index=first_index
        )
        return self._start(request, "xpub")

    def _manual_request(self, stream_id: Any, message: dict[str, Any]) -> Output:
        first = bool(message.get("first", False))
        last = bool(message.get("last", False))
        if self.stream is not None:
            if first or self.stream.id != stream_id or self.stream_kind != "manual":
                raise _Invalid("Streaming is already opened.")
            if self.stream.state is not StreamState.ACTIVE:
                return Output()  # addresses for a stream that already ended: nothing to do
            items = self._address_items(message.get("addresses", []))
            self._count_addresses(items)
            return Output([], [AddMoreAddresses(stream_id, items, last)])
        gap_limit = self._gap_limit(message)
        if not first:
            raise _Invalid("Streaming not found. You must send first=true in your first message.")
        items = self._address_items(message.get("addresses", []))
        self._manual_added = 0
        self._count_addresses(items)
        window = self._window(message)
        request = StreamRequest(stream_id, gap_limit, window, addresses=items, last=last)
        return self._start(request, "manual")

    def _address_items(self, raw: Any) -> tuple[AddressItem, ...]:
        if not isinstance(raw, list):
            raise _Invalid("Invalid addresses: expected a list of [index, address] pairs.")
        items: list[AddressItem] = []
        for entry in raw:
            if (
                not isinstance(entry, list | tuple)
                or len(entry) != 2
                or not _is_int(entry[0])
                or entry[0] < 0
                or not isinstance(entry[1], str)
            ):
                raise _Invalid(f"Invalid address: {entry!r}")
            index, address = entry
            if not self.valid_address(address):
                raise _Invalid(f"Invalid address: AddressItem(index={index}, address={address!r})")
            items.append(AddressItem(index, address))
        return tuple(items)

    def _count_addresses(self, items: Sequence[AddressItem]) -> None:
        sent = self.stream.sent_addresses if self.stream is not None else 0
        if self._manual_added - sent + len(items) > self.limits.max_pending_addresses:
            raise _Invalid("List of addresses is too long.")
        self._manual_added += len(items)

    def _start(self, request: StreamRequest, kind: str) -> Output:
        self.stream = HistoryStream(request.stream_id, request.window, buffer=self.limits.stream_buffer)
        self.stream_kind = kind
        return Output([self.stream.begin()], [OpenStream(request)])

    def _current_stream(self, message: dict[str, Any]) -> tuple[Any, Output | None]:
        stream_id = message.get("id", "")
        if self.stream is None:
            return stream_id, Output([error_message(stream_id, "No streaming opened.")])
        if self.stream.id != stream_id:
            return stream_id, Output([error_message(stream_id, "Current stream has a different id.")])
        return stream_id, None

    def _stop_request(self, message: dict[str, Any]) -> Output:
        stream_id, problem = self._current_stream(message)
        if problem is not None:
            return problem
        return self._end_stream(success=False)

    def _ack_request(self, message: dict[str, Any]) -> Output:
        stream_id, problem = self._current_stream(message)
        if problem is not None:
            return problem
        stream = self.stream
        assert stream is not None
        out = Output()
        ack = message.get("ack")
        if ack is not None:
            if not _is_int(ack):
                return Output([error_message(stream_id, "Invalid ack.")])
            errmsg = stream.ack(ack)
            if errmsg is not None:
                out.messages.append(error_message(stream_id, errmsg))
            if stream.state is StreamState.CLOSED:
                return out.extend(self._end_stream(success=bool(stream.success)))
        window = message.get("window")
        if window is not None:
            if not _is_int(window):
                out.messages.append(error_message(stream_id, "Invalid window."))
                return out
            stream.set_window(window)
        return out

    def _end_stream(self, *, success: bool) -> Output:
        stream = self.stream
        if stream is None:
            return Output()
        stream.stop()  # no-op when the ack of end already closed it
        self.stream = None
        self.stream_kind = None
        return Output([], [CloseStream(stream.id, success)])

    # -- the stream's source ------------------------------------------------------------------
    def _source_stream(self, stream_id: Any) -> HistoryStream | None:
        stream = self.stream
        if stream is None or stream.id != stream_id or stream.state is not StreamState.ACTIVE:
            return None
        return stream

    def stream_wants_more(self, stream_id: Any) -> bool:
        stream = self._source_stream(stream_id)
        return stream is not None and stream.wants_more()

    def stream_offer(self, stream_id: Any, item: Item) -> None:
        stream = self._source_stream(stream_id)
        if stream is not None:
            stream.offer(item)

    def stream_finish(self, stream_id: Any) -> None:
        stream = self._source_stream(stream_id)
        if stream is not None:
            stream.finish()

    def stream_fail(self, stream_id: Any, errmsg: str) -> Output:
        """The source failed: the client gets the error now and the stream ends."""
        if self._source_stream(stream_id) is None:
            return Output()
        return Output([error_message(stream_id, errmsg)]).extend(self._end_stream(success=False))

    def pump(self, budget: int) -> Output:
        """Up to ``budget`` stream messages the window allows now; subscribes streamed addresses."""
        out = Output()
        stream = self.stream
        while stream is not None and budget > 0:
            item = stream.peek()
            if item is None:
                break
            if isinstance(item, AddressItem):
                success, errmsg, actions = self.subscribe(item.address)
                if not success:
                    out.messages.append(error_message(stream.id, f"Address subscription failed: {errmsg}"))
                    return out.extend(self._end_stream(success=False))
                out.actions.extend(actions)
            out.messages.append(stream.take())
            budget -= 1
        return out

    def stream_can_send(self) -> bool:
        """Whether :meth:`pump` would emit something now."""
        return self.stream is not None and self.stream.peek() is not None


__all__ = [
    "Action",
    "AddMoreAddresses",
    "AddressItem",
    "AdminSession",
    "CloseStream",
    "HISTORY_STREAMING",
    "OpenStream",
    "Output",
    "SessionLimits",
    "StreamRequest",
    "Subscribe",
    "Unsubscribe",
    "VertexItem",
]
