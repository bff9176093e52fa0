"""The read hub: one task reads every plain-TCP rig socket; one rig's trouble stays its own."""

from __future__ import annotations

import socket

import pytest
import trio

from miningproxy.stratum.readhub import ReadHub
from miningproxy.stratum.session import Session
from tests.test_stratum_server import Client, solve, start, wait_for


def _pairs(n: int) -> list[tuple[socket.socket, socket.socket]]:
    pairs = [socket.socketpair() for _ in range(n)]
    for ours, _ in pairs:
        ours.setblocking(False)
    return pairs


async def test_every_ready_socket_is_read_even_beyond_one_batch():
    pairs = _pairs(10)
    got: dict[int, bytes] = {}
    hub = ReadHub(batch=3)  # 10 ready sockets: several batches, checkpoints between them
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        for i, (ours, _) in enumerate(pairs):
            hub.add(
                ours.fileno(), lambda i=i, s=ours: got.__setitem__(i, got.get(i, b"") + s.recv(100)), print
            )
        for i, (_, theirs) in enumerate(pairs):
            theirs.send(b"hello %d" % i)
        with trio.fail_after(5):
            while len(got) < 10:
                await trio.sleep(0.01)
        assert got == {i: b"hello %d" % i for i in range(10)}
        hub.remove(pairs[0][0].fileno())
        pairs[0][1].send(b"more")
        pairs[1][1].send(b"more")
        with trio.fail_after(5):
            while got[1] != b"hello 1more":
                await trio.sleep(0.01)
        assert got[0] == b"hello 0"  # removed: never read again
        assert len(hub) == 9
        nursery.cancel_scope.cancel()


async def test_a_failing_callback_is_reported_to_its_owner_and_the_others_are_served():
    (bad, bad_peer), (good, good_peer) = _pairs(2)
    errors: list[BaseException] = []
    served: list[bytes] = []

    def explode() -> None:
        bad.recv(100)
        raise ValueError("a bug in one connection's handling")

    hub = ReadHub()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        hub.add(bad.fileno(), explode, errors.append)
        hub.add(good.fileno(), lambda: served.append(good.recv(100)), errors.append)
        bad_peer.send(b"x")
        good_peer.send(b"y")
        with trio.fail_after(5):
            while not (errors and served):
                await trio.sleep(0.01)
        assert isinstance(errors[0], ValueError)
        good_peer.send(b"z")
        with trio.fail_after(5):
            while len(served) < 2:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def test_when_the_hub_stops_every_registered_owner_is_told():
    ((ours, _),) = _pairs(1)
    told: list[BaseException] = []
    hub = ReadHub()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        hub.add(ours.fileno(), lambda: None, told.append)
        nursery.cancel_scope.cancel()
    assert len(told) == 1 and isinstance(told[0], trio.ClosedResourceError)
    assert not hub.running
    with pytest.raises(RuntimeError):
        hub.add(ours.fileno(), lambda: None, told.append)


async def test_a_bug_handling_one_rigs_line_closes_that_rig_only(monkeypatch):
    original = Session._message

    def message(self, message, now):
        if message.get("method") == "boom":
            raise RuntimeError("a bug")
        return original(self, message, now)

    monkeypatch.setattr(Session, "_message", message)
    async with trio.open_nursery() as nursery:
        h = await start(nursery)
        good = await Client.connect(h.port)
        job = await good.subscribe()
        bad = await Client.connect(h.port)
        await bad.subscribe()
        await bad.send(b'{"id": 9, "method": "boom"}\n')
        seen = []
        while (line := await bad.line()) is not None:
            seen.append(line)
        assert not [line for line in seen if line.get("id") == 9]  # closed by the bug, unanswered
        await wait_for(lambda: h.server.connections == 1)
        nonce = solve(bytes.fromhex(job["data"]), 4.0)
        reply = await good.call("submit", {"job_id": job["job_id"], "nonce": f"{nonce:032x}"})
        assert reply["result"] == "ok"
        nursery.cancel_scope.cancel()


async def test_a_rig_closing_its_side_ends_its_connection_and_frees_its_registration():
    async with trio.open_nursery() as nursery:
        h = await start(nursery)
        rigs = [await Client.connect(h.port) for _ in range(5)]
        for rig in rigs:
            await rig.subscribe()
        assert len(h.server._hub) == 5
        for rig in rigs[:3]:
            await rig.stream.aclose()
        await wait_for(lambda: h.server.connections == 2)
        assert len(h.server._hub) == 2
        nursery.cancel_scope.cancel()


async def test_actions_deferred_by_callbacks_run_after_the_whole_batch_of_reads():
    pairs = _pairs(4)
    log: list[str] = []
    errors: list[tuple[int, BaseException]] = []
    hub = ReadHub(batch=8)

    def readable(i: int, sock: socket.socket) -> None:
        sock.recv(100)
        log.append(f"read {i}")

        def reply() -> None:
            log.append(f"reply {i}")
            if i == 2:
                raise ValueError("a bug in one connection's reply")

        hub.after_batch(reply, lambda exc: errors.append((i, exc)))

    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        for _, theirs in pairs:  # all four ready before the hub wakes: one batch
            theirs.send(b"x")
        for i, (ours, _) in enumerate(pairs):
            hub.add(ours.fileno(), lambda i=i, s=ours: readable(i, s), print)
        with trio.fail_after(5):
            while len(log) < 8:
                await trio.sleep(0.01)
        reads = [entry for entry in log if entry.startswith("read")]
        assert log[:4] == reads and sorted(log[4:]) == [f"reply {i}" for i in range(4)]
        # One reply's exception goes to its owner; the replies after it still ran.
        assert [(i, str(exc)) for i, exc in errors] == [(2, "a bug in one connection's reply")]
        nursery.cancel_scope.cancel()
