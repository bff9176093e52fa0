"""Flow control of one history stream (``stream:history:*``), sans-IO.

The rules are the node's (hathor-core ``hathor/websocket/streamer.py``), so a wallet that streams
from a node streams the same way from the proxy or the dev node:

- ``begin`` is seq 0 and always sent; every ``address``/``vertex`` and the final ``end`` take the
  next seq. With a window ``w`` (``None``: no flow control) a message may go out only while
  ``next_seq < last_ack + w + 1``: the client must ack to receive more.
- An ack equal to the last one is ignored; a smaller one ("Outdated ACK received (ack=N)") or one at
  or past the next seq ("Received ACK is higher than the last sent message (ack=N)") is an error
  that ends the stream. After ``end`` the stream waits for the ack of ``end`` itself, then closes.

Items come from a *source* (the dev node's chain, or a relay of the upstream node's own stream):
it ``offer``s items while :meth:`HistoryStream.wants_more` and calls ``finish`` at the end; the
stream never holds more than ``buffer`` undelivered items from a well-behaved source.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

DEFAULT_BUFFER = 64

BEGIN = "stream:history:begin"
ADDRESS = "stream:history:address"
VERTEX = "stream:history:vertex"
END = "stream:history:end"
ERROR = "stream:history:error"


@dataclass(frozen=True, slots=True)
class AddressItem:
    index: int
    address: str
    tag: Any = None  # the source's bookkeeping (the relay keeps the upstream seq here)


@dataclass(frozen=True, slots=True)
class VertexItem:
    data: Mapping[str, Any]  # the vertex as the node's to_json_extended()
    tag: Any = None


Item = AddressItem | VertexItem


class StreamState(Enum):
    ACTIVE = "active"
    CLOSING = "closing"  # end sent, waiting for its ack
    CLOSED = "closed"


class _End:
    """Marker: the source is exhausted; ``end`` goes out once the window allows."""


END_MARK = _End()


def error_message(stream_id: Any, errmsg: str) -> dict[str, Any]:
    return {"type": ERROR, "id": stream_id, "errmsg": errmsg}


class HistoryStream:
    def __init__(self, stream_id: Any, window: int | None, *, buffer: int = DEFAULT_BUFFER) -> None:
        self.id = stream_id
        self.window = normalize_window(window)
        self.buffer = buffer
        self.state = StreamState.ACTIVE
        self.success: bool | None = None  # set when CLOSED: True after the ack of end
        self.next_seq = 0
        self.last_ack = -1
        self.sent_addresses = 0
        self.sent_vertices = 0
        self.last_sent_tag: Any = None  # tag of the last item delivered
        self._pending: deque[Item | _End] = deque()
        self._source_done = False

    # -- the client side ----------------------------------------------------------------------
    def begin(self) -> dict[str, Any]:
        """The ``begin`` message (seq 0); call once, first."""
        assert self.next_seq == 0, "begin() is the first message of a stream"
        return {"type": BEGIN, "id": self.id, "seq": self._take_seq(), "window_size": self.window}

    def ack(self, ack: int) -> str | None:
        """Apply a client ack; returns the error text when it ends the stream (then CLOSED)."""
        if self.state is StreamState.CLOSED:
            return None
        if self.state is StreamState.CLOSING and ack == self.next_seq - 1:
            self.last_ack = ack
            self._close(True)
            return None
        if ack == self.last_ack:
            return None  # duplicate or outdated-but-equal acks are harmless
        if ack < self.last_ack:
            self._close(False)
            return f"Outdated ACK received (ack={ack})"
        if ack >= self.next_seq:
            self._close(False)
            return f"Received ACK is higher than the last sent message (ack={ack})"
        self.last_ack = ack
        return None

    def set_window(self, window: int | None) -> None:
        self.window = normalize_window(window)

    def stop(self) -> None:
        """Closed by the client, an error or the connection: nothing more is sent."""
        if self.state is not StreamState.CLOSED:
            self._close(False)

    # -- the source side ----------------------------------------------------------------------
    def wants_more(self) -> bool:
        """Whether the source should offer another item now."""
        return self.state is StreamState.ACTIVE and not self._source_done and len(self._pending) < self.buffer

    def offer(self, item: Item) -> None:
        if self.state is StreamState.ACTIVE and not self._source_done:
            self._pending.append(item)

    def finish(self) -> None:
        """The source has no more items: ``end`` follows the pending ones."""
        if self.state is StreamState.ACTIVE and not self._source_done:
            self._source_done = True
            self._pending.append(END_MARK)

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- delivery -----------------------------------------------------------------------------
    def window_open(self) -> bool:
        return self.window is None or self.next_seq < self.last_ack + self.window + 1

    def peek(self) -> Item | _End | None:
        """What :meth:`take` would deliver now (None: nothing may go out now)."""
        if self.state is not StreamState.ACTIVE or not self._pending or not self.window_open():
            return None
        return self._pending[0]

    def take(self) -> dict[str, Any]:
        """Deliver the item :meth:`peek` showed, as its message (assigning its seq)."""
        item = self._pending.popleft()
        if isinstance(item, _End):
            self.state = StreamState.CLOSING
            return {"type": END, "id": self.id, "seq": self._take_seq()}
        self.last_sent_tag = item.tag
        if isinstance(item, AddressItem):
            self.sent_addresses += 1
            return {
                "type": ADDRESS,
                "id": self.id,
                "seq": self._take_seq(),
                "index": item.index,
                "address": item.address,
                "subscribed": True,
            }
        self.sent_vertices += 1
        return {"type": VERTEX, "id": self.id, "seq": self._take_seq(), "data": item.data}

    # -- internals ----------------------------------------------------------------------------
    def _take_seq(self) -> int:
        seq = self.next_seq
        self.next_seq += 1
        return seq

    def _close(self, success: bool) -> None:
        self.state = StreamState.CLOSED
        self.success = success
        self._pending.clear()


def normalize_window(window: int | None) -> int | None:
    """A negative window means "no flow control", as on the node."""
    if window is None or window < 0:
        return None
    return window
