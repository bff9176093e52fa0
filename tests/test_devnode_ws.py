"""The dev node over real loopback: /v1a/mining_ws as a real node, /v1a/version and /v1a/status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket

from miningproxy.devnode import DevNode
from miningproxy.devnode.miner import build_block, find_bad_nonce, mine_template
from miningproxy.hathor.block import Block
from tests.devnode_support import NOW, Clock, start_devnode

TRANSCRIPTS = Path(__file__).resolve().parents[2] / "shared" / "protocol" / "transcripts"
P2PKH = bytes.fromhex("76a91466665b27f7dbc4c8c089d2f686c170c74d66f0b588ac")
INTERNAL_ERROR = {"id": None, "error": {"code": -32603, "message": "Internal error"}, "result": None}


@pytest.fixture
async def devnode(nursery: trio.Nursery) -> tuple[DevNode, str]:
    node, port = await start_devnode(nursery)
    return node, f"ws://127.0.0.1:{port}/v1a/mining_ws"


async def recv(ws: trio_websocket.WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(5):
        return json.loads(await ws.get_message())


async def send(ws: trio_websocket.WebSocketConnection, message: dict[str, Any]) -> None:
    await ws.send_message(json.dumps(message))


async def expect_closed(ws: trio_websocket.WebSocketConnection) -> int:
    with trio.fail_after(5), pytest.raises(trio_websocket.ConnectionClosed) as info:
        await ws.get_message()
    return info.value.reason.code


def _submit(id: Any, hexdata: bytes, optimistic: bool = False) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": id,
        "method": "mining.submit",
        "params": {"hexdata": hexdata.hex(), "optimistic": optimistic},
    }


def _bad_pow(template: dict[str, Any]) -> bytes:
    block = build_block(template)
    nonce = find_bad_nonce(block)
    return Block(
        block.signal_bits, 0, block.outputs, block.weight, block.timestamp, block.parents, b"", nonce
    ).struct()


def _shape(value: Any) -> Any:
    """Keys and JSON types, recursively (weight/score: any number)."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value[:1]]
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


async def test_notify_on_connect_and_refresh(devnode) -> None:
    node, url = devnode
    real = json.loads((TRANSCRIPTS / "mining_ws.jsonl").read_text().splitlines()[1])["frame"]
    async with trio_websocket.open_websocket_url(url) as ws:
        notify = await recv(ws)
        assert list(notify) == ["id", "method", "params"] and notify["id"] is None
        assert notify["method"] == "mining.notify"
        assert _shape(notify) == _shape(real)
        assert notify["params"][0]["parents"][0] == node.genesis.block_hash.hex()
        await send(ws, {"jsonrpc": "2.0", "id": 1, "method": "mining.refresh", "params": []})
        assert await recv(ws) == {"id": 1, "error": None, "result": notify["params"]}
        await send(ws, {"jsonrpc": "2.0", "id": "x", "method": "mining.refresh"})
        assert (await recv(ws))["id"] == "x"


async def test_accepted_block_notifies_every_client(devnode) -> None:
    node, url = devnode
    async with trio_websocket.open_websocket_url(url) as a, trio_websocket.open_websocket_url(url) as b:
        template = (await recv(a))["params"][0]
        await recv(b)
        block = mine_template(template, script=P2PKH)
        await send(a, _submit(2, block))
        assert await recv(a) == {"id": 2, "error": None, "result": True}
        for ws in (a, b):
            notify = await recv(ws)
            assert notify["method"] == "mining.notify"
            assert notify["params"][0]["parents"][0] == node.tip.hash_hex
            assert notify["params"][0]["height"] == 2
        assert node.chain.height == 1 and node.tip.block.outputs[0].script == P2PKH
        # Duplicate: false, not fatal, no new notify.
        await send(a, _submit(3, block))
        assert await recv(a) == {"id": 3, "error": None, "result": False}
        await send(a, {"id": 4, "method": "mining.refresh"})
        assert (await recv(a))["id"] == 4


async def test_positional_params(devnode) -> None:
    node, url = devnode
    async with trio_websocket.open_websocket_url(url) as ws:
        template = (await recv(ws))["params"][0]
        await send(
            ws,
            {
                "jsonrpc": "2.0",
                "id": 6,
                "method": "mining.submit",
                "params": [mine_template(template).hex(), False],
            },
        )
        assert await recv(ws) == {"id": 6, "error": None, "result": True}
        assert (await recv(ws))["method"] == "mining.notify"
        await send(ws, {"id": 7, "method": "mining.submit", "params": [mine_template(template).hex()]})
        assert await recv(ws) == {"id": 7, "error": None, "result": False}  # stale parent now


async def test_invalid_pow_is_fatal_and_closes_without_status(devnode) -> None:
    node, url = devnode
    async with trio_websocket.open_websocket_url(url) as ws:
        template = (await recv(ws))["params"][0]
        await send(ws, _submit(8, _bad_pow(template)))
        assert await recv(ws) == INTERNAL_ERROR
        assert await expect_closed(ws) == 1005  # the node's close frame has no status code
    assert node.chain.height == 0
    assert node.submissions[-1].status == "invalid"
    async with trio_websocket.open_websocket_url(url) as ws:
        assert (await recv(ws))["params"][0]["height"] == 1


async def test_low_weight_from_template_data_is_rejected_when_weight_decays(nursery) -> None:
    """The TRAP: the template's weight is for timestamp_now; data is stamped timestamp_min."""
    node, port = await start_devnode(nursery, block_weight=8, min_block_weight=2, weight_decay_seconds=60)
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/v1a/mining_ws") as ws:
        template = (await recv(ws))["params"][0]
        assert template["weight"] == 2  # the genesis is years old: fully decayed at timestamp_now
        await send(ws, _submit(1, mine_template(template, timestamp=template["timestamp_min"])))
        assert await recv(ws) == INTERNAL_ERROR
        await expect_closed(ws)
    assert "weight (2.0) is smaller than the minimum weight (8.0)" in node.submissions[-1].reason
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/v1a/mining_ws") as ws:
        template = (await recv(ws))["params"][0]
        await send(ws, _submit(2, mine_template(template)))  # timestamp_now: accepted at weight 2
        assert await recv(ws) == {"id": 2, "error": None, "result": True}


async def test_unknown_method_and_parse_error(devnode) -> None:
    _, url = devnode
    async with trio_websocket.open_websocket_url(url) as ws:
        await recv(ws)
        await send(ws, {"jsonrpc": "2.0", "id": 4, "method": "mining.subscribe", "params": []})
        assert await recv(ws) == {
            "id": None,
            "error": {"code": -32601, "message": "Method not found"},
            "result": None,
        }
        await send(ws, {"id": 5, "method": "mining.submit", "params": {"nope": 1}})
        assert (await recv(ws))["error"] == {"code": -32602, "message": "Invalid params"}
        await ws.send_message("{this is not json")
        assert await recv(ws) == {
            "id": None,
            "error": {"code": -32700, "message": "Parse error"},
            "result": None,
        }
        assert await expect_closed(ws) == 1005


async def test_optimistic_broken_stores_block_then_fails(devnode) -> None:
    node, url = devnode
    assert node.optimistic == "broken"  # the default, as every node release
    async with trio_websocket.open_websocket_url(url) as other:
        await recv(other)
        async with trio_websocket.open_websocket_url(url) as ws:
            template = (await recv(ws))["params"][0]
            await send(ws, _submit(9, mine_template(template), optimistic=True))
            assert await recv(ws) == INTERNAL_ERROR
            assert await expect_closed(ws) == 1005
        # The block IS stored: the other client is notified, a new connection sees it as the tip.
        assert (await recv(other))["params"][0]["height"] == 2
    assert node.chain.height == 1
    async with trio_websocket.open_websocket_url(url) as ws:
        assert (await recv(ws))["params"][0]["parents"][0] == node.tip.hash_hex


async def test_optimistic_works_returns_next_template(devnode) -> None:
    node, url = devnode
    node.optimistic = "works"
    async with trio_websocket.open_websocket_url(url) as ws:
        template = (await recv(ws))["params"][0]
        await send(ws, _submit(9, mine_template(template), optimistic=True))
        reply = await recv(ws)
        assert reply["id"] == 9 and reply["error"] is None
        assert isinstance(reply["result"], dict)  # one template, as hathor-core's ws.py intends
        assert reply["result"]["parents"][0] == node.tip.hash_hex and reply["result"]["height"] == 2
        notify = await recv(ws)
        assert notify["params"] == [reply["result"]]
        # optimistic on a stale block: just false.
        await send(ws, _submit(10, mine_template(template), optimistic=True))
        assert await recv(ws) == {"id": 10, "error": None, "result": False}


async def test_submit_without_id_runs_silently(devnode) -> None:
    node, url = devnode
    async with trio_websocket.open_websocket_url(url) as ws:
        template = (await recv(ws))["params"][0]
        await send(ws, {"method": "mining.submit", "params": [mine_template(template).hex()]})
        assert (await recv(ws))["method"] == "mining.notify"  # no reply, only the new template
    assert node.chain.height == 1


async def test_forced_failures(devnode) -> None:
    node, url = devnode
    async with trio_websocket.open_websocket_url(url) as ws:
        template = (await recv(ws))["params"][0]
        node.force_submit_failure("false")
        await send(ws, _submit(1, mine_template(template)))
        assert await recv(ws) == {"id": 1, "error": None, "result": False}
        node.force_submit_failure("silent")
        await send(ws, _submit(2, mine_template(template)))
        await send(ws, {"id": 3, "method": "mining.refresh"})
        assert (await recv(ws))["id"] == 3  # nothing came for id 2
        node.force_submit_failure("internal_error")
        await send(ws, _submit(4, mine_template(template)))
        assert await recv(ws) == INTERNAL_ERROR
        await expect_closed(ws)
    node.force_submit_failure("close")
    async with trio_websocket.open_websocket_url(url) as ws:
        await recv(ws)
        await send(ws, _submit(5, mine_template(template)))
        await expect_closed(ws)
    assert node.chain.height == 0
    assert [s.status for s in node.submissions] == [
        "forced:false",
        "forced:silent",
        "forced:internal_error",
        "forced:close",
    ]
    with pytest.raises(ValueError, match="failure mode"):
        node.force_submit_failure("explode")  # type: ignore[arg-type]


async def test_syncing_node(devnode) -> None:
    node, url = devnode
    node.syncing = True
    async with trio_websocket.open_websocket_url(url) as ws:
        await send(ws, {"id": 1, "method": "mining.refresh"})
        assert await recv(ws) == {"id": 1, "error": None, "result": []}  # and no notify came before it
        await send(ws, _submit(2, mine_template(node.chain.templates_json(NOW)[0])))
        assert await recv(ws) == {"id": 2, "error": None, "result": False}


async def test_block_found_elsewhere_and_disconnect_all(devnode) -> None:
    node, url = devnode
    async with trio_websocket.open_websocket_url(url) as a, trio_websocket.open_websocket_url(url) as b:
        await recv(a)
        await recv(b)
        with trio.fail_after(5):
            while node.connections < 2:
                await trio.sleep(0)
        block = node.mine_block()
        for ws in (a, b):
            assert (await recv(ws))["params"][0]["parents"][0] == block.hash_hex
        assert await node.wait_for_height(1) == block
        node.disconnect_all()
        assert await expect_closed(a) == 1005
        assert await expect_closed(b) == 1005


async def _http_get(port: int, path: str) -> tuple[str, dict[str, str], Any]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    raw = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some(65536):
            raw += chunk
    head, body = raw.split(b"\r\n\r\n", 1)
    status, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    return status, headers, json.loads(body)


def _real_body(name: str) -> dict[str, Any]:
    return json.loads((TRANSCRIPTS / name).read_text().split("\n\n", 1)[1])


async def test_http_version_and_status(nursery) -> None:
    node, port = await start_devnode(nursery, network="privatenet-fastmine")
    status, headers, version = await _http_get(port, "/v1a/version")
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"] == "application/json; charset=utf-8"
    real_version = _real_body("http-version.txt")
    assert _shape(version) == _shape(real_version)
    for key in ("network", "genesis_block_hash", "genesis_tx1_hash", "genesis_tx2_hash", "decimal_places"):
        assert version[key] == real_version[key]

    _, _, status_body = await _http_get(port, "/v1a/status/")
    real_status = _real_body("http-status.txt")
    assert _shape(status_body) == _shape(real_status)
    assert status_body["dag"] == real_status["dag"]  # same genesis: the same DAG summary
    assert status_body["server"]["state"] == "READY"

    node.mine_block()
    second = node.mine_block()
    _, _, status_body = await _http_get(port, "/v1a/status")
    assert status_body["dag"]["best_block"] == {"hash": second.hash_hex, "height": 2}
    assert [h for h, _ in status_body["dag"]["best_blockchain"]] == [2, 1, 0]
    assert status_body["dag"]["latest_timestamp"] == second.timestamp


def _transcript() -> list[dict[str, Any]]:
    return [json.loads(line) for line in (TRANSCRIPTS / "mining_ws.jsonl").read_text().splitlines() if line]


async def test_replay_real_transcript(nursery) -> None:
    """Every frame the real node sent, in order, is reproduced exactly by the dev node."""
    node, port = await start_devnode(nursery, network="privatenet-fastmine", block_weight=8)
    clock = node.clock
    assert isinstance(clock, Clock)
    frames = _transcript()
    url = f"ws://127.0.0.1:{port}/v1a/mining_ws"

    def clock_for(index: int) -> None:
        # The node's clock when it answered: the timestamp_now of the next templates it sent.
        for f in frames[index:]:
            templates = f["frame"].get("params") or f["frame"].get("result")
            if (
                f["dir"] == "recv"
                and isinstance(templates, list)
                and templates
                and isinstance(templates[0], dict)
            ):
                clock.now = templates[0]["timestamp_now"]
                return

    ws: trio_websocket.WebSocketConnection | None = None
    compared = 0
    async with trio.open_nursery() as inner:
        for index, f in enumerate(frames):
            frame = f["frame"]
            if f["dir"] == "info" and "connected" in frame:
                clock_for(index)
                ws = await trio_websocket.connect_websocket_url(inner, url)
            elif f["dir"] == "info" and "close_code" in frame:
                assert ws is not None
                assert await expect_closed(ws) == frame["close_code"]
                await ws.aclose()
                ws = None
            elif f["dir"] == "send":
                assert ws is not None
                clock_for(index)
                await ws.send_message(json.dumps(frame))
            elif f["dir"] == "recv":
                assert ws is not None
                assert await recv(ws) == frame, f"frame {index} ({f.get('note', '')})"
                compared += 1
        if ws is not None:
            await ws.aclose()
    assert compared == 14
    assert node.chain.height == 3
    assert node.tip.hash_hex == "0081cd36214976396f2c468000e4229e6c9ccb432a96596e75fb14ed1a57bd39"
