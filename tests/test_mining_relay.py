"""The /mining relay: sans-IO request rules, then loopback against the dev node through MiningUpstream."""

from __future__ import annotations

import json
import random
import string
import time
from functools import partial
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio_websocket
from hypothesis import given
from hypothesis import strategies as st

from miningproxy.api.http import Router, serve_http
from miningproxy.api.mining_ws import MiningRelay, SubmitCall, handle_payload
from miningproxy.devnode import DevNode, DevNodeSettings
from miningproxy.devnode.miner import build_block, find_bad_nonce, mine
from miningproxy.hathor.block import Block
from miningproxy.hathor.template import BlockTemplate
from miningproxy.latest import LatestValue
from miningproxy.upstream.mining import MiningUpstream
from tests.hathor_vectors import template_dicts

TEMPLATES = template_dicts()
TEMPLATE = TEMPLATES[0]


def good_block(template: dict[str, Any] = TEMPLATE) -> Block:
    return mine(build_block(template))


def bad_block(template: dict[str, Any] = TEMPLATE) -> Block:
    block = build_block(template)
    nonce = find_bad_nonce(block)
    return Block(
        block.signal_bits, 0, block.outputs, block.weight, block.timestamp, block.parents, b"", nonce
    )


def handle(message: Any) -> list[Any]:
    return handle_payload(json.dumps(message), [TEMPLATE])


def random_id() -> str:
    return "".join(random.choice(string.printable) for _ in range(10))


# --- sans-IO ---------------------------------------------------------------------------------------


def test_refresh_is_answered_from_the_cache_with_the_id_echoed():
    rid = random_id()
    assert handle({"jsonrpc": "2.0", "id": rid, "method": "mining.refresh"}) == [
        {"id": rid, "error": None, "result": [TEMPLATE]}
    ]
    assert handle({"id": None, "method": "mining.refresh"}) == []  # a notification: no reply
    assert handle_payload(json.dumps({"id": 1, "method": "mining_refresh"}), []) == [
        {"id": 1, "error": None, "result": []}
    ]


def test_submit_named_and_positional_params():
    block = good_block()
    hexdata = block.struct().hex()
    [named] = handle(
        {"id": "a", "method": "mining.submit", "params": {"hexdata": hexdata, "optimistic": True}}
    )
    [positional] = handle({"id": 2, "method": "mining.submit", "params": [hexdata, False]})
    [short] = handle({"id": 3, "method": "mining.submit", "params": [hexdata]})
    assert named == SubmitCall("a", block.struct(), block.hash(), True)
    assert positional == SubmitCall(2, block.struct(), block.hash(), False)
    assert isinstance(short, SubmitCall) and short.optimistic is False


@pytest.mark.parametrize(
    "params",
    [
        [],
        ["00", False, 3],
        {"optimistic": True},
        {"hexdata": "00", "extra": 1},
        "00",
        [12],
        ["zz"],
    ],
)
def test_bad_submit_params_are_invalid_params_with_the_id(params):
    [reply] = handle({"id": "req-1", "method": "mining.submit", "params": params})
    assert reply["id"] == "req-1" and reply["result"] is None
    assert reply["error"]["code"] == -32602 and reply["error"]["message"] == "Invalid params"


def test_unparseable_and_bad_pow_blocks_are_not_forwarded():
    [garbage] = handle({"id": 9, "method": "mining.submit", "params": ["0000ff"]})
    assert (
        garbage["id"] == 9
        and garbage["error"]["code"] == -32603
        and "cannot parse" in garbage["error"]["data"]
    )
    [weak] = handle({"id": 10, "method": "mining.submit", "params": [bad_block().struct().hex()]})
    assert (
        weak["id"] == 10
        and weak["error"]["code"] == -32603
        and "does not meet its weight" in weak["error"]["data"]
    )


def test_a_transaction_is_answered_false():
    assert handle({"id": 4, "method": "mining.submit", "params": ["0001" + "00" * 40]}) == [
        {"id": 4, "error": None, "result": False}
    ]


def test_errors_carry_the_request_id():
    assert handle({"jsonrpc": "2.0", "id": "x y", "method": "mining.subscribe", "params": []}) == [
        {"id": "x y", "error": {"code": -32601, "message": "Method not found"}, "result": None}
    ]
    [no_method] = handle({"id": 5})
    assert no_method["id"] == 5 and no_method["error"]["code"] == -32600
    assert handle_payload("{nope", []) == [
        {"id": None, "error": {"code": -32700, "message": "Parse error"}, "result": None}
    ]
    [not_object] = handle_payload("[3]", [])
    assert not_object["error"]["code"] == -32600


def test_batches_are_answered_item_by_item():
    replies = handle([{"id": 1, "method": "mining.refresh"}, {"id": 2, "method": "nope"}])
    assert [r["id"] for r in replies] == [1, 2]


@given(st.one_of(st.text(), st.integers(), st.floats(allow_nan=False), st.lists(st.integers(), max_size=2)))
def test_any_id_is_echoed_exactly(request_id):
    for method in ("mining.refresh", "mining.nope"):
        [reply] = handle_payload(json.dumps({"id": request_id, "method": method}), [])
        assert reply["id"] == request_id


# --- loopback against the dev node ------------------------------------------------------------------


async def start(nursery: trio.Nursery, **settings: Any) -> tuple[DevNode, MiningUpstream, MiningRelay, str]:
    settings.setdefault("block_weight", 4)
    # A fixed clock: a template's timestamp_now follows it, and the tests compare what the relay
    # sent with the node's template computed later (a second boundary in between failed them).
    now = int(time.time())
    node = DevNode(DevNodeSettings(**settings), clock=lambda: now)
    node_port = await nursery.start(node.serve, "127.0.0.1", 0)
    upstream = MiningUpstream(
        [f"http://127.0.0.1:{node_port}/v1a/"], backoff_initial=0.05, backoff_max=0.2, submit_timeout=10
    )
    await nursery.start(upstream.run)
    relay = MiningRelay(upstream, optimistic_wait=5.0)
    router = Router()
    relay.mount(router)
    listeners = await nursery.start(partial(serve_http, router, "127.0.0.1", 0))
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(5):
        while upstream.templates.current is None:
            await trio.sleep(0.01)
    return node, upstream, relay, f"ws://127.0.0.1:{port}"


async def recv(ws: trio_websocket.WebSocketConnection, timeout: float = 10) -> dict[str, Any]:
    with trio.fail_after(timeout):
        return json.loads(await ws.get_message())


async def reply_to(ws: trio_websocket.WebSocketConnection, request_id: Any) -> dict[str, Any]:
    while True:
        message = await recv(ws)
        if message.get("method") is None and message.get("id") == request_id:
            return message


async def test_notify_refresh_and_submit_through_the_relay(nursery):
    node, upstream, relay, base = await start(nursery)
    async with trio_websocket.open_websocket_url(base + "/v1a/mining_ws") as ws:
        notify = await recv(ws)
        assert notify == {"id": None, "method": "mining.notify", "params": node.templates_json()}
        rid = random_id()
        await ws.send_message(
            json.dumps({"jsonrpc": "2.0", "id": rid, "method": "mining.refresh", "params": []})
        )
        refresh = await reply_to(ws, rid)
        assert refresh["result"] == notify["params"] and refresh["error"] is None
        block = good_block(notify["params"][0])
        sid = random_id()
        submit = {"hexdata": block.struct().hex(), "optimistic": False}
        await ws.send_message(
            json.dumps({"jsonrpc": "2.0", "id": sid, "method": "mining.submit", "params": submit})
        )
        reply, tips = None, []
        while reply is None or block.hash().hex() not in tips:  # the new notify may come first
            message = await recv(ws)
            if message.get("method") == "mining.notify":
                tips.append(message["params"][0]["parents"][0])
            elif message.get("id") == sid:
                reply = message
        assert reply == {"id": sid, "error": None, "result": True}
        assert node.chain.height == 1 and node.tip.hash == block.hash()
        # The same block again is no longer on the tip: false, as the node says.
        await ws.send_message(
            json.dumps({"id": "dup", "method": "mining.submit", "params": [block.struct().hex(), False]})
        )
        assert await reply_to(ws, "dup") == {"id": "dup", "error": None, "result": False}


async def test_a_bad_block_is_refused_here_and_the_upstream_survives(nursery):
    node, upstream, relay, base = await start(nursery)
    async with trio_websocket.open_websocket_url(base + "/mining") as ws:
        notify = await recv(ws)
        await ws.send_message(
            json.dumps(
                {
                    "id": 77,
                    "method": "mining.submit",
                    "params": [bad_block(notify["params"][0]).struct().hex()],
                }
            )
        )
        reply = await reply_to(ws, 77)
        assert reply["error"]["code"] == -32603 and reply["id"] == 77
        await ws.send_message(json.dumps({"id": 78, "method": "mining.refresh"}))
        assert (await reply_to(ws, 78))["result"]  # still connected
    assert node.submissions == [] and upstream.status().counters["connects"] == 1


async def test_optimistic_submit_gets_the_next_template_even_when_the_node_is_broken(nursery):
    node, upstream, relay, base = await start(nursery, optimistic="broken")
    async with trio_websocket.open_websocket_url(base + "/v1a/mining_ws") as ws:
        notify = await recv(ws)
        block = good_block(notify["params"][0])
        await ws.send_message(
            json.dumps(
                {
                    "id": "opt",
                    "method": "mining.submit",
                    "params": {"hexdata": block.struct().hex(), "optimistic": True},
                }
            )
        )
        reply = await reply_to(ws, "opt")
        assert reply["error"] is None
        template = reply["result"]
        assert isinstance(template, dict) and template["parents"][0] == block.hash().hex()
        BlockTemplate.from_json(template)  # a template the client can mine on
        assert node.tip.hash == block.hash()


async def test_one_upstream_connection_for_many_clients(nursery):
    node, upstream, relay, base = await start(nursery)
    async with trio.open_nursery() as clients:
        got = []

        async def client() -> None:
            async with trio_websocket.open_websocket_url(base + "/mining") as ws:
                got.append((await recv(ws))["method"])
                await ws.send_message(json.dumps({"id": 1, "method": "mining.refresh"}))
                await reply_to(ws, 1)

        for _ in range(8):
            clients.start_soon(client)
    assert got == ["mining.notify"] * 8
    assert node.connections == 1


async def test_a_node_style_client_submits_through_the_relay(nursery):
    """The proxy's own upstream client, pointed at the relay as if it were a node."""
    node, upstream, relay, base = await start(nursery)
    client = MiningUpstream([base.replace("ws://", "http://") + "/v1a/"], submit_timeout=10)
    await nursery.start(client.run)
    with trio.fail_after(5):
        update = await client.templates.wait_newer(0)
    template = update[1].templates[0]
    block = good_block(template.to_json())
    outcome = await client.submit(block.struct(), block_hash=block.hash())
    assert outcome.status == "accepted", outcome
    assert node.tip.hash == block.hash()


async def test_no_empty_notify_before_the_first_template(nursery):
    upstream = SimpleNamespace(templates=LatestValue(), submit=None)
    relay = MiningRelay(upstream)  # type: ignore[arg-type]
    router = Router()
    relay.mount(router)
    listeners = await nursery.start(partial(serve_http, router, "127.0.0.1", 0))
    port = listeners[0].socket.getsockname()[1]
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/mining") as ws:
        await ws.send_message(json.dumps({"id": "r", "method": "mining.refresh"}))
        assert await recv(ws) == {"id": "r", "error": None, "result": []}
        upstream.templates.publish(SimpleNamespace(node="n", templates=()))  # a syncing node: nothing to send
        upstream.templates.publish(
            SimpleNamespace(node="n", templates=(BlockTemplate.from_json(TEMPLATE),), received_at=0.0)
        )
        assert await recv(ws) == {"id": None, "method": "mining.notify", "params": [TEMPLATE]}
