"""The dev node's admin websocket, ``/v1a/ws``, over its own chain.

What a real node's ``/v1a/ws`` does, for the vertices the dev node has (its blocks and the two
genesis transactions): ``capabilities`` on open, ``ping``/``pong``, ``dashboard:metrics`` every
second, ``network:new_tx_accepted`` for every new block, address subscriptions with
``wallet:address_history`` when a block pays a subscribed address, and history streaming (xpub or
manual) where an address's history is the blocks that pay it, oldest first. The protocol itself is
the shared sans-IO session (miningproxy/api/admin_session.py), so the proxy and the dev node answer
every request the same way.

Test hooks: ``DevNode.admin.history_enabled`` (off: no ``history-streaming`` capability),
``DevNode.admin.clients`` (connections and per-address subscribers), ``DevNode.admin.metrics_interval``
and ``DevNode.admin.disconnect_all()``.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import trio
import trio_websocket

from miningproxy.api.admin_conn import AdminConnection, StreamFeed
from miningproxy.api.admin_session import SessionLimits, StreamRequest
from miningproxy.api.fanout import ClientRegistry, encode
from miningproxy.api.history_stream import AddressItem, VertexItem
from miningproxy.api.http import HttpRequest
from miningproxy.devnode.chain import ChainBlock
from miningproxy.hathor.addresses import encode_address
from miningproxy.hathor.networks import Network, network_for_name
from miningproxy.hathor.scripts import parse_output_script
from miningproxy.hathor.xpub import iter_addresses

if TYPE_CHECKING:
    from miningproxy.devnode.server import DevNode

ADMIN_WS_PATH = "/v1a/ws"
HTR_TOKEN_UID = "00"
SCRIPT_TYPES = {"p2pkh": "P2PKH", "p2sh": "MultiSig"}


def output_address(script: bytes, network: Network) -> tuple[str, str] | None:
    """(decoded type, address) of a standard output script, as the node's decoded script shows it."""
    parsed = parse_output_script(script)
    if parsed is None:
        return None
    kind, h160 = parsed
    version = network.p2pkh_version if kind == "p2pkh" else network.p2sh_version
    return SCRIPT_TYPES[kind], encode_address(version, h160)


def block_json(block: ChainBlock, network: Network) -> dict[str, Any]:
    """A block as the node's ``to_json_extended()`` (what the admin websocket sends for a vertex)."""
    outputs = []
    for output in block.block.outputs:
        decoded: dict[str, Any] = {}
        found = output_address(output.script, network)
        if found is not None:
            decoded = {"type": found[0], "address": found[1], "timelock": None}
        outputs.append(
            {
                "value": output.value,
                "token_data": output.token_data,
                "script": base64.b64encode(output.script).decode("ascii"),
                "decoded": decoded,
                "token": HTR_TOKEN_UID,
                "spent_by": None,
            }
        )
    return {
        "tx_id": block.hash_hex,
        "version": block.block.version,
        "weight": float(block.block.weight),
        "timestamp": block.timestamp,
        "is_voided": False,
        "inputs": [],
        "outputs": outputs,
        "parents": [p.hex() for p in block.block.parents],
        "first_block": None,
        "height": block.height,
    }


class DevAdmin:
    """The hub of the dev node's admin connections and the source of their history streams."""

    def __init__(self, node: DevNode, *, metrics_interval: float = 1.0) -> None:
        self.node = node
        self.network = network_for_name(node.settings.network)
        self.limits = SessionLimits()  # the node's defaults: no subscription limit
        self.metrics_interval = metrics_interval
        self.history_enabled = True
        self.clients: ClientRegistry[AdminConnection] = ClientRegistry()
        self._by_address: dict[str, list[ChainBlock]] = {}
        for block in node.chain.blocks:
            self._index(block)

    # -- chain events -------------------------------------------------------------------------
    def _index(self, block: ChainBlock) -> list[str]:
        addresses: list[str] = []
        for output in block.block.outputs:
            found = output_address(output.script, self.network)
            if found is not None and found[1] not in addresses:
                addresses.append(found[1])
        for address in addresses:
            self._by_address.setdefault(address, []).append(block)
        return addresses

    def on_new_block(self, block: ChainBlock) -> None:
        """A block became the best block: index it and tell the clients."""
        addresses = self._index(block)
        data = block_json(block, self.network)
        if len(self.clients):
            self.clients.broadcast(
                encode({**data, "is_block": True, "type": "network:new_tx_accepted", "throttled": False})
            )
        for address in addresses:
            if address in self.clients.by_address:
                self.clients.to_address(
                    address, encode({"address": address, "history": data, "type": "wallet:address_history"})
                )

    def on_orphaned(self, blocks: Sequence[ChainBlock]) -> None:
        """Blocks left the best chain (a reorg): their rewards no longer count in address histories."""
        gone = {block.hash for block in blocks}
        for address in list(self._by_address):
            kept = [block for block in self._by_address[address] if block.hash not in gone]
            if kept:
                self._by_address[address] = kept
            else:
                del self._by_address[address]

    def history_of(self, address: str) -> list[ChainBlock]:
        """The blocks paying ``address``, oldest first."""
        return list(self._by_address.get(address, ()))

    # -- periodic metrics ---------------------------------------------------------------------
    def dashboard(self) -> dict[str, Any]:
        tip = self.node.chain.tip
        return {
            "transactions": len(self.node.genesis.txs),
            "blocks": tip.height + 1,
            "best_block_height": tip.height,
            "hash_rate": float(2.0**tip.block.weight),
            "peers": 0,
            "type": "dashboard:metrics",
            "time": float(self.node.clock()),
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        start = trio.current_time()
        ticks = 0
        while True:
            ticks += 1
            await trio.sleep_until(start + ticks * self.metrics_interval)
            if len(self.clients):
                self.clients.broadcast_latest("dashboard", encode(self.dashboard()))

    def disconnect_all(self) -> None:
        """Close every admin websocket (as a restarting node would)."""
        for conn in tuple(self.clients.clients):
            conn.close()

    async def handler(self, ws: trio_websocket.WebSocketConnection, request: HttpRequest) -> None:
        await AdminConnection(self, ws, request.peer).run()

    # -- AdminBackend -------------------------------------------------------------------------
    def history_available(self) -> bool:
        return self.history_enabled

    def register(self, conn: AdminConnection) -> None:
        self.clients.add(conn)

    def unregister(self, conn: AdminConnection) -> None:
        self.clients.remove(conn)

    def subscribe(self, conn: AdminConnection, address: str) -> None:
        self.clients.subscribe(conn, address)

    def unsubscribe(self, conn: AdminConnection, address: str) -> None:
        self.clients.unsubscribe(conn, address)

    async def run_stream(self, request: StreamRequest, feed: StreamFeed) -> None:
        """The node's gap-limit search: each address, then the vertices paying it; stop after
        ``gap_limit`` consecutive addresses without any."""
        empty = 0
        async for index, address in self._addresses(request, feed):
            await trio.lowlevel.checkpoint()
            await feed.offer(AddressItem(index, address))
            blocks = self.history_of(address)
            for block in blocks:
                await feed.offer(VertexItem(block_json(block, self.network)))
            if blocks:
                empty = 0
                continue
            empty += 1
            if empty >= request.gap_limit:
                break
        feed.finish()

    async def _addresses(self, request: StreamRequest, feed: StreamFeed) -> AsyncIterator[tuple[int, str]]:
        if request.xpub is not None:
            for pair in iter_addresses(request.xpub, self.network, request.first_index):
                yield pair
            return
        for item in request.addresses:
            yield item.index, item.address
        last = request.last
        while not last:
            batch = await feed.more_addresses()
            for item in batch.addresses:
                yield item.index, item.address
            last = batch.last
