"""The dev node's event sequence: the real node's events for the same chain, and reorgs."""

from __future__ import annotations

import json
import math

import pytest
from test_events_support import node_dumps, transcript_events, vertex_of

from miningproxy.events.chain_events import ChainError, ChainEventSource, Vertex, VertexOutput, to_stored
from miningproxy.hathor.block import Block, TxOutput

SCRIPT = bytes.fromhex("76a914" + "66" * 20 + "88ac")


def genesis() -> tuple[Vertex, list[Vertex]]:
    events = transcript_events()
    return vertex_of(events[1]["data"]), [vertex_of(events[2]["data"]), vertex_of(events[3]["data"])]


def source(**kwargs) -> ChainEventSource:
    return ChainEventSource("privatenet-fastmine", clock=lambda: 100.0, **kwargs)


def block(name: str, parent: str, weight: float = 8.0, timestamp: int = 1643902700) -> Vertex:
    gb, (tx1, tx2) = genesis()
    return Vertex(
        name * 64 if len(name) == 1 else name,
        1,
        timestamp,
        weight,
        0,
        (parent, tx2.hash, tx1.hash),
        (VertexOutput(6400, SCRIPT),),
    )


def test_the_real_nodes_events_for_the_same_chain() -> None:
    """Genesis and three blocks: exactly the 14 events a hathor-core node sent (transcript)."""
    expected = transcript_events()
    stamps = iter(e["timestamp"] for e in expected)
    chain = ChainEventSource("privatenet-fastmine", clock=lambda: next(stamps))
    gb, txs = genesis()
    events = chain.load(gb, txs)
    for i in (9, 11, 13):
        events += chain.add_block(vertex_of(expected[i]["data"]))
    assert events == expected
    assert [s.text for s in to_stored(events)] == [node_dumps(e) for e in expected]  # the node's bytes


def kinds(events: list[dict]) -> list[tuple[str, str | None, int | None]]:
    return [(e["type"], e["data"].get("hash"), e["group_id"]) for e in events]


def test_side_blocks_are_voided_and_a_heavier_branch_is_a_reorg_group() -> None:
    gb, txs = genesis()
    chain = source()
    chain.load(gb, txs)
    a = "a" * 64
    chain.add_block(block("a", gb.hash))
    chain.add_block(block("b", a))
    # A competing branch from genesis: c (ties nothing: lower score), then d and e outweigh a-b.
    side = chain.add_block(block("c", gb.hash, timestamp=1643902701))
    assert kinds(side) == [
        ("VERTEX_METADATA_CHANGED", "c" * 64, None),
        ("NEW_VERTEX_ACCEPTED", "c" * 64, None),
    ]
    assert side[1]["data"]["metadata"]["voided_by"] == ["c" * 64]
    assert chain.add_block(block("d", "c" * 64))[0]["data"]["metadata"]["voided_by"] == ["d" * 64]  # ties a-b
    reorg = chain.add_block(block("e", "d" * 64))
    assert kinds(reorg) == [
        ("REORG_STARTED", None, 0),
        ("VERTEX_METADATA_CHANGED", "b" * 64, 0),
        ("VERTEX_METADATA_CHANGED", "a" * 64, 0),
        ("VERTEX_METADATA_CHANGED", "e" * 64, 0),
        ("VERTEX_METADATA_CHANGED", "d" * 64, 0),
        ("VERTEX_METADATA_CHANGED", "c" * 64, 0),
        ("VERTEX_METADATA_CHANGED", txs[1].hash, 0),
        ("VERTEX_METADATA_CHANGED", txs[0].hash, 0),
        ("REORG_FINISHED", None, 0),
        ("NEW_VERTEX_ACCEPTED", "e" * 64, None),
    ]
    assert reorg[0]["data"] == {
        "reorg_size": 2,
        "previous_best_block": "b" * 64,
        "new_best_block": "e" * 64,
        "common_block": gb.hash,
    }
    by_hash = {e["data"].get("hash"): e["data"]["metadata"] for e in reorg[1:-2]}
    assert by_hash["a" * 64]["voided_by"] == ["a" * 64] and by_hash["b" * 64]["voided_by"] == ["b" * 64]
    assert by_hash["c" * 64]["voided_by"] == [] and by_hash["e" * 64]["voided_by"] == []
    assert by_hash[txs[0].hash]["first_block"] == "c" * 64
    assert reorg[-1]["data"]["metadata"]["height"] == 3
    assert reorg[-1]["data"]["metadata"]["spent_outputs"] == [{"index": 0, "tx_ids": []}]
    assert [e["id"] for e in reorg] == list(range(reorg[0]["id"], reorg[0]["id"] + len(reorg)))
    # Back again: the next reorg is group 1.
    chain.add_block(block("f", "b" * 64))  # a-b-f ties c-d-e: stays voided
    again = chain.add_block(block("9", "f" * 64))
    assert again[0]["type"] == "REORG_STARTED" and again[0]["group_id"] == 1
    assert again[0]["data"]["common_block"] == gb.hash and again[0]["data"]["reorg_size"] == 3
    assert chain.best == "9" * 64 and chain.best_height == 4


def test_scores_follow_the_node() -> None:
    gb, txs = genesis()
    chain = source()
    chain.load(gb, txs)
    events = chain.add_block(block("a", gb.hash, weight=8.5))
    meta = events[-1]["data"]["metadata"]
    assert meta["accumulated_weight_raw"] == str(round(2**8.5)) == "362"
    assert meta["score_raw"] == str(256 + 2 + 2 + 362)
    assert meta["score"] == math.log2(256 + 2 + 2 + 362)


def test_vertex_from_a_block_and_misuse() -> None:
    gb, txs = genesis()
    b = Block(
        0,
        0,
        (TxOutput(6400, 0, SCRIPT),),
        8.0,
        1643902700,
        (bytes.fromhex(gb.hash), bytes.fromhex(txs[1].hash), bytes.fromhex(txs[0].hash)),
        b"",
        nonce=5,
    )
    vertex = Vertex.from_block(b)
    assert vertex.hash == b.hash().hex() and vertex.parents[0] == gb.hash and vertex.nonce == 5
    chain = source()
    with pytest.raises(ChainError):
        chain.add_block(vertex)
    chain.load(gb, txs)
    with pytest.raises(ChainError):
        chain.load(gb, txs)
    event = chain.add_block(vertex)[-1]
    assert event["data"]["outputs"][0]["decoded"]["address"].startswith("W")
    assert json.loads(node_dumps(event)) == event
    with pytest.raises(ChainError):
        chain.add_block(vertex)
    with pytest.raises(ChainError):
        chain.add_block(block("z", "0" * 64))


async def test_a_dev_node_serves_its_chain_events_as_the_node_does(nursery) -> None:
    """How the dev node uses this module: an in-memory log, synchronous appends, node quirks on."""
    import trio_websocket

    from miningproxy.api.http import Router, serve_http
    from miningproxy.events.feed import EventFeed
    from miningproxy.events.log import EventLog, StreamIdentity
    from miningproxy.events.server import EventStreamServer

    feed = EventFeed(EventLog(":memory:"), "node")
    chain = source()
    gb, txs = genesis()
    feed.append_sync(
        to_stored(chain.load(gb, txs)), identity=StreamIdentity("d" * 64, "privatenet", "dev-stream")
    )
    router = Router()
    router.websocket("/v1a/event_ws", EventStreamServer(feed, node_quirks=True).handle)
    port = (await nursery.start(serve_http, router, "127.0.0.1", 0))[0].socket.getsockname()[1]
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/v1a/event_ws") as ws:
        await ws.send_message(json.dumps({"type": "START_STREAM", "last_ack_event_id": 4, "window_size": 10}))
        feed.append_sync(to_stored(chain.add_block(block("a", gb.hash))))
        received = [json.loads(await ws.get_message())["event"] for _ in range(5)]
    assert [e["type"] for e in received] == ["VERTEX_METADATA_CHANGED"] * 4 + ["NEW_VERTEX_ACCEPTED"]
    assert received[-1]["data"]["hash"] == "a" * 64
