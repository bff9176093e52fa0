"""The dev node's event queue: its chain as a real node's event stream.

A node started with ``--enable-event-queue`` records an event for everything that happens to its
DAG and serves them on ``/v1a/event_ws`` (windowed websocket) and ``GET /v1a/event``. Here the
events come from :class:`~miningproxy.events.chain_events.ChainEventSource` (the node's sequences:
load, new blocks, side blocks, reorg groups), are kept in an in-memory event log, and are served by
the shared event servers with the node's quirks on. With the dev node's own genesis the load
events are a real node's byte for byte (timestamps aside).

Blocks stored behind the node's back (a test calling ``DevNode.chain.submit`` directly) are caught
up, oldest first, when the next block is recorded, so the event sequence never misses a parent.

Without the event queue nothing is ever appended: the feed has no identity, so the websocket
answers EVENT_WS_NOT_RUNNING and the HTTP API 503, as a node without the flag does.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from miningproxy.api.http import Router
from miningproxy.events.chain_events import ChainEventSource, Vertex, to_stored
from miningproxy.events.feed import EventFeed
from miningproxy.events.log import EventLog, StreamIdentity
from miningproxy.events.server import EventHttpApi, EventStreamServer

if TYPE_CHECKING:
    from miningproxy.devnode.chain import ChainBlock
    from miningproxy.devnode.genesis import Genesis

EVENT_WS_PATH = "/v1a/event_ws"
EVENT_API_PATH = "/v1a/event"
TX_VERSION_REGULAR = 1


class DevEvents:
    """The feed of the dev node's chain events and its two servers."""

    def __init__(
        self,
        genesis: Genesis,
        *,
        get_block: Callable[[bytes], ChainBlock | None],
        network: str,
        peer_id: str,
        enabled: bool = True,
        clock: Callable[[], float],
        stream_id: str | None = None,
    ) -> None:
        self.enabled = enabled
        self._get_block = get_block
        self._recorded: set[bytes] = {genesis.block_hash}  # blocks the event source knows
        self.feed = EventFeed(EventLog(":memory:"), "node")
        self.source = ChainEventSource(network, clock=clock)
        # A real node's stream_id is a fresh uuid4 per event queue; the peer_id is the node's.
        self.identity = StreamIdentity(peer_id, network, stream_id or str(uuid.uuid4()))
        self.server = EventStreamServer(self.feed, node_quirks=True)
        self.http_api = EventHttpApi(self.feed)
        if enabled:
            txs = [
                Vertex(tx.hash.hex(), tx.nonce, tx.timestamp, tx.weight, version=TX_VERSION_REGULAR)
                for tx in genesis.txs
            ]
            events = self.source.load(Vertex.from_block(genesis.block), txs)
            self.feed.append_sync(to_stored(events), identity=self.identity)

    def on_block(self, block: ChainBlock) -> None:
        """A block was stored: on the best chain, on a side chain, or winning a reorg."""
        if not self.enabled or block.hash in self._recorded:
            return
        pending = [block]
        while (parent_hash := pending[-1].parent_hash) is not None and parent_hash not in self._recorded:
            parent = self._get_block(parent_hash)
            if parent is None:
                raise ValueError(f"block {pending[-1].hash_hex}: its parent {parent_hash.hex()} is unknown")
            pending.append(parent)
        for item in reversed(pending):
            self.feed.append_sync(to_stored(self.source.add_block(Vertex.from_block(item.block))))
            self._recorded.add(item.hash)

    @property
    def last_id(self) -> int | None:
        return self.feed.last_id

    def add_routes(self, router: Router) -> None:
        router.websocket(EVENT_WS_PATH, self.server.handle)
        router.http(EVENT_API_PATH, self.http_api.handle)
