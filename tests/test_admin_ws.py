"""The proxy's /ws over real loopback: dev node <- AdminUpstream <- ProxyAdmin <- websocket clients."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
import trio
import trio_websocket

from miningproxy.api.admin_ws import ProxyAdmin
from miningproxy.api.http import Router, serve_http
from miningproxy.devnode import DevNode, DevNodeSettings
from miningproxy.hathor.addresses import decode_address
from miningproxy.upstream.admin import AdminUpstream
from tests.hathor_vectors import PRIVATENET_ADDRESS
from tests.test_devnode_admin import XPUB_ADDRESSES, recv, send, stream_all, summary
from tests.test_xpub import V1_M

PAID = decode_address(PRIVATENET_ADDRESS).script


class FakePoolView:
    """What ProxyAdmin reads from the pool (PoolView's interface)."""

    def __init__(self) -> None:
        self.stats: dict[str, dict[str, Any]] = {}
        self.blocks: list[Any] = []
        self.height = 7

    def metrics(self) -> dict[str, Any]:
        return {
            "hashrate": 1.5e6,
            "miners": 1,
            "workers": 2,
            "shares_accepted": 10,
            "shares_rejected": 1,
            "blocks_found": 1,
            "blocks_accepted": 1,
            "template_height": self.height,
            "upstream": "http://node/v1a/",
            "uptime": 12.0,
        }

    def address_stats(self) -> dict[str, dict[str, Any]]:
        return self.stats

    def new_blocks(self) -> list[Any]:
        blocks, self.blocks = self.blocks, []
        return blocks


@dataclass
class Stack:
    node: DevNode
    node_port: int
    upstream: AdminUpstream
    admin: ProxyAdmin
    port: int
    router: Router

    def url(self, path: str = "/v1a/ws/") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"


async def start_stack(
    nursery: trio.Nursery, *, node: DevNode | None = None, wait: bool = True, **admin_kw: Any
) -> Stack:
    node = node or DevNode(DevNodeSettings(block_weight=4))
    node.admin.metrics_interval = 0.1
    node_port = await nursery.start(node.serve, "127.0.0.1", 0)
    upstream = AdminUpstream([f"http://127.0.0.1:{node_port}/v1a/"], backoff_initial=0.05, backoff_max=0.2)
    admin_kw.setdefault("metrics_interval", 0.1)
    admin = ProxyAdmin(upstream, network=node.admin.network, **admin_kw)
    router = Router()
    admin.mount(router)
    await nursery.start(upstream.run)
    await nursery.start(admin.run)
    listeners = await nursery.start(partial(serve_http, router, "127.0.0.1", 0))
    if wait:
        with trio.fail_after(5):
            while not upstream.history_available() or upstream.metrics is None:
                await trio.sleep(0.01)
    return Stack(node, node_port, upstream, admin, listeners[0].socket.getsockname()[1], router)


@pytest.fixture
async def stack(nursery: trio.Nursery) -> Stack:
    return await start_stack(nursery, pool=FakePoolView(), address_stats_interval=0.2)


async def eventually(predicate, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


async def test_wallet_style_client_gets_the_node_behaviour(stack):
    async with trio_websocket.open_websocket_url(stack.url()) as ws:
        assert await recv(ws) == {"type": "capabilities", "capabilities": ["history-streaming"]}
        await send(ws, {"type": "ping"})
        assert await recv(ws, "pong", timeout=1) == {"type": "pong"}
        await send(ws, {"type": "subscribe_address", "address": PRIVATENET_ADDRESS})
        assert (await recv(ws, "subscribe_address"))["success"] is True
        await eventually(lambda: PRIVATENET_ADDRESS in stack.node.admin.clients.by_address)
        block = stack.node.mine_block(script=PAID)
        new_tx = await recv(ws, "network:new_tx_accepted")
        assert new_tx["tx_id"] == block.hash_hex and new_tx["is_block"] is True
        history = await recv(ws, "wallet:address_history")
        assert history["address"] == PRIVATENET_ADDRESS and history["history"]["tx_id"] == block.hash_hex
        # The node's dashboard keys (relayed) plus the pool's.
        while (metrics := await recv(ws, "dashboard:metrics"))["best_block_height"] != 1:
            pass
        assert metrics["blocks"] == 2 and metrics["transactions"] == 2
        assert metrics["pool"]["template_height"] == 7 and set(metrics["pool"]) == set(
            FakePoolView().metrics()
        )
        # Still connected and answering.
        await send(ws, {"type": "ping"})
        assert await recv(ws, "pong", timeout=1) == {"type": "pong"}


async def test_one_upstream_subscription_per_address(stack):
    async with (
        trio_websocket.open_websocket_url(stack.url("/ws")) as a,
        trio_websocket.open_websocket_url(stack.url("/ws/")) as b,
    ):
        for ws in (a, b):
            await recv(ws, "capabilities")
            await send(ws, {"type": "subscribe_address", "address": PRIVATENET_ADDRESS})
            assert (await recv(ws, "subscribe_address"))["success"]
        await eventually(lambda: PRIVATENET_ADDRESS in stack.node.admin.clients.by_address)
        assert len(stack.node.admin.clients.by_address[PRIVATENET_ADDRESS]) == 1  # one upstream connection
        assert stack.upstream.subscriptions == (PRIVATENET_ADDRESS,)
        stack.node.mine_block(script=PAID)
        for ws in (a, b):
            assert (await recv(ws, "wallet:address_history"))["address"] == PRIVATENET_ADDRESS
        await send(a, {"type": "unsubscribe_address", "address": PRIVATENET_ADDRESS})
        assert await recv(a, "unsubscribe_address") == {"type": "unsubscribe_address", "success": True}
        assert stack.upstream.subscriptions == (PRIVATENET_ADDRESS,)  # b still wants it
    await eventually(lambda: PRIVATENET_ADDRESS not in stack.node.admin.clients.by_address)
    assert stack.upstream.subscriptions == ()


async def test_addresses_are_resubscribed_after_the_upstream_reconnects(stack):
    async with trio_websocket.open_websocket_url(stack.url()) as ws:
        await recv(ws, "capabilities")
        await send(ws, {"type": "subscribe_address", "address": PRIVATENET_ADDRESS})
        await recv(ws, "subscribe_address")
        await eventually(lambda: PRIVATENET_ADDRESS in stack.node.admin.clients.by_address)
        stack.node.admin.disconnect_all()
        await eventually(lambda: stack.upstream.counters["connects"] == 2)
        await eventually(lambda: PRIVATENET_ADDRESS in stack.node.admin.clients.by_address)
        block = stack.node.mine_block(script=PAID)
        assert (await recv(ws, "wallet:address_history"))["history"]["tx_id"] == block.hash_hex


async def test_pool_address_stats_and_block_found(stack):
    pool: FakePoolView = stack.admin.pool  # type: ignore[assignment]
    pool.stats = {
        PRIVATENET_ADDRESS: {
            "hashrate": 2.0,
            "shares_accepted": 3,
            "shares_rejected": 1,
            "blocks_found": 1,
            "workers": 1,
        }
    }
    async with trio_websocket.open_websocket_url(stack.url()) as ws:
        await recv(ws, "capabilities")
        await send(ws, {"type": "subscribe_address", "address": PRIVATENET_ADDRESS})
        stats = await recv(ws, "pool:address_stats")
        assert stats == {
            "type": "pool:address_stats",
            "address": PRIVATENET_ADDRESS,
            **pool.stats[PRIVATENET_ADDRESS],
        }

        class Found:
            miner = type("M", (), {"address": PRIVATENET_ADDRESS})()

            def to_json(self):
                return {"hash": "00ab", "height": 3, "status": "found"}

        pool.blocks = [Found()]
        found = await recv(ws, "pool:block_found")
        assert found == {
            "type": "pool:block_found",
            "address": PRIVATENET_ADDRESS,
            "block": Found().to_json(),
        }


async def test_xpub_stream_through_the_proxy_equals_the_node_stream(stack):
    for _ in range(2):
        stack.node.mine_block(script=decode_address(XPUB_ADDRESSES[1]).script)
    request = {"type": "request:history:xpub", "id": "x", "xpub": V1_M, "gap-limit": 3, "window-size": 2}
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{stack.node_port}/v1a/ws") as direct:
        await recv(direct, "capabilities")
        expected = await stream_all(direct, request, ack_every=1)
    async with trio_websocket.open_websocket_url(stack.url()) as ws:
        await recv(ws, "capabilities")
        got = await stream_all(ws, request, ack_every=1)
        assert summary(got) == summary(expected)
        assert got == expected
        # Every streamed address is subscribed, upstream once.
        await eventually(lambda: XPUB_ADDRESSES[1] in stack.node.admin.clients.by_address)
        block = stack.node.mine_block(script=decode_address(XPUB_ADDRESSES[1]).script)
        assert (await recv(ws, "wallet:address_history"))["history"]["tx_id"] == block.hash_hex


async def test_manual_stream_through_the_proxy_with_more_batches(stack):
    block = stack.node.mine_block(script=decode_address(XPUB_ADDRESSES[3]).script)
    async with trio_websocket.open_websocket_url(stack.url()) as ws:
        await recv(ws, "capabilities")
        await send(
            ws,
            {
                "type": "request:history:manual",
                "id": 5,
                "first": True,
                "addresses": [[0, XPUB_ADDRESSES[0]], [1, XPUB_ADDRESSES[1]]],
            },
        )
        await send(
            ws,
            {
                "type": "request:history:manual",
                "id": 5,
                "addresses": [[2, XPUB_ADDRESSES[2]], [3, XPUB_ADDRESSES[3]]],
                "last": True,
            },
        )
        got = []
        while True:
            message = await recv(ws)
            if message["type"].startswith("stream:history:"):
                got.append(message)
                if message["type"] == "stream:history:end":
                    break
        assert summary(got) == [
            ("begin", 0),
            ("address", 1, 0, XPUB_ADDRESSES[0]),
            ("address", 2, 1, XPUB_ADDRESSES[1]),
            ("address", 3, 2, XPUB_ADDRESSES[2]),
            ("address", 4, 3, XPUB_ADDRESSES[3]),
            ("vertex", 5, block.hash_hex),
            ("end", 6),
        ]
        assert {m["id"] for m in got} == {5}
        # Not acked yet: still open; the proxy enforces the node's rules.
        await send(ws, {"type": "request:history:ack", "id": 5, "ack": 9})
        assert (await recv(ws, "stream:history:error"))["errmsg"] == (
            "Received ACK is higher than the last sent message (ack=9)"
        )


async def test_client_window_is_enforced_by_the_proxy(stack):
    for _ in range(3):
        stack.node.mine_block(script=decode_address(XPUB_ADDRESSES[0]).script)
    async with trio_websocket.open_websocket_url(stack.url()) as ws:
        await recv(ws, "capabilities")
        await send(
            ws, {"type": "request:history:xpub", "id": "w", "xpub": V1_M, "gap-limit": 1, "window-size": 2}
        )
        assert (await recv(ws, "stream:history:begin"))["seq"] == 0
        assert (await recv(ws, "stream:history:address"))["seq"] == 1
        with trio.move_on_after(0.3):
            message = await recv(ws)
            while not message["type"].startswith("stream:"):
                message = await recv(ws)
            pytest.fail(f"the window is full, yet {message} was sent")
        await send(ws, {"type": "request:history:ack", "id": "w", "ack": 1})
        assert [(await recv(ws, "stream:history:vertex"))["seq"] for _ in range(2)] == [2, 3]
        await send(ws, {"type": "request:history:stop", "id": "w"})
        await send(ws, {"type": "request:history:xpub", "id": "w2", "xpub": V1_M, "gap-limit": 1})
        assert (await recv(ws, "stream:history:begin"))["id"] == "w2"


async def test_streams_beyond_the_upstream_slots_are_refused_after_a_wait(nursery):
    stack = await start_stack(nursery)
    stack.upstream._stream_slots.total_tokens = 1
    stack.upstream._slot_timeout = 0.2
    # More than the proxy and the node buffer: the stream waits for acks that never come.
    request = {"type": "request:history:xpub", "xpub": V1_M, "gap-limit": 1000, "window-size": 0}
    async with (
        trio_websocket.open_websocket_url(stack.url()) as stalled,
        trio_websocket.open_websocket_url(stack.url()) as other,
    ):
        await recv(stalled, "capabilities")
        await send(stalled, {**request, "id": "a"})  # window 0 and never acked: holds its slot
        await recv(stalled, "stream:history:begin")
        await eventually(lambda: stack.upstream.status().history_streams == 1)
        await recv(other, "capabilities")
        await send(other, {**request, "id": "b"})
        await recv(other, "stream:history:begin")
        error = await recv(other, "stream:history:error")
        assert error == {
            "type": "stream:history:error",
            "id": "b",
            "errmsg": "Upstream node unavailable: too many history streams in progress (1); try again later",
        }
        await send(stalled, {"type": "request:history:stop", "id": "a"})
        await eventually(lambda: stack.upstream.status().history_streams == 0)
        await send(other, {**request, "id": "c", "window-size": None})
        assert (await recv(other, "stream:history:address"))["id"] == "c"


async def test_no_history_streaming_capability_without_an_upstream(nursery):
    node = DevNode(DevNodeSettings(block_weight=4))
    stack = await start_stack(nursery, node=node)
    node.admin.history_enabled = False
    stack.node.admin.disconnect_all()
    await eventually(
        lambda: stack.upstream.counters["connects"] == 2 and stack.upstream.connected is not None
    )
    await eventually(lambda: stack.upstream.capabilities == () and stack.upstream.metrics is not None)
    async with trio_websocket.open_websocket_url(stack.url()) as ws:
        assert await recv(ws) == {"type": "capabilities", "capabilities": []}
        await send(ws, {"type": "request:history:xpub", "id": "x", "xpub": V1_M})
        assert (await recv(ws, "stream:history:error"))["errmsg"] == "Streaming history is disabled."


async def test_dashboard_without_upstream_values_still_ticks(nursery):
    upstream = AdminUpstream(["http://127.0.0.1:9/v1a/"], backoff_initial=5.0)
    admin = ProxyAdmin(upstream, network=DevNode().admin.network, metrics_interval=0.05, pool=FakePoolView())
    router = Router()
    admin.mount(router)
    await nursery.start(admin.run)
    listeners = await nursery.start(partial(serve_http, router, "127.0.0.1", 0))
    port = listeners[0].socket.getsockname()[1]
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws") as ws:
        assert await recv(ws) == {"type": "capabilities", "capabilities": []}
        metrics = await recv(ws, "dashboard:metrics")
        assert metrics["best_block_height"] == 6  # the pool's template height - 1
        assert {"transactions", "blocks", "hash_rate", "peers", "time", "pool"} <= set(metrics)
        await send(ws, {"type": "request:history:manual", "id": "m", "first": True, "addresses": []})
        assert (await recv(ws, "stream:history:error"))["errmsg"] == "Streaming history is disabled."


async def _many_clients_each_get_ticks(nursery: trio.Nursery, clients: int, ticks: int) -> None:
    pool = FakePoolView()
    stack = await start_stack(nursery, pool=pool, metrics_interval=3600)  # ticks are driven here
    connected = 0
    all_in = trio.Event()
    seen: list[list[int]] = []

    async def client() -> None:
        nonlocal connected
        heights: list[int] = []
        seen.append(heights)
        async with trio_websocket.open_websocket_url(stack.url(), connect_timeout=60) as ws:
            await recv(ws, "capabilities", timeout=60)
            connected += 1
            await all_in.wait()
            while len(heights) < ticks:
                message = await recv(ws, "dashboard:metrics", timeout=30)
                heights.append(message["pool"]["template_height"])

    async with trio.open_nursery() as clients_nursery:
        for _ in range(clients):
            clients_nursery.start_soon(client)
        await eventually(lambda: connected == clients, timeout=60)
        assert len(stack.admin.registry) == clients
        all_in.set()
        for height in range(1, ticks + 1):
            pool.height = height
            stack.admin.tick()  # one broadcast: encoded once, queued to every client
            await eventually(lambda h=height: all(len(got) >= h for got in seen), timeout=30)
    assert seen == [list(range(1, ticks + 1))] * clients


async def test_1000_clients_each_get_a_tick(nursery):
    await _many_clients_each_get_ticks(nursery, 1000, 1)


@pytest.mark.slow
async def test_1000_clients_each_get_every_tick(nursery):
    await _many_clients_each_get_ticks(nursery, 1000, 20)
