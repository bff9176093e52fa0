"""MiningUpstream against the embedded dev node over loopback (the project's faithful node)."""

from __future__ import annotations

import random

import trio

from miningproxy.devnode.miner import build_block, find_bad_nonce, mine
from miningproxy.hathor.block import Block
from miningproxy.hathor.template import BlockTemplate
from miningproxy.upstream.mining import MiningUpstream
from tests.devnode_support import devnode

FAST = dict(
    template_timeout=30.0,
    failback_after=20.0,
    backoff_initial=1.0,
    backoff_max=8.0,
    submit_timeout=15.0,
    connect_timeout=5.0,
)


def mined(template: BlockTemplate, *, valid: bool = True) -> tuple[bytes, bytes]:
    block = build_block(template.to_json())
    if valid:
        block = mine(block)
    else:
        b = block
        block = Block(
            b.signal_bits, b.version, b.outputs, b.weight, b.timestamp, b.parents, b.data, find_bad_nonce(b)
        )
    return block.struct(), block.hash()


async def wait_for(predicate, timeout: float = 500.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)


async def start_upstream(nursery: trio.Nursery, urls: list[str], **kw) -> MiningUpstream:
    up = MiningUpstream(urls, **{**FAST, "rng": random.Random(2), **kw})
    await nursery.start(up.run)
    return up


def current_template(up: MiningUpstream) -> BlockTemplate:
    assert up.templates.current is not None
    return up.templates.current.templates[0]


async def test_submit_accepted_next_template_and_duplicate(autojump_clock):
    served = devnode()
    async with trio.open_nursery() as nursery:
        await served.start(nursery)
        up = await start_upstream(nursery, [served.url], optimistic="off")
        await up.templates.wait_newer(0)
        assert current_template(up).parents[0] == served.node.tip.hash
        struct, block_hash = mined(current_template(up))
        out = await up.submit(struct, block_hash=block_hash)
        assert (out.status, out.reason) == ("accepted", "node answered true")
        await wait_for(lambda: current_template(up).parents[0] == block_hash)
        assert current_template(up).height == served.node.chain.height + 1
        again = await up.submit(struct, block_hash=block_hash)
        assert again.status == "stale"
        nursery.cancel_scope.cancel()


async def test_auto_optimistic_against_the_broken_node(autojump_clock):
    served = devnode(optimistic="broken")
    async with trio.open_nursery() as nursery:
        await served.start(nursery)
        up = await start_upstream(nursery, [served.url], optimistic="auto")
        await up.templates.wait_newer(0)
        struct, block_hash = mined(current_template(up))
        out = await up.submit(struct, block_hash=block_hash)
        assert out.status == "accepted" and "is this block" in out.reason
        assert served.node.tip.hash == block_hash
        assert up.status().nodes[0].optimistic_supported is False
        struct, block_hash = mined(current_template(up))
        out = await up.submit(struct, block_hash=block_hash)
        assert (out.status, out.reason) == ("accepted", "node answered true")
        assert [s.optimistic for s in served.node.submissions] == [True, False]
        nursery.cancel_scope.cancel()


async def test_auto_optimistic_against_a_working_node(autojump_clock):
    served = devnode(optimistic="works")
    async with trio.open_nursery() as nursery:
        await served.start(nursery)
        up = await start_upstream(nursery, [served.url], optimistic="auto")
        await up.templates.wait_newer(0)
        for _ in range(2):
            struct, block_hash = mined(current_template(up))
            out = await up.submit(struct, block_hash=block_hash)
            assert out.status == "accepted" and "optimistic" in out.reason
            await wait_for(lambda h=block_hash: current_template(up).parents[0] == h)
        assert [s.optimistic for s in served.node.submissions] == [True, True]
        assert up.status().nodes[0].optimistic_supported is True
        assert up.status().counters["reconnects"] == 0
        nursery.cancel_scope.cancel()


async def test_invalid_pow_is_rejected_after_the_fatal_close(autojump_clock):
    served = devnode()
    async with trio.open_nursery() as nursery:
        await served.start(nursery)
        up = await start_upstream(nursery, [served.url], optimistic="off")
        await up.templates.wait_newer(0)
        struct, block_hash = mined(current_template(up), valid=False)
        out = await up.submit(struct, block_hash=block_hash)
        assert out.status == "rejected" and "-32603" in out.reason
        assert served.node.submissions[-1].status == "invalid"
        await wait_for(lambda: up.status().connected == served.url)
        assert up.status().counters["reconnects"] == 1
        nursery.cancel_scope.cancel()


async def test_a_close_without_reply_resubmits_on_reconnect(autojump_clock):
    served = devnode()
    async with trio.open_nursery() as nursery:
        await served.start(nursery)
        up = await start_upstream(nursery, [served.url], optimistic="off")
        await up.templates.wait_newer(0)
        served.node.force_submit_failure("close")  # dropped without an answer, block not stored
        struct, block_hash = mined(current_template(up))
        out = await up.submit(struct, block_hash=block_hash)
        assert (out.status, out.reason) == ("accepted", "node answered true")
        assert [s.status for s in served.node.submissions] == ["forced:close", "accepted"]
        nursery.cancel_scope.cancel()


async def test_a_syncing_node_is_failed_over_and_a_dead_one_too(autojump_clock):
    a, b = devnode(), devnode()
    a.node.syncing = True  # no notify, refresh answers []
    async with trio.open_nursery() as nursery:
        await a.start(nursery)
        await b.start(nursery)
        start = trio.current_time()
        up = await start_upstream(nursery, [a.url, b.url], template_timeout=30, refresh_timeout=5)
        await wait_for(lambda: up.status().connected == b.url)
        assert trio.current_time() - start >= 35
        assert "no template" in (up.status().nodes[0].last_error or "")
        # a becomes usable: fail back after failback_after; then it dies: fail over again.
        a.node.syncing = False
        await wait_for(lambda: up.status().connected == a.url)
        assert up.status().counters["failbacks"] == 1
        a.stop()
        await wait_for(lambda: up.status().connected == b.url)
        assert up.status().counters["failovers"] == 1
        assert up.templates.current is not None and up.templates.current.node == b.url
        nursery.cancel_scope.cancel()
