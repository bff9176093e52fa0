"""Fan-out to many websocket clients with bounded memory per client.

Each client has an :class:`Outbox`: a FIFO of encoded frames with a hard limit, where some kinds
are latest-value (a newer dashboard tick or template replaces the one still waiting, in place).
A broadcast encodes its frame once and appends the same string to every outbox: O(clients) cheap
appends, never a blocking send. One writer task per client drains its outbox; a client that stops
reading either fills its outbox (overflow) or blocks a send past ``send_timeout``, and is then cut
off with a reason that says so. Nobody else waits for it.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Generic, TypeVar

import trio
import trio_websocket

CLOSE_POLICY = 1008  # "policy violation": the client broke the deal (it stopped reading)
CLOSE_TIMEOUT = 1.0  # a client that is not reading will not answer the close handshake either


def encode(message: Any) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


class ClientTooSlow(Exception):
    """The client is not reading: its outbox overflowed or a send blocked too long."""


class _Entry:
    __slots__ = ("key", "text")

    def __init__(self, key: Hashable | None, text: str) -> None:
        self.key = key
        self.text = text


class Outbox:
    """Frames waiting for one client. ``put`` never blocks; past ``limit`` the client is cut off."""

    def __init__(self, limit: int) -> None:
        if limit < 2:
            raise ValueError(f"outbox limit must be at least 2, got {limit}")
        self.limit = limit
        self._queue: deque[_Entry] = deque()
        self._keyed: dict[Hashable, _Entry] = {}
        self._wake = trio.Event()
        self.overflow: str | None = None  # why the client was cut off
        self.cut = trio.Event()

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def room(self) -> int:
        return self.limit - len(self._queue)

    def put(self, text: str) -> bool:
        """Append a frame; False (and the client is cut off) when the outbox is full."""
        if self.overflow is not None:
            return False
        if len(self._queue) >= self.limit:
            self._overflowed()
            return False
        self._queue.append(_Entry(None, text))
        self._wake.set()
        return True

    def put_first(self, text: str) -> bool:
        """A frame that jumps the queue (a pong: clients give up when it is a few seconds late)."""
        if self.overflow is not None:
            return False
        if len(self._queue) >= self.limit:
            self._overflowed()
            return False
        self._queue.appendleft(_Entry(None, text))
        self._wake.set()
        return True

    def put_latest(self, key: Hashable, text: str) -> bool:
        """A latest-value frame: replaces the frame of the same ``key`` still waiting, in place."""
        if self.overflow is not None:
            return False
        entry = self._keyed.get(key)
        if entry is not None:
            entry.text = text
            return True
        if len(self._queue) >= self.limit:
            self._overflowed()
            return False
        entry = _Entry(key, text)
        self._keyed[key] = entry
        self._queue.append(entry)
        self._wake.set()
        return True

    def get_nowait(self) -> str | None:
        if not self._queue:
            return None
        entry = self._queue.popleft()
        if entry.key is not None:
            del self._keyed[entry.key]
        return entry.text

    async def get(self) -> str:
        while not self._queue:
            self._wake = trio.Event()
            await self._wake.wait()
        text = self.get_nowait()
        assert text is not None
        return text

    def _overflowed(self) -> None:
        self.overflow = f"too slow: {self.limit} messages waiting (the client is not reading)"
        self.cut.set()
        self._wake.set()


async def write_outbox(
    ws: trio_websocket.WebSocketConnection,
    outbox: Outbox,
    *,
    send_timeout: float,
    after_send: Callable[[], None] | None = None,
) -> None:
    """Drain ``outbox`` into ``ws`` until cancelled. Raises ClientTooSlow when a send blocks for
    ``send_timeout`` or the outbox overflowed; ConnectionClosed when the client is gone."""
    while True:
        text = await outbox.get()
        if outbox.overflow is not None:
            raise ClientTooSlow(outbox.overflow)
        with trio.move_on_after(send_timeout) as scope:
            await ws.send_message(text)
        if scope.cancelled_caught:
            outbox.overflow = f"too slow: a send blocked for {send_timeout:g}s (the client is not reading)"
            outbox.cut.set()
            raise ClientTooSlow(outbox.overflow)
        if after_send is not None:
            after_send()


async def cut_off(ws: trio_websocket.WebSocketConnection, reason: str) -> None:
    """Close a client that is not reading, without waiting long for its side of the handshake."""
    with trio.move_on_after(CLOSE_TIMEOUT):
        await ws.aclose(CLOSE_POLICY, reason[:120])


C = TypeVar("C", bound=Hashable)


class ClientRegistry(Generic[C]):
    """Connected clients and, per address, the clients subscribed to it.

    A client object must have an ``outbox`` attribute (:class:`Outbox`).
    """

    def __init__(self) -> None:
        self.clients: dict[C, None] = {}  # ordered set
        self.by_address: dict[str, dict[C, None]] = {}

    def __len__(self) -> int:
        return len(self.clients)

    def add(self, client: C) -> None:
        self.clients[client] = None

    def remove(self, client: C) -> list[str]:
        """Forget a client; returns the addresses nobody is subscribed to any more."""
        self.clients.pop(client, None)
        orphans = []
        for address in [a for a, subs in self.by_address.items() if client in subs]:
            if self.unsubscribe(client, address):
                orphans.append(address)
        return orphans

    def subscribe(self, client: C, address: str) -> bool:
        """True when ``client`` is the address's first subscriber."""
        subscribers = self.by_address.setdefault(address, {})
        first = not subscribers
        subscribers[client] = None
        return first

    def unsubscribe(self, client: C, address: str) -> bool:
        """True when the address has no subscriber left."""
        subscribers = self.by_address.get(address)
        if subscribers is None or client not in subscribers:
            return False
        del subscribers[client]
        if subscribers:
            return False
        del self.by_address[address]
        return True

    def subscribers(self, address: str) -> Iterable[C]:
        return tuple(self.by_address.get(address, ()))

    def broadcast(self, text: str) -> None:
        for client in tuple(self.clients):
            client.outbox.put(text)  # type: ignore[attr-defined]

    def broadcast_latest(self, key: Hashable, text: str) -> None:
        for client in tuple(self.clients):
            client.outbox.put_latest(key, text)  # type: ignore[attr-defined]

    def to_address(self, address: str, text: str) -> int:
        """Send to the subscribers of ``address``; returns how many got it."""
        subscribers = self.subscribers(address)
        for client in subscribers:
            client.outbox.put(text)  # type: ignore[attr-defined]
        return len(subscribers)  # type: ignore[arg-type]
