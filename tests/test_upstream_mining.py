"""MiningUpstream against loopback websocket servers that behave like the real node.

FakeNode follows the frames in protocol/transcripts/mining_ws.jsonl: a notify on connect and after
each new block, refresh, submit -> true/false, an invalid block -> the id-less -32603 and a close,
optimistic=true -> stored, then the same fatal error and a close ("broken", every real node so far)
or the next template as the result ("works"). Time is trio's MockClock (autojump).
"""

from __future__ import annotations

import itertools
import json
import logging
import random
from dataclasses import dataclass
from functools import partial

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from hashing.header import check_pow
from miningproxy.hathor.block import Block, TxOutput, parse_block
from miningproxy.hathor.template import BlockTemplate
from miningproxy.latest import LatestValue
from miningproxy.upstream import mining
from miningproxy.upstream.mining import MiningUpstream, TemplateUpdate

# Hashes from the real privatenet transcript: the genesis block and the two genesis transactions.
GENESIS = bytes.fromhex("0008337bc0a6e7f17c21aa6baed8092a4e74b159f0065754397dcc9340097a09")
TX1 = bytes.fromhex("039906854ce6309b3180945f2a23deb9edff369753f7082e19053f5ac11bfbae")
TX2 = bytes.fromhex("54165cef1fd4cf2240d702b8383c307c822c16ca407f78014bdefa189a7571c2")
WEIGHT = 1.0  # half of all nonces meet it: blocks are mined in a couple of hashes
TS = 1795814406

FAST = dict(
    template_timeout=30.0,
    failback_after=20.0,
    backoff_initial=1.0,
    backoff_max=8.0,
    submit_timeout=15.0,
    connect_timeout=5.0,
)


class Chain:
    """A fake node's chain; nodes sharing one are in sync."""

    def __init__(self) -> None:
        self.tip = GENESIS
        self.height = 1
        self.blocks = {GENESIS}
        self.changes: LatestValue[int] = LatestValue()
        self.changes.publish(self.height)
        self._other = itertools.count(1)

    def template(self) -> dict:
        block = Block(0, 0, (TxOutput(6400, 0, b""),), WEIGHT, TS + self.height, (self.tip, TX1, TX2), b"")
        return {
            "data": block.struct_without_nonce().hex(),
            "versions": [0, 3],
            "reward": 6400,
            "weight": WEIGHT,
            "timestamp_now": TS + self.height,
            "timestamp_min": TS + self.height,
            "timestamp_max": TS + self.height + 300,
            "parents": [self.tip.hex(), TX1.hex(), TX2.hex()],
            "parents_any": [],
            "height": self.height,
            "score": 256.0 * self.height,
            "signal_bits": 0,
        }

    def add(self, block_hash: bytes) -> None:
        self.tip = block_hash
        self.height += 1
        self.blocks.add(block_hash)
        self.changes.publish(self.height)

    def submit(self, struct: bytes) -> str:
        block = parse_block(struct)
        block_hash = block.hash()
        if not check_pow(block_hash, block.weight):
            return "invalid"
        if block_hash in self.blocks or block.parents[0] != self.tip:
            return "not_tip"
        self.add(block_hash)
        return "accepted"

    def advance(self) -> None:
        """Another miner's block."""
        self.add(next(self._other).to_bytes(32, "big"))


@dataclass
class Submitted:
    hexdata: str
    optimistic: bool


FATAL = json.dumps({"id": None, "error": {"code": -32603, "message": "Internal error"}, "result": None})


class FakeNode:
    def __init__(self, chain: Chain, *, optimistic: str = "broken") -> None:
        self.chain = chain
        self.optimistic = optimistic  # "broken" | "works"
        self.notify_changes = True  # push a notify after each new block (one on connect regardless)
        self.silent = False  # accept the socket, then never say anything
        self.answer_submits = True
        self.reject_handshake = False
        self.submits: list[Submitted] = []
        self.refreshes = 0
        self.connections = 0
        self.open_connections = 0
        self.handshake_attempts: list[float] = []
        self.port = 0
        self._scope: trio.CancelScope | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1a/"

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as self._scope:
            async with trio.open_nursery() as nursery:
                server = await nursery.start(
                    partial(serve_websocket, self._handle, "127.0.0.1", self.port, None, disconnect_timeout=1)
                )
                self.port = server.port
                task_status.started()

    def stop(self) -> None:
        assert self._scope is not None
        self._scope.cancel()

    async def _handle(self, request: WebSocketRequest) -> None:
        self.handshake_attempts.append(trio.current_time())
        if request.path != "/v1a/mining_ws":
            await request.reject(404)
            return
        if self.reject_handshake:
            await request.reject(503, body=b"node unavailable")
            return
        ws = await request.accept()
        self.connections += 1
        self.open_connections += 1
        try:
            async with trio.open_nursery() as nursery:
                if not self.silent:
                    nursery.start_soon(self._push, ws)
                await self._requests(ws)
                nursery.cancel_scope.cancel()
        finally:
            self.open_connections -= 1

    async def _requests(self, ws) -> None:
        try:
            while await self._answer(ws, json.loads(await ws.get_message())):
                pass
            await ws.aclose()
        except ConnectionClosed:
            pass

    async def _push(self, ws) -> None:
        first = True
        try:
            async for _ in self.chain.changes.subscribe():
                if first or self.notify_changes:
                    notify = {"id": None, "method": "mining.notify", "params": [self.chain.template()]}
                    await ws.send_message(json.dumps(notify))
                first = False
        except ConnectionClosed:
            pass

    async def _answer(self, ws, msg: dict) -> bool:
        """Answer one request like the node; False: close the socket (the fatal errors)."""
        method, rid = msg.get("method"), msg.get("id")
        if self.silent:
            return True
        if method == "mining.refresh":
            self.refreshes += 1
            await ws.send_message(json.dumps({"id": rid, "error": None, "result": [self.chain.template()]}))
            return True
        if method != "mining.submit":
            await ws.send_message(
                json.dumps(
                    {"id": None, "error": {"code": -32601, "message": "Method not found"}, "result": None}
                )
            )
            return True
        params = msg["params"]
        hexdata, optimistic = (
            (params["hexdata"], params.get("optimistic", False)) if isinstance(params, dict) else params
        )
        self.submits.append(Submitted(hexdata, optimistic))
        verdict = self.chain.submit(bytes.fromhex(hexdata))
        if not self.answer_submits:
            return True
        if verdict == "invalid" or (verdict == "accepted" and optimistic and self.optimistic == "broken"):
            await ws.send_message(FATAL)
            return False
        result: object = verdict == "accepted"
        if verdict == "accepted" and optimistic:
            result = self.chain.template()  # hathor-core: make_block_template(tx.hash).to_dict()
        await ws.send_message(json.dumps({"id": rid, "error": None, "result": result}))
        return True


def mine(template: BlockTemplate, *, valid: bool = True) -> tuple[bytes, bytes]:
    """(struct, hash) of a block on ``template`` whose PoW is valid (or, for tests, invalid)."""
    block = template.data_block
    for nonce in itertools.count():
        block_hash = block.hash(nonce)
        if check_pow(block_hash, block.weight) == valid:
            return block.struct(nonce), block_hash
    raise AssertionError("unreachable")


async def wait_for(predicate, timeout: float = 500.0) -> None:
    """Poll in mock time (the autojump clock makes this instant)."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)


async def next_update(up: MiningUpstream, after: int = 0) -> TemplateUpdate:
    with trio.fail_after(500):
        return (await up.templates.wait_newer(after))[1]


async def start_nodes(nursery: trio.Nursery, *nodes: FakeNode) -> None:
    for node in nodes:
        await nursery.start(node.serve)


async def start_upstream(nursery: trio.Nursery, urls: list[str], **kw) -> MiningUpstream:
    up = MiningUpstream(urls, **{**FAST, "rng": random.Random(1), **kw})
    await nursery.start(up.run)
    return up


@pytest.fixture(autouse=True, params=["direct", "sender"])
def write_path(request, monkeypatch):
    """Every test runs twice: with new blocks written straight to an idle node from enqueue(), and
    with that fast path off (every block through the queue and the sender task)."""
    if request.param == "sender":
        monkeypatch.setattr(mining, "_TIOCOUTQ", None)
    return request.param


# ---- one node ---------------------------------------------------------------------------------


async def test_connects_publishes_templates_and_reports_status(autojump_clock):
    node = FakeNode(Chain())
    async with trio.open_nursery() as nursery:
        await start_nodes(nursery, node)
        up = await start_upstream(nursery, [node.url])
        update = await next_update(up)
        assert update.node == node.url
        assert update.templates[0].height == 1 and update.templates[0].parents[0] == GENESIS
        st = up.status()
        assert st.connected == node.url
        assert st.template_height == 1 and st.template_age == 0
        assert st.nodes[0].state == "connected"
        assert st.nodes[0].ws_url == f"ws://127.0.0.1:{node.port}/v1a/mining_ws"
        assert st.counters["connects"] == 1 and st.counters["reconnects"] == 0
        await trio.sleep(7)
        assert up.status().template_age == pytest.approx(7)
        nursery.cancel_scope.cancel()


async def test_accepted_then_duplicate_is_stale(autojump_clock):
    chain = Chain()
    node = FakeNode(chain)
    async with trio.open_nursery() as nursery:
        await start_nodes(nursery, node)
        up = await start_upstream(nursery, [node.url], optimistic="off")
        first = await next_update(up)
        struct, block_hash = mine(first.templates[0])
        out = await up.submit(struct, block_hash=block_hash)
        assert (out.status, out.node, out.reason) == ("accepted", node.url, "node answered true")
        await wait_for(lambda: up.templates.current.templates[0].parents[0] == block_hash)
        assert up.templates.current.templates[0].height == 2
        again = await up.submit(struct, block_hash=block_hash)
        assert (again.status, again.reason) == ("stale", "node answered false (not the tip)")
        assert [s.optimistic for s in node.submits] == [False, False]
        c = up.status().counters
        assert (c["blocks_submitted"], c["blocks_accepted"], c["blocks_stale"]) == (2, 1, 1)
        nursery.cancel_scope.cancel()


async def test_invalid_block_fatal_error_reconnects_and_reports_rejected(autojump_clock):
    chain = Chain()
    node = FakeNode(chain)
    async with trio.open_nursery() as nursery:
        await start_nodes(nursery, node)
        up = await start_upstream(nursery, [node.url], optimistic="off")
        update = await next_update(up)
        struct, block_hash = mine(update.templates[0], valid=False)
        out = await up.submit(struct, block_hash=block_hash)
        assert out.status == "rejected"
        assert "Internal error (-32603)" in out.reason and "did not become the tip" in out.reason
        assert node.connections == 2  # the node closed; the upstream came back to learn the fate
        st = up.status()
        assert st.connected == node.url
        assert st.nodes[0].consecutive_failures == 0 and st.nodes[0].optimistic_supported is None
        assert st.counters["reconnects"] == 1 and st.counters["failovers"] == 0
        assert st.counters["blocks_rejected"] == 1
        # The connection still works.
        struct, block_hash = mine(update.templates[0])
        assert (await up.submit(struct, block_hash=block_hash)).status == "accepted"
        nursery.cancel_scope.cancel()


async def test_auto_optimistic_on_a_broken_node_learns_the_fate_and_stops_asking(autojump_clock, caplog):
    chain = Chain()
    node = FakeNode(chain, optimistic="broken")
    async with trio.open_nursery() as nursery:
        await start_nodes(nursery, node)
        up = await start_upstream(nursery, [node.url], optimistic="auto")
        update = await next_update(up)
        struct, block_hash = mine(update.templates[0])
        out = await up.submit(struct, block_hash=block_hash)
        # Stored, then the fatal error and a close: the next template shows our block as the tip.
        assert out.status == "accepted" and "is this block" in out.reason
        assert node.submits[0].optimistic is True and node.connections == 2
        assert up.status().nodes[0].optimistic_supported is False
        assert any("optimistic mode is broken" in r.getMessage() for r in caplog.records)

        update = up.templates.current
        assert update is not None and update.templates[0].parents[0] == block_hash
        struct, block_hash = mine(update.templates[0])
        out = await up.submit(struct, block_hash=block_hash)
        assert (out.status, out.reason) == ("accepted", "node answered true")
        assert [s.optimistic for s in node.submits] == [True, False]
        assert node.connections == 2
        nursery.cancel_scope.cancel()


async def test_auto_optimistic_on_a_working_node_publishes_the_template_it_returns(autojump_clock):
    chain = Chain()
    node = FakeNode(chain, optimistic="works")
    node.notify_changes = False  # so the new template can only come from the submit result
    async with trio.open_nursery() as nursery:
        await start_nodes(nursery, node)
        up = await start_upstream(nursery, [node.url], optimistic="auto")
        update = await next_update(up)
        struct, block_hash = mine(update.templates[0])
        out = await up.submit(struct, block_hash=block_hash)
        assert out.status == "accepted" and "optimistic" in out.reason
        current = up.templates.current
        assert current is not None and current.templates[0].parents[0] == block_hash
        assert up.status().nodes[0].optimistic_supported is True
        struct, block_hash = mine(current.templates[0])
        assert (await up.submit(struct, block_hash=block_hash)).status == "accepted"
        assert [s.optimistic for s in node.submits] == [True, True]
        assert node.connections == 1
        nursery.cancel_scope.cancel()


async def test_optimistic_on_keeps_asking_and_learns_each_fate(autojump_clock):
    chain = Chain()
    node = FakeNode(chain, optimistic="broken")
    async with trio.open_nursery() as nursery:
        await start_nodes(nursery, node)
        up = await start_upstream(nursery, [node.url], optimistic="on")
        await next_update(up)
        for _ in range(2):
            update = up.templates.current
            assert update is not None
            struct, block_hash = mine(update.templates[0])
            out = await up.submit(struct, block_hash=block_hash)
            assert out.status == "accepted" and "is this block" in out.reason
        assert [s.optimistic for s in node.submits] == [True, True]
        assert node.connections == 3
        assert chain.height == 3
        nursery.cancel_scope.cancel()


async def test_unknown_submit_answer_time_out_then_fate_is_learned(autojump_clock, caplog):
    chain = Chain()
    node = FakeNode(chain)
    node.answer_submits = False  # stores the block, never answers
    async with trio.open_nursery() as nursery:
        await start_nodes(nursery, node)
        up = await start_upstream(nursery, [node.url], optimistic="off")
        update = await next_update(up)
        struct, block_hash = mine(update.templates[0])
        start = trio.current_time()
        out = await up.submit(struct, block_hash=block_hash)
        assert out.status == "error" and "no answer within 15s" in out.reason
        assert trio.current_time() - start == pytest.approx(15)
        assert up.status().counters["submit_timeouts"] == 1
        # The connection drops; the block waits for the next template's verdict.
        node.stop()
        await wait_for(lambda: up.status().connected is None)
        node.answer_submits = True
        await start_nodes(nursery, node)
        await wait_for(lambda: up.status().counters["blocks_accepted"] == 1)
        assert len(node.submits) == 1  # judged from the tip, not sent again
        assert any(
            block_hash.hex() in r.getMessage() and "accepted" in r.getMessage() for r in caplog.records
        )
        nursery.cancel_scope.cancel()


# ---- blocks found while no node is usable -----------------------------------------------------


async def _found_while_down(change_chain) -> tuple[FakeNode, MiningUpstream, object]:
    """Mine on the current template, stop the node, submit, let ``change_chain`` act, restart."""
    chain = Chain()
    node = FakeNode(chain)
    outcome = []
    async with trio.open_nursery() as nursery:
        await start_nodes(nursery, node)
        up = await start_upstream(nursery, [node.url], optimistic="off", submit_timeout=60)
        update = await next_update(up)
        struct, block_hash = mine(update.templates[0])
        node.stop()
        await wait_for(lambda: up.status().connected is None)

        async def submit():
            outcome.append(await up.submit(struct, block_hash=block_hash))

        nursery.start_soon(submit)
        await wait_for(lambda: up.status().queued_blocks == 1)
        assert up.status().counters["blocks_queued"] == 1
        change_chain(chain, struct)
        await trio.sleep(3)
        assert not outcome
        await start_nodes(nursery, node)
        await wait_for(lambda: bool(outcome))
        nursery.cancel_scope.cancel()
    return node, up, outcome[0]


async def test_block_found_while_disconnected_is_submitted_on_reconnect(autojump_clock):
    node, up, out = await _found_while_down(lambda chain, struct: None)
    assert (out.status, out.reason) == ("accepted", "node answered true")
    assert len(node.submits) == 1 and node.chain.height == 2
    assert up.status().queued_blocks == 0


async def test_block_found_while_disconnected_is_stale_when_the_tip_moved(autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="miningproxy.upstream")
    node, up, out = await _found_while_down(lambda chain, struct: chain.advance())
    assert out.status == "stale" and "no longer the tip" in out.reason
    assert node.submits == []  # judged locally, never sent
    assert up.status().counters["blocks_stale"] == 1
    stale_logs = [r for r in caplog.records if r.name == "miningproxy.upstream" and "stale" in r.getMessage()]
    assert stale_logs and stale_logs[0].levelno == logging.WARNING


async def test_block_found_while_disconnected_already_the_tip_is_accepted(autojump_clock):
    node, up, out = await _found_while_down(lambda chain, struct: chain.submit(struct))
    assert out.status == "accepted" and "is this block" in out.reason
    assert node.submits == []


async def test_queue_is_bounded_and_overflow_is_reported(autojump_clock):
    node = FakeNode(Chain())
    outcomes: list = []
    async with trio.open_nursery() as nursery:
        await start_nodes(nursery, node)
        up = await start_upstream(nursery, [node.url], queue_max=2, submit_timeout=100)
        update = await next_update(up)
        node.stop()
        await wait_for(lambda: up.status().connected is None)
        block = update.templates[0].data_block
        for nonce in range(3):
            nursery.start_soon(_collect, up, block.struct(nonce), block.hash(nonce), outcomes)
            await trio.sleep(1)
        assert len(outcomes) == 1 and outcomes[0].status == "error" and "queue is full" in outcomes[0].reason
        st = up.status()
        assert st.queued_blocks == 2 and st.counters["blocks_dropped"] == 1
        nursery.cancel_scope.cancel()


async def _collect(up: MiningUpstream, struct: bytes, block_hash: bytes, out: list) -> None:
    out.append(await up.submit(struct, block_hash=block_hash))


async def test_not_a_block_is_an_error_outcome(autojump_clock):
    up = MiningUpstream(["http://127.0.0.1:9/v1a/"], **FAST)
    out = await up.submit(b"\x00\x01", block_hash=bytes(32))
    assert out.status == "error" and "not a block" in out.reason
    with pytest.raises(ValueError, match="32 bytes"):
        await up.submit(b"", block_hash=b"short")


async def test_enqueue_with_the_parent_given_does_not_parse_the_block(autojump_clock, monkeypatch):
    def no_parsing(struct):
        raise AssertionError("parse_block called")

    update = TemplateUpdate("x", (BlockTemplate.from_json(Chain().template()),), 0.0)
    struct, block_hash = mine(update.templates[0])
    monkeypatch.setattr(mining, "parse_block", no_parsing)
    up = MiningUpstream(["http://127.0.0.1:9/v1a/"], **FAST)
    blk = up.enqueue(struct, block_hash=block_hash, parent=GENESIS)  # no node: queued
    assert blk.parent == GENESIS and not blk.done.is_set()
    st = up.status()
    assert st.queued_blocks == 1 and st.counters["blocks_queued"] == 1
    with pytest.raises(ValueError, match="parent must be 32 bytes"):
        up.enqueue(struct, block_hash=block_hash, parent=b"short")
    monkeypatch.undo()
    assert up.enqueue(struct, block_hash=block_hash).parent == GENESIS  # parsed
    done = up.enqueue(b"\x00\x01", block_hash=bytes(32))  # not a block: decided at once
    assert done.done.is_set() and done.outcome.status == "error" and up.status().queued_blocks == 2
    assert (await up.outcome(done)).status == "error"


async def test_enqueue_to_an_idle_node_writes_in_the_same_step(autojump_clock, write_path):
    chain = Chain()
    node = FakeNode(chain)
    async with trio.open_nursery() as nursery:
        await start_nodes(nursery, node)
        up = await start_upstream(nursery, [node.url], optimistic="off")
        update = await next_update(up)
        struct, block_hash = mine(update.templates[0])
        blk = up.enqueue(struct, block_hash=block_hash, parent=GENESIS)
        st = up.status()  # no checkpoint since enqueue()
        if write_path == "direct":
            assert st.queued_blocks == 0 and st.counters["blocks_submitted"] == 1
        else:
            assert st.queued_blocks == 1 and st.counters["blocks_submitted"] == 0
        out = await up.outcome(blk)
        assert (out.status, out.reason) == ("accepted", "node answered true")
        assert len(node.submits) == 1 and chain.tip == block_hash
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("size", [0, 5, 125, 126, 1000, 65535, 65536, 70000])
def test_masked_text_frame_is_the_frame_wsproto_writes_and_reads(size):
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request, TextMessage

    client, server = WSConnection(ConnectionType.CLIENT), WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="node", target="/v1a/mining_ws")))
    list(server.events())
    client.receive_data(server.send(AcceptConnection()))
    list(client.events())
    text = ("é" * size)[: size // 2] + "x" * (size - 2 * (size // 2))  # `size` bytes, not all ASCII
    frame = mining.masked_text_frame(text, b"\x01\x02\x03\x04")
    theirs = client.send(TextMessage(data=text))  # their own random key
    header = len(theirs) - size - 4
    assert frame[:header] == theirs[:header] and len(frame) == len(theirs)
    assert frame[header : header + 4] == b"\x01\x02\x03\x04"
    server.receive_data(frame)
    events = list(server.events())
    assert "".join(e.data for e in events) == text and events[-1].message_finished


async def test_direct_writes_use_the_lean_frame(autojump_clock, monkeypatch, write_path):
    chain = Chain()
    node = FakeNode(chain)
    frames = []

    def counting(text, key):
        frames.append(text)
        return real(text, key)

    real = mining.masked_text_frame
    monkeypatch.setattr(mining, "masked_text_frame", counting)
    async with trio.open_nursery() as nursery:
        await start_nodes(nursery, node)
        up = await start_upstream(nursery, [node.url], optimistic="off")
        update = await next_update(up)
        assert mining._plain_frames(up._conn.ws._wsproto)  # trio-websocket negotiates no extension
        struct, block_hash = mine(update.templates[0])
        out = await up.outcome(up.enqueue(struct, block_hash=block_hash, parent=GENESIS))
        assert out.status == "accepted" and [s.hexdata for s in node.submits] == [struct.hex()]
        assert len(frames) == (1 if write_path == "direct" else 0)
        nursery.cancel_scope.cancel()


async def test_blocks_enqueued_together_are_sent_in_order(autojump_clock):
    chain = Chain()
    node = FakeNode(chain)
    async with trio.open_nursery() as nursery:
        await start_nodes(nursery, node)
        up = await start_upstream(nursery, [node.url], optimistic="off")
        update = await next_update(up)
        block = update.templates[0].data_block
        nonces = [n for n in range(64) if check_pow(block.hash(n), block.weight)][:3]
        blocks = [up.enqueue(block.struct(n), block_hash=block.hash(n), parent=GENESIS) for n in nonces]
        outcomes = [await up.outcome(b) for b in blocks]
        assert [s.hexdata for s in node.submits] == [block.struct(n).hex() for n in nonces]
        assert [o.status for o in outcomes] == ["accepted", "stale", "stale"]  # the first moved the tip
        nursery.cancel_scope.cancel()


async def test_a_failed_direct_write_ends_the_connection_and_the_block_is_resent(
    autojump_clock, monkeypatch, write_path
):
    chain = Chain()
    node = FakeNode(chain)
    real_write, calls = mining.os.write, []

    def failing_write(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            raise BrokenPipeError(32, "Broken pipe")
        return real_write(fd, data)

    async with trio.open_nursery() as nursery:
        await start_nodes(nursery, node)
        up = await start_upstream(nursery, [node.url], optimistic="off")
        update = await next_update(up)
        struct, block_hash = mine(update.templates[0])
        monkeypatch.setattr(mining.os, "write", failing_write)
        blk = up.enqueue(struct, block_hash=block_hash, parent=GENESIS)
        out = await up.outcome(blk)
        monkeypatch.undo()
        assert bool(calls) == (write_path == "direct")
        if calls:
            assert node.connections == 2  # the write failed: reconnected, judged, sent again
            assert "Broken pipe" in (up.status().nodes[0].last_error or "")
        assert (out.status, out.reason) == ("accepted", "node answered true")
        assert len(node.submits) == 1 and chain.tip == block_hash
        nursery.cancel_scope.cancel()


# ---- several nodes ----------------------------------------------------------------------------


async def test_failover_to_the_second_node_when_the_first_dies(autojump_clock):
    chain = Chain()
    a, b = FakeNode(chain), FakeNode(chain)
    async with trio.open_nursery() as nursery:
        await start_nodes(nursery, a, b)
        up = await start_upstream(nursery, [a.url, b.url], optimistic="off")
        update = await next_update(up)
        assert update.node == a.url
        assert b.connections == 0  # one connection at a time
        struct, block_hash = mine(update.templates[0])
        a.stop()
        out = await up.submit(struct, block_hash=block_hash)  # found during the switch: not lost
        assert out.status == "accepted" and out.node == b.url
        st = up.status()
        assert st.connected == b.url and st.counters["failovers"] == 1
        assert st.nodes[0].state in ("backoff", "probing", "idle") and st.nodes[0].last_error
        assert up.templates.current is not None and up.templates.current.node == b.url
        nursery.cancel_scope.cancel()


async def test_failover_when_the_node_sends_no_template(autojump_clock):
    chain = Chain()
    a, b = FakeNode(chain), FakeNode(chain)
    a.silent = True
    async with trio.open_nursery() as nursery:
        await start_nodes(nursery, a, b)
        start = trio.current_time()
        up = await start_upstream(nursery, [a.url, b.url], template_timeout=30, refresh_timeout=5)
        update = await next_update(up)
        assert update.node == b.url
        assert trio.current_time() - start == pytest.approx(35)  # template_timeout + refresh_timeout
        st = up.status()
        assert st.counters["template_timeouts"] == 1 and st.counters["refreshes"] == 1
        assert "no template for 30s" in st.nodes[0].last_error
        nursery.cancel_scope.cancel()


async def test_a_quiet_node_that_answers_refresh_is_kept(autojump_clock):
    node = FakeNode(Chain())
    node.notify_changes = False
    async with trio.open_nursery() as nursery:
        await start_nodes(nursery, node)
        up = await start_upstream(nursery, [node.url], template_timeout=30)
        await next_update(up)
        node.chain.advance()  # not pushed: only a refresh reveals it
        update = await next_update(up, 1)
        assert update.templates[0].height == 2
        await trio.sleep(200)
        st = up.status()
        assert st.connected == node.url and node.connections == 1
        assert st.counters["template_timeouts"] == 0 and st.counters["refreshes"] >= 6
        assert up.templates.version == 2  # refreshes with unchanged templates publish nothing
        nursery.cancel_scope.cancel()


async def test_fail_back_once_the_preferred_node_is_healthy_for_failback_after(autojump_clock):
    chain = Chain()
    a, b = FakeNode(chain), FakeNode(chain)
    async with trio.open_nursery() as nursery:
        await start_nodes(nursery, a, b)
        a.stop()  # keep its port, be down
        up = await start_upstream(nursery, [a.url, b.url], failback_after=20, backoff_max=8)
        assert (await next_update(up)).node == b.url
        await trio.sleep(30)
        # A flap shorter than failback_after does not move us.
        await start_nodes(nursery, a)
        await trio.sleep(10)
        a.stop()
        await trio.sleep(30)
        assert up.status().connected == b.url and up.status().counters["failbacks"] == 0
        # Up for good: back to it after failback_after (plus at most one backoff before the probe).
        await start_nodes(nursery, a)
        back_up = trio.current_time()
        await wait_for(lambda: up.status().connected == a.url)
        assert 20 <= trio.current_time() - back_up <= 20 + 8 + 1
        st = up.status()
        assert st.counters["failbacks"] == 1 and st.counters["failovers"] == 0
        assert st.nodes[1].state == "idle" and b.open_connections == 0
        assert up.templates.current is not None and up.templates.current.node == a.url
        nursery.cancel_scope.cancel()


async def test_backoff_grows_is_capped_and_jittered(autojump_clock):
    node = FakeNode(Chain())
    node.reject_handshake = True
    async with trio.open_nursery() as nursery:
        await start_nodes(nursery, node)
        up = await start_upstream(
            nursery, [node.url], backoff_initial=1, backoff_max=8, jitter=0.5, rng=random.Random(7)
        )
        await wait_for(lambda: len(node.handshake_attempts) >= 8)
        st = up.status()
        assert st.connected is None and st.nodes[0].state in ("backoff", "connecting")
        assert st.nodes[0].last_error == "websocket handshake rejected with HTTP 503"
        assert st.nodes[0].consecutive_failures >= 7
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in itertools.pairwise(node.handshake_attempts[:8])]
    ref = random.Random(7)
    expected = [min(8.0, 2.0**i) * (1 - 0.5 * ref.random()) for i in range(7)]
    assert gaps == pytest.approx(expected)
    for i, gap in enumerate(gaps):
        base = min(8.0, 2.0**i)
        assert base / 2 <= gap <= base


def test_backoff_delay_bounds():
    up = MiningUpstream(
        ["http://h/v1a/"], backoff_initial=0.5, backoff_max=30, jitter=0.25, rng=random.Random(3)
    )
    for failures in list(range(1, 12)) + [1000, 10**6]:
        base = min(30.0, 0.5 * 2 ** min(failures - 1, 64))
        for _ in range(20):
            assert 0.75 * base <= up.backoff_delay(failures) <= base
    no_jitter = MiningUpstream(["http://h/v1a/"], backoff_initial=1, backoff_max=10, jitter=0)
    assert [no_jitter.backoff_delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


# ---- lifecycle --------------------------------------------------------------------------------


async def test_cancel_closes_the_connection_and_resolves_queued_blocks(autojump_clock):
    node = FakeNode(Chain())
    outcomes: list = []
    async with trio.open_nursery() as outer:
        await start_nodes(outer, node)
        async with trio.open_nursery() as nursery:
            up = await start_upstream(nursery, [node.url], submit_timeout=100)
            update = await next_update(up)
            assert node.open_connections == 1
            node.answer_submits = False
            struct, block_hash = mine(update.templates[0])
            outer.start_soon(_collect, up, struct, block_hash, outcomes)
            await wait_for(lambda: len(node.submits) == 1)
            nursery.cancel_scope.cancel()
        await wait_for(lambda: bool(outcomes) and node.open_connections == 0)
        assert outcomes[0].status == "error" and "stopped" in outcomes[0].reason
        assert up.status().connected is None
        outer.cancel_scope.cancel()


def test_constructor_rejects_bad_settings():
    with pytest.raises(ValueError, match="at least one"):
        MiningUpstream([])
    with pytest.raises(ValueError, match="ftp://x"):
        MiningUpstream(["ftp://x/"])
    with pytest.raises(ValueError, match="distinct"):
        MiningUpstream(["http://a/", "http://a/"])
    with pytest.raises(ValueError, match="optimistic"):
        MiningUpstream(["http://a/"], optimistic="maybe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="template_timeout"):
        MiningUpstream(["http://a/"], template_timeout=0)
    with pytest.raises(ValueError, match="backoff_max"):
        MiningUpstream(["http://a/"], backoff_initial=5, backoff_max=1)


async def test_status_before_run():
    up = MiningUpstream(["http://a:1/v1a/", "http://b:2/v1a/"])
    st = up.status()
    assert st.connected is None and st.template_age is None and st.template_height is None
    assert [n.state for n in st.nodes] == ["idle", "idle"]
    assert [n.ws_url for n in st.nodes] == ["ws://a:1/v1a/mining_ws", "ws://b:2/v1a/mining_ws"]
    assert set(st.counters) >= {"reconnects", "failovers", "blocks_queued", "blocks_stale"}
