"""AdminUpstream (one connection to a node's /v1a/ws) against the dev node over loopback, and PoolView."""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import pytest
import trio

from miningproxy.api.http import Router, serve_http
from miningproxy.api.pool_view import PoolView
from miningproxy.hathor.addresses import decode_address
from miningproxy.pool.service import FoundBlock
from miningproxy.pool.stats import MinerId
from miningproxy.upstream.admin import AdminUpstream, HistoryUnavailable
from tests.devnode_support import Served, devnode
from tests.hathor_vectors import PRIVATENET_ADDRESS
from tests.test_admin_ws import eventually
from tests.test_devnode_admin import XPUB_ADDRESSES
from tests.test_pool_service import FakeUpstream, make_pool


def served_node() -> Served:
    served = devnode()
    served.node.admin.metrics_interval = 0.1
    return served


def upstream_for(*nodes: Served, **kw) -> AdminUpstream:
    kw.setdefault("backoff_initial", 0.05)
    kw.setdefault("backoff_max", 0.2)
    return AdminUpstream([n.url for n in nodes], **kw)


async def test_relays_metrics_events_and_subscribes_each_address_once(nursery):
    served = served_node()
    await served.start(nursery)
    upstream = upstream_for(served)
    events = []
    upstream.add_listener(events.append)
    await nursery.start(upstream.run)
    await upstream.wait_connected()
    await eventually(lambda: upstream.metrics is not None and upstream.history_available())
    assert set(upstream.metrics) == {
        "transactions",
        "blocks",
        "best_block_height",
        "hash_rate",
        "peers",
        "time",
    }
    upstream.subscribe(PRIVATENET_ADDRESS)
    upstream.subscribe(PRIVATENET_ADDRESS)
    await eventually(lambda: PRIVATENET_ADDRESS in served.node.admin.clients.by_address)
    block = served.node.mine_block(script=decode_address(PRIVATENET_ADDRESS).script)
    await eventually(lambda: len(events) == 2)
    assert [e["type"] for e in events] == ["network:new_tx_accepted", "wallet:address_history"]
    assert events[1]["history"]["tx_id"] == block.hash_hex
    upstream.unsubscribe(PRIVATENET_ADDRESS)
    await eventually(lambda: PRIVATENET_ADDRESS not in served.node.admin.clients.by_address)
    status = upstream.status()
    assert (
        status.connected == served.url
        and status.subscriptions == 0
        and "history-streaming" in status.capabilities
    )


async def test_reconnects_with_backoff_and_resubscribes(nursery):
    served = served_node()
    await served.start(nursery)
    upstream = upstream_for(served)
    await nursery.start(upstream.run)
    upstream.subscribe(PRIVATENET_ADDRESS)
    upstream.subscribe(XPUB_ADDRESSES[0])
    await eventually(lambda: len(served.node.admin.clients.by_address) == 2)
    served.stop()
    await eventually(lambda: upstream.connected is None)
    await trio.sleep(0.3)  # a few failed attempts while the node is down
    assert upstream.counters["failures"] >= 1 and upstream.last_error
    with pytest.raises(HistoryUnavailable, match="no upstream node connected"):
        async with upstream.open_history():
            pass
    await served.start(nursery)
    await eventually(lambda: upstream.connected == served.url)
    await eventually(
        lambda: set(served.node.admin.clients.by_address) == {PRIVATENET_ADDRESS, XPUB_ADDRESSES[0]}
    )


async def test_follows_the_node_the_mining_upstream_uses(nursery):
    a, b = served_node(), served_node()
    await a.start(nursery)
    await b.start(nursery)
    preferred = {"url": None}
    upstream = upstream_for(a, b, prefer=lambda: preferred["url"], follow_interval=0.05)
    await nursery.start(upstream.run)
    await eventually(lambda: upstream.connected == a.url)
    upstream.subscribe(PRIVATENET_ADDRESS)
    preferred["url"] = b.url
    await eventually(lambda: upstream.connected == b.url)
    await eventually(lambda: PRIVATENET_ADDRESS in b.node.admin.clients.by_address)
    await eventually(lambda: PRIVATENET_ADDRESS not in a.node.admin.clients.by_address)
    assert upstream.counters["failures"] == 0


async def test_a_silent_node_is_dropped(nursery):
    async def silent(ws, request):
        await trio.sleep_forever()

    router = Router()
    router.websocket("/v1a/ws", silent)
    listeners = await nursery.start(partial(serve_http, router, "127.0.0.1", 0))
    port = listeners[0].socket.getsockname()[1]
    upstream = AdminUpstream([f"http://127.0.0.1:{port}/v1a/"], idle_timeout=0.2, backoff_initial=0.05)
    await nursery.start(upstream.run)
    await eventually(lambda: upstream.counters["failures"] >= 1)
    assert "no message for 0.2s" in (upstream.last_error or "")
    assert not upstream.history_available()


async def test_history_needs_the_capability(nursery):
    served = served_node()
    served.node.admin.history_enabled = False
    await served.start(nursery)
    upstream = upstream_for(served)
    await nursery.start(upstream.run)
    await eventually(lambda: upstream.metrics is not None)
    assert not upstream.history_available()
    with pytest.raises(HistoryUnavailable, match="does not offer history streaming"):
        async with upstream.open_history():
            pass


def test_constructor_checks():
    with pytest.raises(ValueError):
        AdminUpstream([])
    with pytest.raises(ValueError):
        AdminUpstream(["http://h/v1a/"], ping_interval=0)
    with pytest.raises(ValueError, match="not-a-url"):
        AdminUpstream(["not-a-url"])


# --- PoolView ------------------------------------------------------------------------------------


async def test_pool_view_projects_pool_state():
    pool = make_pool(FakeUpstream())
    upstream = SimpleNamespace(status=lambda: SimpleNamespace(connected="http://node/v1a/"))
    view = PoolView(pool, upstream, started_at=100.0, wallclock=lambda: 130.0)
    now = trio.current_time()
    rig1, rig2, other = (
        MinerId(PRIVATENET_ADDRESS, "rig1"),
        MinerId(PRIVATENET_ADDRESS, "rig2"),
        MinerId("Wx", "a"),
    )
    pool.stats.accepted(rig1, 2.0**10, now)  # the work of a share at weight 10
    pool.stats.accepted(rig2, 2.0**10, now)
    pool.stats.accepted(other, 2.0**10, now)
    pool.stats.rejected(rig1, "stale")
    pool.stats.block(rig2)
    found = FoundBlock(b"\x01" * 32, 5, rig2, "job", 123.0)
    pool.blocks.append(found)
    metrics = view.metrics()
    assert metrics == {
        "hashrate": pool.stats.pool.rate(now),
        "miners": 2,
        "workers": 3,
        "shares_accepted": 3,
        "shares_rejected": 1,
        "blocks_found": 1,
        "blocks_accepted": 0,
        "template_height": None,
        "upstream": "http://node/v1a/",
        "uptime": 30.0,
    }
    stats = view.address_stats()[PRIVATENET_ADDRESS]
    assert stats["shares_accepted"] == 2 and stats["shares_rejected"] == 1
    assert stats["blocks_found"] == 1 and stats["workers"] == 2 and stats["hashrate"] >= 0
    assert view.new_blocks() == [found]
    assert view.new_blocks() == []
    found.status = "accepted"
    assert view.metrics()["blocks_accepted"] == 1
    assert view.metrics()["blocks_accepted"] == 1  # counted once
