"""Fan-out: bounded per-client outboxes, latest-value frames, slow clients cut off, nobody else hurt."""

from __future__ import annotations

import pytest
import trio
import trio_websocket

from miningproxy.api.fanout import CLOSE_POLICY, ClientRegistry, ClientTooSlow, Outbox, cut_off, write_outbox
from tests.test_admin_ws import eventually, start_stack
from tests.test_devnode_admin import recv


async def test_outbox_is_fifo_with_latest_value_slots():
    box = Outbox(4)
    box.put("a")
    box.put_latest("tick", "t1")
    box.put("b")
    box.put_latest("tick", "t2")  # replaces t1 where it waits
    assert len(box) == 3 and box.room == 1
    assert [await box.get() for _ in range(3)] == ["a", "t2", "b"]
    box.put_latest("tick", "t3")  # a new slot once the old one was sent
    assert await box.get() == "t3"


async def test_pong_jumps_the_queue():
    box = Outbox(4)
    box.put("a")
    box.put("b")
    box.put_first("pong")
    assert [await box.get() for _ in range(3)] == ["pong", "a", "b"]


async def test_outbox_overflow_cuts_the_client_with_a_reason():
    box = Outbox(2)
    assert box.put("a") and box.put("b")
    assert not box.put("c")
    assert box.cut.is_set()
    assert box.overflow == "too slow: 2 messages waiting (the client is not reading)"
    assert not box.put_latest("tick", "t")  # nothing more is accepted


def test_outbox_limit_must_be_sane():
    with pytest.raises(ValueError):
        Outbox(1)


class StuckWebSocket:
    """A client whose sends never complete (its TCP window is closed)."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.closed: tuple[int, str | None] | None = None

    async def send_message(self, text: str) -> None:
        if self.sent:
            await trio.sleep_forever()
        self.sent.append(text)

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed = (code, reason)
        await trio.sleep_forever()  # it will not answer the close handshake either


async def test_a_send_blocked_past_the_timeout_cuts_the_client(autojump_clock):
    ws = StuckWebSocket()
    box = Outbox(8)
    box.put("first")
    box.put("second")
    with pytest.raises(ClientTooSlow, match="a send blocked for 3s"):
        await write_outbox(ws, box, send_timeout=3.0)  # type: ignore[arg-type]
    assert ws.sent == ["first"]
    start = trio.current_time()
    await cut_off(ws, box.overflow or "")  # type: ignore[arg-type]
    assert ws.closed == (CLOSE_POLICY, "too slow: a send blocked for 3s (the client is not reading)")
    assert trio.current_time() - start <= 1.0  # not waiting for a client that does not read


def test_registry_counts_first_and_last_subscribers():
    class Client:
        def __init__(self) -> None:
            self.outbox = Outbox(4)

    registry: ClientRegistry[Client] = ClientRegistry()
    a, b = Client(), Client()
    registry.add(a)
    registry.add(b)
    assert registry.subscribe(a, "W1") is True
    assert registry.subscribe(b, "W1") is False
    assert registry.subscribe(a, "W2") is True
    assert registry.unsubscribe(a, "W1") is False  # b still has it
    assert registry.unsubscribe(a, "W1") is False  # not subscribed any more: nothing changes
    assert registry.to_address("W1", "x") == 1 and len(b.outbox) == 1 and len(a.outbox) == 0
    assert registry.remove(a) == ["W2"]
    assert registry.remove(b) == ["W1"]
    assert registry.by_address == {} and len(registry) == 0


async def _stuck_client(port: int) -> trio.SocketStream:
    """Open a websocket by hand, then never read from it again."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += await stream.receive_some(1)
    assert head.startswith(b"HTTP/1.1 101")
    return stream


async def test_a_client_that_never_reads_is_cut_off_and_others_are_unaffected(nursery):
    stack = await start_stack(nursery, outbox_limit=8, send_timeout=2.0, metrics_interval=3600)
    stuck = await _stuck_client(stack.port)
    big = "f" * 200_000
    async with trio_websocket.open_websocket_url(stack.url()) as ws:
        await recv(ws, "capabilities")
        await eventually(lambda: len(stack.admin.registry) == 2)
        for n in range(150):  # 30 MB: far more than the kernel buffers for the stuck client
            stack.admin._on_upstream({"type": "network:new_tx_accepted", "n": n, "pad": big})
            message = await recv(ws, "network:new_tx_accepted")
            assert message["n"] == n
            if len(stack.admin.registry) == 1:
                break
        await eventually(lambda: len(stack.admin.registry) == 1, timeout=10)
        # The reader that stayed gets everything that follows.
        stack.admin._on_upstream({"type": "network:new_tx_accepted", "n": "after"})
        assert (await recv(ws, "network:new_tx_accepted"))["n"] == "after"
    # The server closed the stuck client's connection: reading it now ends in EOF.
    with trio.fail_after(10):
        while await stuck.receive_some(1 << 20):
            pass
    await stuck.aclose()
