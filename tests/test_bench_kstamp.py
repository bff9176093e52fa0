"""The kernel timestamps behind figure 5 (bench/kstamp.py): real loopback sockets, real frames."""

from __future__ import annotations

import json
import socket
import time

import pytest
import trio
import trio_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Ping, Request, TextMessage

from bench import kstamp, report
from bench.fakenode import FakeNode

# CLOCK_REALTIME read by Python and by the kernel: allow for the clock's granularity.
SLACK = 0.001


@pytest.fixture
def pair():
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    yield client, server
    client.close()
    server.close()


def test_receive_stamp_is_the_moment_the_write_landed(pair) -> None:
    client, server = pair
    kstamp.enable_rx_stamps(server)
    client.sendall(b"warm-up")  # the stack starts stamping once some socket asked for it
    time.sleep(0.05)
    server.recvmsg(100, kstamp.ANCILLARY_SIZE)
    before = time.time()
    client.sendall(b"hello")
    after_send = time.time()
    time.sleep(0.05)  # the stamp is the write's, not this late read's
    data, ancdata, _, _ = server.recvmsg(100, kstamp.ANCILLARY_SIZE)
    stamp = kstamp.rx_stamp(ancdata)
    assert data == b"hello"
    assert stamp is not None
    assert before - SLACK <= stamp <= after_send + SLACK


def test_no_stamp_without_the_option(pair) -> None:
    client, server = pair
    client.sendall(b"x")
    _, ancdata, _, _ = server.recvmsg(100, kstamp.ANCILLARY_SIZE)
    assert kstamp.rx_stamp(ancdata) is None


def test_transmit_stamps_are_keyed_by_the_last_byte_of_each_send(pair) -> None:
    client, server = pair
    client.sendall(b"before")  # not counted: offsets start when stamping is turned on
    time.sleep(0.05)  # acknowledged (what offsets count from before Linux 6.2)
    kstamp.enable_tx_stamps(client)
    sends = []
    for payload in (b"a" * 10, b"b" * 25, b"c"):
        before = time.time()
        client.send(payload)
        sends.append((before, time.time()))
    stamps: list[tuple[int, float]] = []
    deadline = time.monotonic() + 2
    while len(stamps) < 3 and time.monotonic() < deadline:
        stamps += kstamp.read_tx_stamps(client)
    assert [key for key, _ in stamps] == [9, 34, 35]
    for (_, stamp), (before, after) in zip(stamps, sends, strict=True):
        assert before - SLACK <= stamp <= after + SLACK
    assert kstamp.read_tx_stamps(client) == []  # drained, and it does not block


def test_transmit_stamp_parsing_ignores_other_messages() -> None:
    assert kstamp.tx_stamp([]) is None
    stamp = b"".join(kstamp._TIMESPEC.pack(*v) for v in ((5, 250_000_000), (0, 0), (0, 0)))
    err = kstamp._EXTENDED_ERR.pack(42, kstamp.SO_EE_ORIGIN_TIMESTAMPING, 0, 0, 0, kstamp.SCM_TSTAMP_SND, 7)
    ip = (socket.IPPROTO_IP, kstamp.IP_RECVERR, err)
    assert kstamp.tx_stamp([(socket.SOL_SOCKET, kstamp.SO_TIMESTAMPING, stamp), ip]) == (7, 5.25)
    sched = kstamp._EXTENDED_ERR.pack(42, kstamp.SO_EE_ORIGIN_TIMESTAMPING, 0, 0, 0, 1, 7)  # SCM_TSTAMP_SCHED
    assert kstamp.tx_stamp([(socket.SOL_SOCKET, kstamp.SO_TIMESTAMPING, stamp), (0, 11, sched)]) is None


def _client_bytes(*messages: str | bytes | Ping) -> tuple[bytes, list[int]]:
    """A websocket client's handshake and frames (masked, as the proxy's are), and the payload sizes
    of the data messages."""
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    head = client.send(Request(host="node", target="/v1a/mining_ws"))
    server.receive_data(head)
    list(server.events())
    client.receive_data(server.send(AcceptConnection()))
    list(client.events())
    out, sizes = head, []
    for m in messages:
        if isinstance(m, Ping):
            out += client.send(m)
        elif isinstance(m, str):
            out += client.send(TextMessage(data=m))
            sizes.append(len(m.encode()))
        else:  # a text message in two fragments
            out += client.send(TextMessage(data=m[:3].decode(), message_finished=False))
            out += client.send(TextMessage(data=m[3:].decode()))
            sizes.append(len(m))
    return out, sizes


def test_message_stamps_follow_frames_across_any_split() -> None:
    messages = ["x" * 5, Ping(b"p"), "y" * 300, b"fragmented", "z" * 70_000, "é" * 3]
    data, sizes = _client_bytes(*messages)
    for step in (1, 7, 1000, len(data)):
        tracker = kstamp.WsMessageStamps()
        for n, at in enumerate(range(0, len(data), step)):
            tracker.feed(data[at : at + step], float(n))
        got = list(tracker.messages)
        assert [m.size for m in got] == sizes
        # Each message is stamped with the chunk holding its last byte.
        ends, total = [], 0
        for m in messages:
            frame, _ = _client_bytes(m)
            total += len(frame) - len(_client_bytes()[0])
            if not isinstance(m, Ping):
                ends.append(len(_client_bytes()[0]) + total - 1)
        assert [m.stamp for m in got] == [float(end // step) for end in ends]
        if step == len(data):
            assert [m.shared for m in got] == [True] * (len(sizes) - 1) + [False]


def test_message_stamps_ignore_plain_http() -> None:
    tracker = kstamp.WsMessageStamps()
    tracker.feed(b"GET /v1a/version HTTP/1.1\r\nHost: x\r\n\r\n\x81\x05hello", 1.0)
    assert not tracker.active
    assert not tracker.messages


async def test_fake_node_stamps_each_submit_with_the_kernel_time() -> None:
    node = FakeNode(block_weight=1.0)
    node.router.websocket("/v1a/mining_ws", node.mining_ws)
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(trio.serve_listeners, node.on_connection, listeners)
        port = listeners[0].socket.getsockname()[1]
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/v1a/mining_ws") as ws:
            await ws.get_message()  # the first mining.notify
            sent = []
            for i in range(3):
                request = {"id": i, "method": "mining.submit", "params": {"hexdata": f"{i:064x}"}}
                before = time.time()
                await ws.send_message(json.dumps(request))
                sent.append((before, time.time()))
                assert json.loads(await ws.get_message())["result"] is True
            await ws.send_message('{"id":9,"method":"submit","params":{"nonce":"ab"}}')  # a relayed line
            with trio.fail_after(5):
                while len(node.submits) < 4:
                    await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert node.unmatched == 0
    for (nonce, _, kernel, shared), (before, after), i in zip(node.submits, sent, range(3), strict=False):
        assert nonce == f"{i:032x}"
        assert before - SLACK <= kernel <= after + SLACK
        assert shared is False
    assert node.submits[3][0] == "ab".rjust(32, "0") and node.submits[3][2] is not None


def test_render_shows_both_measures() -> None:
    def stats(p99: float) -> dict:
        return {"p50": p99 / 2, "p90": p99, "p99": p99, "max": p99, "over_goal": 1, "sorted": [p99 / 2, p99]}

    result = {
        "samples": 2,
        "gap": 0.004,
        "chunks": 1,
        "measure": "kernel",
        "baseline": {**stats(0.001), "shared_stamps": 0, "rig_send_cost_p50": 1e-5},
        "proxy": {**stats(0.0015), "shared_stamps": 1, "rig_send_cost_p50": 1e-5},
        "ratio_p99": 1.5,
        "ratio_p50": 1.5,
        "end_to_end": {"baseline": stats(0.002), "proxy": stats(0.003), "ratio_p99": 1.5, "ratio_p50": 1.5},
    }
    rows = report.rows("submit_latency", result)
    assert [row[-1] for row in rows] == ["met", "-"]  # the goal is judged on the kernel measure only
    text = "\n".join(report._section_submit(result))
    assert "SO_TIMESTAMPNS" in text and "SO_TIMESTAMPING" in text
    assert text.count("| arrival -> written upstream |") == 2
    assert text.count("| into the node's application |") == 2
    assert "proxy 1" in text  # the shared stamps are counted
