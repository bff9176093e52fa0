"""The dev node's event queue over real loopback: /v1a/event_ws and GET /v1a/event as a real node
(transcripts event_ws.jsonl and event_ws-window1.jsonl), the reorg test hook, and the switch off."""

from __future__ import annotations

import argparse
import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket

from miningproxy.devnode import BlockRejected, ChainRules, DevChain, DevNode, DevNodeSettings
from miningproxy.devnode.admin import output_address
from miningproxy.devnode.cli import add_arguments, settings_from_args
from miningproxy.devnode.genesis import make_genesis
from miningproxy.devnode.miner import build_block, find_bad_nonce, mine, mine_template
from miningproxy.hathor.block import Block, TxOutput
from tests.devnode_support import NOW, Clock, start_devnode

TRANSCRIPTS = Path(__file__).resolve().parents[2] / "shared" / "protocol" / "transcripts"
P2PKH = bytes.fromhex("76a91466665b27f7dbc4c8c089d2f686c170c74d66f0b588ac")  # the genesis premine's
OLD_P2PKH = bytes.fromhex("76a914" + "88" * 20 + "88ac")
NEW_P2PKH = bytes.fromhex("76a914" + "77" * 20 + "88ac")
VERTEX_TYPES = ("NEW_VERTEX_ACCEPTED", "VERTEX_METADATA_CHANGED")


# --- transcript ----------------------------------------------------------------------------------


def transcript(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (TRANSCRIPTS / name).read_text().splitlines() if line.strip()]


def real_frames(name: str = "event_ws.jsonl") -> list[dict[str, Any]]:
    return [e["frame"] for e in transcript(name) if e["dir"] == "recv" and e["frame"].get("type") == "EVENT"]


def real_events() -> list[dict[str, Any]]:
    """The real node's events 0..13 (genesis load, then three blocks), in id order."""
    by_id = {f["event"]["id"]: f["event"] for f in real_frames()}
    return [by_id[i] for i in sorted(by_id)]


def real_blocks() -> list[bytes]:
    """The structs of the three blocks the real node accepted (rebuilt from their event data)."""
    structs = []
    for event in real_events():
        data = event["data"]
        if event["type"] != "NEW_VERTEX_ACCEPTED" or not data["parents"]:
            continue
        outputs = tuple(
            TxOutput(o["value"], o["token_data"], base64.b64decode(o["script"])) for o in data["outputs"]
        )
        parents = tuple(bytes.fromhex(p) for p in data["parents"])
        block = Block(
            data["signal_bits"],
            data["version"],
            outputs,
            data["weight"],
            data["timestamp"],
            parents,
            b"",
            data["nonce"],
        )
        assert block.hash().hex() == data["hash"]
        structs.append(block.struct())
    return structs


def untimed(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k != "timestamp"}


def keys_of(value: Any) -> Any:
    """The key structure (in order) of a JSON value."""
    if isinstance(value, dict):
        return [(k, keys_of(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [keys_of(v) for v in value[:1]]
    return type(value).__name__ if value is not None else None


# --- plumbing ------------------------------------------------------------------------------------


def url(port: int, path: str = "/v1a/event_ws") -> str:
    return f"ws://127.0.0.1:{port}{path}"


async def send(ws: trio_websocket.WebSocketConnection, message: dict[str, Any]) -> str:
    text = json.dumps(message)
    await ws.send_message(text)
    return text


async def recv(ws: trio_websocket.WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(5):
        return json.loads(await ws.get_message())


async def recv_n(ws: trio_websocket.WebSocketConnection, n: int) -> list[dict[str, Any]]:
    return [await recv(ws) for _ in range(n)]


async def recv_after(ws: trio_websocket.WebSocketConnection, message: dict[str, Any]) -> dict[str, Any]:
    await send(ws, message)
    return await recv(ws)


async def assert_quiet(ws: trio_websocket.WebSocketConnection) -> None:
    with trio.move_on_after(0.1):
        message = await ws.get_message()
        raise AssertionError(f"unexpected message {message}")


def start_stream(last_ack: int | None, window: int) -> dict[str, Any]:
    return {"type": "START_STREAM", "last_ack_event_id": last_ack, "window_size": window}


def ack(event_id: int, window: int) -> dict[str, Any]:
    return {"type": "ACK", "ack_event_id": event_id, "window_size": window}


async def http_get(port: int, path: str) -> tuple[int, Any]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    raw = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some(65536):
            raw += chunk
    head, body = raw.split(b"\r\n\r\n", 1)
    return int(head.split(b" ", 2)[1]), json.loads(body)


async def submit_over_mining_ws(port: int, structs: list[bytes]) -> None:
    """Submit blocks as a miner does; each must be accepted (``true``)."""
    async with trio_websocket.open_websocket_url(url(port, "/v1a/mining_ws")) as ws:
        assert (await recv(ws))["method"] == "mining.notify"
        for i, struct in enumerate(structs):
            await send(
                ws,
                {"jsonrpc": "2.0", "id": i, "method": "mining.submit", "params": {"hexdata": struct.hex()}},
            )
            while (reply := await recv(ws)).get("id") != i:
                pass
            assert reply["result"] is True, reply


async def stored(node: DevNode) -> list[dict[str, Any]]:
    return [json.loads(text) for _, text in await node.events.feed.read(0, 10_000)]


# --- the node's sequence -------------------------------------------------------------------------


async def test_from_null_the_real_nodes_events_for_the_same_chain(nursery) -> None:
    """The transcript's three blocks submitted to the dev node: the same 14 events, frames shaped alike."""
    node, port = await start_devnode(nursery, network="privatenet-fastmine", block_weight=8)
    real = real_events()
    real_frame = real_frames()[0]
    async with trio_websocket.open_websocket_url(url(port)) as ws:
        await send(ws, start_stream(None, 100))
        frames = await recv_n(ws, 5)  # the load
        for struct, count in zip(real_blocks(), (5, 2, 2), strict=True):
            await submit_over_mining_ws(port, [struct])
            frames += await recv_n(ws, count)
        await assert_quiet(ws)
    assert [untimed(f["event"]) for f in frames] == [untimed(e) for e in real]
    for frame in frames:
        assert list(frame) == list(real_frame)  # type, peer_id, network, event, latest_event_id, stream_id
        assert keys_of(frame["event"]) == keys_of(real[frame["event"]["id"]])
        assert frame["peer_id"] == DevNodeSettings().peer_id and frame["network"] == "privatenet-fastmine"
        assert frame["event"]["id"] <= frame["latest_event_id"] <= 13
    assert frames[0]["latest_event_id"] == 4  # the load, before any block
    assert len({f["stream_id"] for f in frames}) == 1
    uuid.UUID(frames[0]["stream_id"])
    assert [f["event"]["timestamp"] for f in frames] == [float(NOW)] * 14  # the node's clock


async def test_window_one_replays_the_window1_transcript(nursery) -> None:
    """event_ws-window1.jsonl: START from null with window 1, ACK each event; then an ACK too small."""
    node, port = await start_devnode(nursery, network="privatenet-fastmine", block_weight=8)
    await submit_over_mining_ws(port, real_blocks())
    script = transcript("event_ws-window1.jsonl")
    real_too_small = next(e["frame"] for e in script if e["frame"].get("type") == "ACK_TOO_SMALL")
    async with trio_websocket.open_websocket_url(url(port)) as ws:
        await send(ws, start_stream(None, 1))
        got = [await recv(ws)]
        await assert_quiet(ws)  # window 1: nothing more until the ACK
        while len(got) < 14:
            await send(ws, ack(got[-1]["event"]["id"], 1))
            got.append(await recv(ws))
        await send(ws, ack(13, 1))
        await assert_quiet(ws)
        text = json.dumps(ack(0, 1))  # the transcript's client writes json.dumps' default separators
        await ws.send_message(text)
        too_small = await recv(ws)
    real = real_frames("event_ws-window1.jsonl")
    assert [f["event"]["id"] for f in got] == [f["event"]["id"] for f in real] == list(range(14))
    assert [untimed(f["event"]) for f in got] == [untimed(f["event"]) for f in real]
    assert {f["latest_event_id"] for f in got} == {13}
    assert (
        too_small
        == real_too_small
        == {"type": "ACK_TOO_SMALL", "invalid_request": text, "error_message": None}
    )


async def test_start_from_an_id_and_one_block_at_a_time(nursery) -> None:
    node, port = await start_devnode(nursery)
    genesis, tx1, tx2 = (
        node.genesis.block_hash.hex(),
        node.genesis.tx1.hash.hex(),
        node.genesis.tx2.hash.hex(),
    )
    async with trio_websocket.open_websocket_url(url(port)) as ws:
        await send(ws, start_stream(4, 10))  # the load already seen: only what comes next
        await assert_quiet(ws)
        first = node.mine_block()
        events = [f["event"] for f in await recv_n(ws, 5)]
        second = node.mine_block(script=P2PKH)
        events += [f["event"] for f in await recv_n(ws, 2)]
    assert [(e["id"], e["type"], e["data"]["hash"]) for e in events] == [
        (5, "VERTEX_METADATA_CHANGED", first.hash_hex),
        (6, "VERTEX_METADATA_CHANGED", tx2),  # the tx parents in the template's (sorted) order
        (7, "VERTEX_METADATA_CHANGED", tx1),
        (8, "VERTEX_METADATA_CHANGED", genesis),  # the parent block, as the first block confirmed txs
        (9, "NEW_VERTEX_ACCEPTED", first.hash_hex),
        (10, "VERTEX_METADATA_CHANGED", second.hash_hex),
        (11, "NEW_VERTEX_ACCEPTED", second.hash_hex),
    ]
    assert tx2 < tx1 and events[1]["data"]["metadata"]["first_block"] == first.hash_hex
    assert events[-1]["data"]["metadata"]["height"] == 2
    assert events[-1]["data"]["metadata"]["score_raw"] == str(second.score)
    assert events[-1]["data"]["outputs"][0]["decoded"]["address"].startswith("W")
    real = real_events()
    for event in events:
        assert keys_of(event) == keys_of(real[event["id"]])
    # A later client starts in the middle of what is stored.
    async with trio_websocket.open_websocket_url(url(port)) as ws:
        await send(ws, start_stream(8, 10))
        assert [f["event"]["id"] for f in await recv_n(ws, 3)] == [9, 10, 11]
        await assert_quiet(ws)


async def test_the_nodes_window_quirks(nursery) -> None:
    """node_quirks: an ACK rewinds (in-flight events come again), a repeated ACK and a new stream at or
    below the last ACK are ACK_TOO_SMALL; an ACK beyond what was sent is ACK_TOO_LARGE."""
    node, port = await start_devnode(nursery)
    async with trio_websocket.open_websocket_url(url(port)) as ws:
        await send(ws, start_stream(None, 3))
        assert [f["event"]["id"] for f in await recv_n(ws, 3)] == [0, 1, 2]
        await assert_quiet(ws)  # the window is full
        await send(ws, ack(0, 3))  # the node rewinds to 1: 1 and 2 again, then 3
        assert [f["event"]["id"] for f in await recv_n(ws, 3)] == [1, 2, 3]
        await assert_quiet(ws)
        text = await send(ws, ack(0, 3))
        assert await recv(ws) == {"type": "ACK_TOO_SMALL", "invalid_request": text, "error_message": None}
        assert (await recv_after(ws, ack(9, 3)))["type"] == "ACK_TOO_LARGE"
        await send(ws, ack(3, 0))  # window 0 pauses
        node.mine_block()
        await assert_quiet(ws)
        await send(ws, {"type": "STOP_STREAM"})
        # The last ACK (3) outlives the stream: a new one must start beyond it.
        for last_ack in (None, 2, 3):
            assert (await recv_after(ws, start_stream(last_ack, 5)))["type"] == "ACK_TOO_SMALL"
        await send(ws, start_stream(4, 100))
        assert [f["event"]["id"] for f in await recv_n(ws, 5)] == list(range(5, 10))  # the block's events
        text = await send(ws, start_stream(None, 1))
        assert await recv(ws) == {"type": "STREAM_IS_ACTIVE", "invalid_request": text, "error_message": None}


# --- reorgs ----------------------------------------------------------------------------------------


async def test_reorg_emits_a_group_switches_the_chain_and_notifies(nursery) -> None:
    node, port = await start_devnode(nursery)
    old = [node.mine_block(script=OLD_P2PKH) for _ in range(3)]
    fork = old[0]
    found = output_address(OLD_P2PKH, node.admin.network)
    assert found is not None
    address = found[1]
    assert node.admin.history_of(address) == old
    before = node.events.last_id
    async with (
        trio_websocket.open_websocket_url(url(port)) as events_ws,
        trio_websocket.open_websocket_url(url(port, "/v1a/mining_ws")) as mining_ws,
        trio_websocket.open_websocket_url(url(port, "/v1a/ws")) as admin_ws,
    ):
        await send(events_ws, start_stream(before, 100))
        assert (await recv(mining_ws))["method"] == "mining.notify"
        assert (await recv(admin_ws))["type"] == "capabilities"
        branch = node.reorg(2, 4, script=NEW_P2PKH)
        frames = await recv_n(events_ws, node.events.last_id - before)
        await assert_quiet(events_ws)
        notify = await recv(mining_ws)
        await assert_quiet(mining_ws)
        accepted = []
        while len(accepted) < 4:
            message = await recv(admin_ws)
            if message["type"] == "network:new_tx_accepted":
                accepted.append(message["tx_id"])
    events = [f["event"] for f in frames]
    b1, b2, b3, b4 = (b.hash_hex for b in branch)
    assert [(e["type"], e["data"].get("hash"), e["group_id"]) for e in events] == [
        ("VERTEX_METADATA_CHANGED", b1, None),  # a side chain, voided
        ("NEW_VERTEX_ACCEPTED", b1, None),
        ("VERTEX_METADATA_CHANGED", b2, None),  # ties the best chain: still voided
        ("NEW_VERTEX_ACCEPTED", b2, None),
        ("REORG_STARTED", None, 0),
        ("VERTEX_METADATA_CHANGED", old[2].hash_hex, 0),  # leaving the best chain, newest first
        ("VERTEX_METADATA_CHANGED", old[1].hash_hex, 0),
        ("VERTEX_METADATA_CHANGED", b3, 0),  # joining it, newest first
        ("VERTEX_METADATA_CHANGED", b2, 0),
        ("VERTEX_METADATA_CHANGED", b1, 0),
        ("REORG_FINISHED", None, 0),
        ("NEW_VERTEX_ACCEPTED", b3, None),
        ("VERTEX_METADATA_CHANGED", b4, None),
        ("NEW_VERTEX_ACCEPTED", b4, None),
    ]
    assert events[4]["data"] == {
        "reorg_size": 2,
        "previous_best_block": old[2].hash_hex,
        "new_best_block": b3,
        "common_block": fork.hash_hex,
    }
    assert events[0]["data"]["metadata"]["voided_by"] == [b1]
    assert events[5]["data"]["metadata"]["voided_by"] == [old[2].hash_hex]
    assert events[9]["data"]["metadata"]["voided_by"] == []
    assert events[-1]["data"]["metadata"]["height"] == 5
    # The chain: the branch is the best chain, the old blocks are orphaned (known, off the best chain).
    assert node.chain.tip == branch[-1] and node.chain.height == 5
    assert list(node.chain.blocks[2:]) == branch and node.chain.blocks[1] == fork
    assert node.chain.orphans == (old[1], old[2])
    assert node.chain.get(old[2].hash) == old[2] and not node.chain.in_best_chain(old[2].hash)
    assert [b[1] for b in node.status_json()["dag"]["best_blockchain"]][:4] == [b4, b3, b2, b1]
    # Mining clients: one notify, on the new tip. Admin: the new best blocks; histories follow the chain.
    assert notify["params"][0]["parents"][0] == b4 and notify["params"][0]["height"] == 6
    assert accepted == [b1, b2, b3, b4]
    assert node.admin.history_of(address) == [fork]
    # A miner still working on the orphaned tip is told false, as the node does for a stale parent.
    template = node.chain.template_json(node.now(), old[2])
    assert node.chain.submit(mine_template(template), node.now()).status.value == "not_tip"
    # Another reorg is another group.
    again = node.reorg(1, 2)
    tail = (await stored(node))[-10:]
    assert [e["group_id"] for e in tail if e["type"] in ("REORG_STARTED", "REORG_FINISHED")] == [1, 1]
    assert node.chain.tip == again[-1] and branch[-1] in node.chain.orphans


async def test_reorg_from_the_genesis_moves_the_transactions_first_block() -> None:
    node = DevNode(DevNodeSettings(block_weight=4), clock=Clock())
    old = [node.mine_block() for _ in range(2)]
    branch = node.reorg(2, 3)
    events = await stored(node)
    group = [e for e in events if e["group_id"] == 0]
    assert group[0]["data"]["common_block"] == node.genesis.block_hash.hex()
    moved = {
        e["data"]["hash"]: e["data"]["metadata"]["first_block"]
        for e in group
        if e["data"].get("version") == 1
    }
    assert moved == {tx.hash.hex(): branch[0].hash_hex for tx in node.genesis.txs}
    assert node.chain.orphans == tuple(old)
    assert node.chain.blocks[1].score == old[0].score  # both first blocks confirm the genesis txs


async def test_reorg_refuses_what_cannot_win() -> None:
    node = DevNode(DevNodeSettings(block_weight=4), clock=Clock())
    with pytest.raises(ValueError, match="depth"):
        node.reorg(1, 2)  # only the genesis: nothing to reorganize
    node.mine_block()
    node.mine_block()
    for depth, new_blocks in ((0, 1), (3, 4), (2, 2), (1, 1)):
        with pytest.raises(ValueError):
            node.reorg(depth, new_blocks)
    # A heavy block on the tip (weight 10 where 4 is required): two blocks of weight 4 cannot beat it.
    heavy = mine(build_block(node.chain.template_json(node.now()), weight=10))
    assert node.chain.submit(heavy.struct(), node.now()).accepted
    tip, last = node.chain.tip, node.events.last_id
    with pytest.raises(ValueError, match="would not outweigh"):
        node.reorg(1, 2)
    assert node.chain.tip == tip and node.events.last_id == last and node.chain.orphans == ()
    # The heavy block went in behind the node's back: the event queue catches up on the next block.
    top = node.mine_block()
    tail = [(e["type"], e["data"]["hash"]) for e in (await stored(node))[last + 1 :]]
    assert tail == [
        ("VERTEX_METADATA_CHANGED", tip.hash_hex),
        ("NEW_VERTEX_ACCEPTED", tip.hash_hex),
        ("VERTEX_METADATA_CHANGED", top.hash_hex),
        ("NEW_VERTEX_ACCEPTED", top.hash_hex),
    ]
    assert node.events.source.best == top.hash_hex


def test_dev_chain_side_blocks_ties_and_refusals() -> None:
    chain = DevChain(make_genesis(), ChainRules(block_weight=4))
    genesis = chain.blocks[0]
    a = chain.add_block(mine_template(chain.template_json(NOW)), NOW).block
    assert chain.tip == a
    side = chain.add_block(mine_template(chain.template_json(NOW, genesis), data=b"side"), NOW)
    assert not side.best and side.block.height == 1 and side.block.score == a.score  # a tie: a stays
    assert chain.tip == a and chain.orphans == (side.block,)
    with pytest.raises(BlockRejected, match="already exists"):
        chain.add_block(side.block.struct, NOW)
    unknown = build_block(chain.template_json(NOW, genesis), data=b"x")
    stray = Block(
        0, 0, unknown.outputs, unknown.weight, unknown.timestamp, (b"\x01" * 32, *unknown.parents[1:]), b""
    )
    with pytest.raises(BlockRejected, match="not a known block"):
        chain.add_block(mine(stray).struct(), NOW)
    bad = build_block(chain.template_json(NOW, side.block), data=b"bad")
    with pytest.raises(BlockRejected, match="invalid data"):
        chain.add_block(
            Block(
                0, 0, bad.outputs, bad.weight, bad.timestamp, bad.parents, bad.data, find_bad_nonce(bad)
            ).struct(),
            NOW,
        )
    win = chain.add_block(mine_template(chain.template_json(NOW, side.block)), NOW)
    assert win.best and win.is_reorg and win.orphaned == (a,) and win.joined == (side.block, win.block)
    assert chain.tip == win.block and chain.blocks == (genesis, side.block, win.block)
    assert chain.latest_timestamp >= a.timestamp


# --- without the event queue, and the HTTP API -----------------------------------------------------


async def test_without_the_event_queue_the_node_answers_not_running(nursery) -> None:
    node, port = await start_devnode(nursery, event_queue=False)
    not_running = {"type": "EVENT_WS_NOT_RUNNING", "invalid_request": None, "error_message": None}
    async with trio_websocket.open_websocket_url(url(port)) as ws:
        assert await recv(ws) == not_running  # on open, unasked
        text = await send(ws, start_stream(None, 10))
        assert await recv(ws) == {**not_running, "invalid_request": text}
        node.mine_block()
        node.mine_block()
        node.reorg(1, 2)
        await assert_quiet(ws)
    assert node.events.last_id is None and node.chain.height == 3
    assert await http_get(port, "/v1a/event") == (
        503,
        {"success": False, "error": "EventManager unavailable."},
    )


async def test_http_get_event(nursery) -> None:
    node, port = await start_devnode(nursery)
    node.mine_block()
    node.mine_block()
    everything = await stored(node)
    assert len(everything) == 12
    status, body = await http_get(port, "/v1a/event?last_ack_event_id=3&size=4")
    assert status == 200 and body == {"events": everything[4:8], "latest_event_id": 11}
    assert await http_get(port, "/v1a/event") == (200, {"events": everything, "latest_event_id": 11})
    assert await http_get(port, "/v1a/event/?last_ack_event_id=11") == (
        200,
        {"events": [], "latest_event_id": 11},
    )
    assert await http_get(port, "/v1a/event?size=0") == (200, {"events": [], "latest_event_id": 11})
    status, body = await http_get(port, "/v1a/event?size=1001")
    assert status == 200 and body["success"] is False and "size" in body["error"]
    # The websocket serves the same texts.
    async with trio_websocket.open_websocket_url(url(port)) as ws:
        await send(ws, start_stream(3, 4))
        assert [f["event"] for f in await recv_n(ws, 4)] == everything[4:8]


def test_settings_and_cli_switch() -> None:
    assert DevNodeSettings().event_queue is True
    with pytest.raises(ValueError, match="event_queue"):
        DevNodeSettings(event_queue="no")  # type: ignore[arg-type]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert settings_from_args(parser.parse_args([])).event_queue is True
    assert settings_from_args(parser.parse_args(["--no-event-queue"])).event_queue is False
