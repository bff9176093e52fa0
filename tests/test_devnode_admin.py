"""The dev node's admin websocket /v1a/ws over real loopback, checked against the node's transcript."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket

from miningproxy.devnode import DevNode, DevNodeSettings
from miningproxy.hathor.addresses import decode_address
from miningproxy.hathor.networks import TESTNET
from miningproxy.hathor.xpub import derive_addresses, parse_xpub
from tests.hathor_vectors import PRIVATENET_ADDRESS
from tests.test_xpub import V1_M

TRANSCRIPT = Path(__file__).resolve().parents[2] / "shared" / "protocol" / "transcripts" / "admin_ws.jsonl"
XPUB_ADDRESSES = [a for _, a in derive_addresses(parse_xpub(V1_M), TESTNET, 0, 8)]


def transcript_frames() -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in TRANSCRIPT.read_text().splitlines() if line.strip()]
    return [line["frame"] for line in lines if line["dir"] == "recv"]


def shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value[:1]]
    if isinstance(value, bool) or value is None:
        return value if value is None else "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


async def recv(
    ws: trio_websocket.WebSocketConnection, kind: str | None = None, timeout: float = 5
) -> dict[str, Any]:
    """The next message (of ``kind``, skipping dashboard ticks and the rest)."""
    with trio.fail_after(timeout):
        while True:
            message = json.loads(await ws.get_message())
            assert isinstance(message.get("type"), str), message
            if kind is None or message["type"] == kind:
                return message


async def send(ws: trio_websocket.WebSocketConnection, message: dict[str, Any]) -> None:
    await ws.send_message(json.dumps(message))


@pytest.fixture
async def devnode(nursery: trio.Nursery) -> tuple[DevNode, str]:
    node = DevNode(DevNodeSettings(block_weight=4))
    node.admin.metrics_interval = 0.2
    port = await nursery.start(node.serve, "127.0.0.1", 0)
    return node, f"ws://127.0.0.1:{port}/v1a/ws"


async def test_open_ping_and_metrics_match_the_node(devnode):
    node, url = devnode
    frames = transcript_frames()
    async with trio_websocket.open_websocket_url(url + "/") as ws:  # wallets append a slash
        assert await recv(ws) == frames[0]  # capabilities: history-streaming
        await send(ws, {"type": "ping"})
        assert await recv(ws, "pong") == {"type": "pong"}
        metrics = await recv(ws, "dashboard:metrics")
        expected = next(f for f in frames if f["type"] == "dashboard:metrics")
        assert list(metrics) == list(expected) and shape(metrics) == shape(expected)
        assert metrics["blocks"] == 1 and metrics["best_block_height"] == 0 and metrics["transactions"] == 2
        node.mine_block()
        while (metrics := await recv(ws, "dashboard:metrics"))["best_block_height"] != 1:
            pass
        assert metrics["blocks"] == 2


async def test_new_block_frames_match_the_node(devnode):
    node, url = devnode
    script = decode_address(PRIVATENET_ADDRESS).script
    async with trio_websocket.open_websocket_url(url) as ws:
        await recv(ws, "capabilities")
        await send(ws, {"type": "subscribe_address", "address": PRIVATENET_ADDRESS})
        assert await recv(ws, "subscribe_address") == {
            "type": "subscribe_address",
            "address": PRIVATENET_ADDRESS,
            "success": True,
        }
        block = node.mine_block(script=script)
        new_tx = await recv(ws, "network:new_tx_accepted")
        paid = next(
            f
            for f in transcript_frames()
            if f.get("type") == "network:new_tx_accepted" and f["outputs"][0]["script"]
        )
        assert list(new_tx) == list(paid) and shape(new_tx) == shape(paid)
        assert new_tx["tx_id"] == block.hash_hex and new_tx["height"] == 1
        assert new_tx["outputs"][0]["decoded"] == paid["outputs"][0]["decoded"]  # same address and script
        assert new_tx["outputs"][0]["script"] == paid["outputs"][0]["script"]
        history = await recv(ws, "wallet:address_history")
        assert history["address"] == PRIVATENET_ADDRESS
        assert isinstance(history["history"], dict)  # ONE transaction object
        assert history["history"]["tx_id"] == block.hash_hex
        assert {k: v for k, v in new_tx.items() if k not in ("is_block", "type", "throttled")} == history[
            "history"
        ]
        # An unpaid block is not this address's history.
        node.mine_block()
        await recv(ws, "network:new_tx_accepted")
        await send(ws, {"type": "ping"})
        assert (await recv(ws))["type"] in ("pong", "dashboard:metrics")


async def stream_all(ws, request: dict[str, Any], *, ack_every: int | None = None) -> list[dict[str, Any]]:
    """Run a stream as the wallet does: ack when asked to, ack the end."""
    await send(ws, request)
    got: list[dict[str, Any]] = []
    while True:
        message = await recv(ws)
        if not message["type"].startswith("stream:history:"):
            continue
        got.append(message)
        if message["type"] in ("stream:history:end", "stream:history:error"):
            if message["type"] == "stream:history:end":
                await send(ws, {"type": "request:history:ack", "id": request["id"], "ack": message["seq"]})
            return got
        if ack_every and message["seq"] % ack_every == 0 and message["seq"] > 0:
            await send(ws, {"type": "request:history:ack", "id": request["id"], "ack": message["seq"]})


def summary(messages: list[dict[str, Any]]) -> list[tuple]:
    out = []
    for m in messages:
        kind = m["type"].rsplit(":", 1)[1]
        if kind == "address":
            out.append((kind, m["seq"], m["index"], m["address"]))
        elif kind == "vertex":
            out.append((kind, m["seq"], m["data"]["tx_id"]))
        else:
            out.append((kind, m["seq"]))
    return out


async def test_xpub_stream_over_the_chain(devnode):
    node, url = devnode
    paid = [node.mine_block(script=decode_address(XPUB_ADDRESSES[1]).script) for _ in range(2)]
    async with trio_websocket.open_websocket_url(url) as ws:
        await recv(ws, "capabilities")
        request = {"type": "request:history:xpub", "id": "x", "xpub": V1_M, "gap-limit": 2, "window-size": 3}
        got = await stream_all(ws, request, ack_every=1)
    assert summary(got) == [
        ("begin", 0),
        ("address", 1, 0, XPUB_ADDRESSES[0]),
        ("address", 2, 1, XPUB_ADDRESSES[1]),
        ("vertex", 3, paid[0].hash_hex),
        ("vertex", 4, paid[1].hash_hex),
        ("address", 5, 2, XPUB_ADDRESSES[2]),
        ("address", 6, 3, XPUB_ADDRESSES[3]),
        ("end", 7),
    ]
    assert got[0]["window_size"] == 3
    # Streamed addresses are subscribed on the connection.
    assert XPUB_ADDRESSES[1] not in node.admin.clients.by_address  # the client left


async def test_manual_stream_in_batches_with_window(devnode):
    node, url = devnode
    block = node.mine_block(script=decode_address(XPUB_ADDRESSES[4]).script)
    async with trio_websocket.open_websocket_url(url) as ws:
        await recv(ws, "capabilities")
        first = [[i, XPUB_ADDRESSES[i]] for i in range(3)]
        await send(
            ws,
            {
                "type": "request:history:manual",
                "id": "m",
                "first": True,
                "addresses": first,
                "window-size": 2,
            },
        )
        assert (await recv(ws, "stream:history:begin"))["window_size"] == 2
        assert (await recv(ws, "stream:history:address"))["seq"] == 1
        await send(ws, {"type": "request:history:ack", "id": "m", "ack": 1})
        await send(
            ws,
            {
                "type": "request:history:manual",
                "id": "m",
                "addresses": [[3, XPUB_ADDRESSES[3]], [4, XPUB_ADDRESSES[4]]],
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
                await send(ws, {"type": "request:history:ack", "id": "m", "ack": message["seq"]})
        await send(ws, {"type": "request:history:ack", "id": "m", "ack": got[-1]["seq"]})
        await send(ws, {"type": "request:history:xpub", "id": "next", "xpub": V1_M, "gap-limit": 1})
        assert (await recv(ws, "stream:history:begin"))["id"] == "next"  # the first one is closed
    assert summary(got) == [
        ("address", 2, 1, XPUB_ADDRESSES[1]),
        ("address", 3, 2, XPUB_ADDRESSES[2]),
        ("address", 4, 3, XPUB_ADDRESSES[3]),
        ("address", 5, 4, XPUB_ADDRESSES[4]),
        ("vertex", 6, block.hash_hex),
        ("end", 7),
    ]


async def test_stream_errors_and_disabled_history(devnode):
    node, url = devnode
    async with trio_websocket.open_websocket_url(url) as ws:
        await recv(ws, "capabilities")
        await send(ws, {"type": "request:history:xpub", "id": "x", "xpub": "xpubNOPE"})
        assert await recv(ws, "stream:history:error") == {
            "type": "stream:history:error",
            "id": "x",
            "errmsg": "Invalid XPub: xpubNOPE",
        }
        await send(ws, {"type": "request:history:ack", "id": "x", "ack": 0})
        assert (await recv(ws, "stream:history:error"))["errmsg"] == "No streaming opened."
    node.admin.history_enabled = False
    async with trio_websocket.open_websocket_url(url) as ws:
        assert await recv(ws) == {"type": "capabilities", "capabilities": []}
        await send(ws, {"type": "request:history:xpub", "id": "x", "xpub": V1_M})
        assert await recv(ws, "stream:history:error") == {
            "type": "stream:history:error",
            "id": "",
            "errmsg": "Streaming history is disabled.",
        }


async def test_disconnect_all_closes_admin_clients(devnode):
    node, url = devnode
    async with trio_websocket.open_websocket_url(url) as ws:
        await recv(ws, "capabilities")
        node.admin.disconnect_all()
        with trio.fail_after(5), pytest.raises(trio_websocket.ConnectionClosed):
            while True:
                await ws.get_message()
    assert len(node.admin.clients) == 0
