"""The real trio Stratum server on loopback: raw TCP clients, a real PoolService, a fake upstream."""

from __future__ import annotations

import datetime
import json
import socket
import ssl
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from miningproxy.hathor.block import parse_block
from miningproxy.latest import LatestValue
from miningproxy.metrics import Metrics
from miningproxy.pool.service import PoolService, WorkSignal
from miningproxy.stratum.server import FAN_OUT_BATCH, StratumServer
from miningproxy.stratum.session import Session
from miningproxy.stratum.settings import BanSettings, VardiffSettings
from tests.hathor_vectors import PRIVATENET_ADDRESS
from tests.stream_support import receive_or_eof
from tests.test_stratum_support import OTHER_TIP, PRIVATENET, TEMPLATES, miss, settings, solve

TIMEOUT = 5.0


class FakeUpstream:
    def __init__(self) -> None:
        self.templates: LatestValue[Any] = LatestValue()
        self.submitted: list[tuple[bytes, bytes]] = []

    def push(self, template) -> None:
        self.templates.publish(
            SimpleNamespace(node="node-a", templates=[template], received_at=trio.current_time())
        )

    async def submit(self, struct: bytes, *, block_hash: bytes, **_: Any) -> Any:
        self.submitted.append((struct, block_hash))
        return SimpleNamespace(status="accepted", reason="", node="node-a")


class Harness:
    def __init__(
        self, upstream: FakeUpstream, pool: PoolService, server: StratumServer, metrics: Metrics
    ) -> None:
        self.upstream, self.pool, self.server, self.metrics = upstream, pool, server, metrics

    @property
    def port(self) -> int:
        return self.server.ports[0]

    def metric(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)

    async def new_tip(self, template=OTHER_TIP) -> None:
        self.upstream.push(template)
        with trio.fail_after(TIMEOUT):
            while self.pool.tip != template.parents[0]:
                await trio.sleep(0.005)


async def start(nursery: trio.Nursery, *, mode: str = "pool", **changes: Any) -> Harness:
    upstream = FakeUpstream()
    metrics = Metrics()
    pool = PoolService(
        upstream=upstream, address=PRIVATENET_ADDRESS, tag="t", job_refresh=300.0, metrics=metrics
    )
    await nursery.start(pool.run)
    upstream.push(TEMPLATES[0])
    with trio.fail_after(TIMEOUT):
        while pool.generation is None:
            await trio.sleep(0.005)
    changes.setdefault("get_version", False)
    server = StratumServer(pool, settings(**changes), PRIVATENET, metrics=metrics, payout_mode=mode)
    await nursery.start(server.run)
    return Harness(upstream, pool, server, metrics)


class Client:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = b""
        self.ids = iter(range(1, 1_000_000))
        self.jobs: list[dict[str, Any]] = []

    @classmethod
    async def connect(cls, port: int, *, local_address: str | None = None) -> Client:
        return cls(await trio.open_tcp_stream("127.0.0.1", port, local_address=local_address))

    async def send(self, message: dict[str, Any] | bytes) -> None:
        data = message if isinstance(message, bytes) else json.dumps(message).encode() + b"\n"
        await self.stream.send_all(data)

    async def line(self, timeout: float = TIMEOUT) -> dict[str, Any] | None:
        """The next line (None at EOF)."""
        with trio.fail_after(timeout):
            while b"\n" not in self.buffer:
                data = await receive_or_eof(self.stream)
                if not data:
                    return None
                self.buffer += data
        raw, self.buffer = self.buffer.split(b"\n", 1)
        message = json.loads(raw)
        if message.get("method") == "job":
            self.jobs.append(message["params"])
        return message

    async def call(self, method: str, params: Any, msgid: Any = None) -> dict[str, Any]:
        """Send a request; return its reply (jobs and other requests on the way are collected)."""
        msgid = next(self.ids) if msgid is None else msgid
        await self.send({"jsonrpc": "2.0", "id": msgid, "method": method, "params": params})
        while True:
            message = await self.line()
            assert message is not None, f"connection closed while waiting for the reply to {method}"
            if "method" not in message and message.get("id") == msgid:
                return message

    async def job(self) -> dict[str, Any]:
        while not self.jobs:
            message = await self.line()
            assert message is not None, "connection closed while waiting for a job"
        return self.jobs.pop(0)

    async def closed(self, timeout: float = TIMEOUT) -> bool:
        """True once the server closed the connection (lines before that are skipped)."""
        with trio.fail_after(timeout):
            while await self.line(timeout) is not None:
                pass
        return True

    async def subscribe(self, address: str | None = PRIVATENET_ADDRESS) -> dict[str, Any]:
        await self.send(
            {"jsonrpc": "2.0", "id": "sub", "method": "subscribe", "params": {"address": address}}
        )
        reply = await self.line()
        assert reply == {"result": "ok", "error": None, "id": "sub"}, reply  # the very next line
        return await self.job()

    async def aclose(self) -> None:
        await self.stream.aclose()


async def wait_for(predicate, timeout: float = TIMEOUT) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.005)


# --- a rig mines -----------------------------------------------------------------------------------


async def test_a_rig_mines_shares_and_its_block_goes_upstream():
    async with trio.open_nursery() as nursery:
        h = await start(nursery, get_version=True)
        rig = await Client.connect(h.port)
        job = await rig.subscribe()
        ask = await rig.line()
        assert ask["method"] == "client.get_version"
        await rig.send({"id": ask["id"], "result": "cpuminer/2.5.1", "error": None})
        header = bytes.fromhex(job["data"])
        assert job["weight"] == 4.0 and job["nonce_size"] == 16 and len(job["job_id"]) == 32
        # a share at the job's weight that is no block
        nonce = solve(header, 4.0)
        while solve(header, 8.0, nonce) == nonce:
            nonce = solve(header, 4.0, nonce + 1)
        assert await rig.call("submit", {"job_id": job["job_id"], "nonce": f"0x{nonce:x}"}) == {
            "result": "ok",
            "error": None,
            "id": 1,
        }
        # a share that meets the block weight (8) is a block: submitted upstream at once
        block_nonce = solve(header, 8.0)
        assert (await rig.call("mining.submit", {"job_id": job["job_id"], "nonce": f"{block_nonce:032x}"}))[
            "result"
        ] == "ok"
        await wait_for(lambda: h.upstream.submitted)
        struct, block_hash = h.upstream.submitted[0]
        block = parse_block(struct)
        assert block.nonce == block_nonce and block.outputs[0].script == h.pool.payout_script
        assert h.pool.blocks[0].hash == block_hash and h.pool.blocks[0].status in ("submitted", "accepted")
        assert h.metric("miningproxy_shares_total", result="accepted", reason="ok") == 2.0
        [status] = h.server.rigs()
        assert status["accepted"] == 2 and status["blocks"] == 1 and status["version"] == "cpuminer/2.5.1"
        await rig.aclose()
        nursery.cancel_scope.cancel()


async def test_invalid_shares_get_30_and_a_new_template_sends_clean_jobs_to_every_rig():
    async with trio.open_nursery() as nursery:
        h = await start(nursery)
        rigs = [await Client.connect(h.port) for _ in range(3)]
        first = [await rig.subscribe() for rig in rigs]
        header = bytes.fromhex(first[0]["data"])
        reply = await rigs[0].call(
            "submit", {"job_id": first[0]["job_id"], "nonce": f"{miss(header, 4.0):032x}"}
        )
        assert reply["error"]["code"] == 30 and set(reply["data"]) == {"hash", "target"}
        assert h.pool.consumers == 3
        await h.new_tip()
        for rig in rigs:
            job = await rig.job()
            assert job["clean"] is True and job["parent_hash"] == OTHER_TIP.parents[0].hex()
        # the pool's broadcast latency covers every rig: observed once all three jobs were written
        await wait_for(lambda: h.metric("miningproxy_job_broadcast_latency_seconds_count") == 1.0)
        stale = await rigs[1].call(
            "submit",
            {"job_id": first[1]["job_id"], "nonce": f"{solve(bytes.fromhex(first[1]['data']), 4.0):032x}"},
        )
        assert stale["error"]["code"] == 31
        nursery.cancel_scope.cancel()


# --- bad rigs never affect good ones --------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        b"this is not json\n",
        b"x" * 20000,
        b"\xff\xfe\xfd{}\n",
        b'{"id": 1, "method": "nope"}\n',
        b"[1,2,3]\n",
    ],
    ids=["not-json", "oversized", "not-utf8", "unknown-method", "not-an-object"],
)
async def test_garbage_from_one_rig_never_affects_another(garbage):
    async with trio.open_nursery() as nursery:
        h = await start(nursery)
        good = await Client.connect(h.port)
        job = await good.subscribe()
        bad = await Client.connect(h.port)
        await bad.subscribe()
        await bad.send(garbage)
        error = await bad.line()
        assert error["error"]["code"] <= -32600
        assert await bad.closed()
        nonce = solve(bytes.fromhex(job["data"]), 4.0)
        assert (await good.call("submit", {"job_id": job["job_id"], "nonce": f"{nonce:032x}"}))[
            "result"
        ] == "ok"
        await h.new_tip()
        assert (await good.job())["clean"] is True
        if garbage.startswith(b"x"):
            assert h.metric("miningproxy_stratum_limit_hits_total", limit="max_line") == 1.0
        nursery.cancel_scope.cancel()


async def test_a_rig_that_never_reads_is_cut_off_while_others_still_get_jobs():
    async with trio.open_nursery() as nursery:
        h = await start(nursery, send_timeout=0.5, max_outbox=8192)
        good = await Client.connect(h.port)
        await good.subscribe()
        deaf = await Client.connect(h.port)
        deaf.stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await deaf.subscribe()
        ping = b'{"id": 1, "method": "mining.ping", "params": []}\n' * 200

        async def flood() -> None:
            try:
                for _ in range(2000):  # up to 10 MB of pings, never reading a single pong
                    await deaf.stream.send_all(ping)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        nursery.start_soon(flood)
        await wait_for(lambda: h.server.connections == 1, timeout=10.0)
        hits = (h.metric("miningproxy_stratum_limit_hits_total", limit="max_outbox") or 0) + (
            h.metric("miningproxy_stratum_limit_hits_total", limit="send_timeout") or 0
        )
        assert hits == 1.0
        await h.new_tip()
        assert (await good.job())["clean"] is True
        nursery.cancel_scope.cancel()


async def test_a_new_tip_reaches_every_rig_of_a_fan_out_of_several_batches_once():
    """The fan-out builds a batch of jobs, then writes them: across batches, each rig gets one
    clean job for the new tip, unique to it, and the pool hears of every delivery (its broadcast
    latency is observed once, when the last rig has its job)."""
    count = 2 * FAN_OUT_BATCH + 7
    async with trio.open_nursery() as nursery:
        h = await start(nursery, max_per_ip=count)
        rigs = [await Client.connect(h.port) for _ in range(count)]
        for rig in rigs:
            await rig.subscribe()
        # The fan-out walks the rigs in connection order: the oldest get their jobs first.
        ports = [rig.stream.socket.getsockname()[1] for rig in rigs]
        assert [int(s.peer.rsplit(":", 1)[1]) for s in h.server.sessions()] == ports
        observed = h.metric("miningproxy_job_broadcast_latency_seconds_count") or 0.0
        notes: list[tuple[Any, int]] = []  # the server's delivery notes to the pool: (signal, rigs)
        tell_pool = h.server._job_delivered
        assert tell_pool is not None

        def note(signal: Any, rigs: int = 1) -> None:
            notes.append((signal, rigs))
            tell_pool(signal, rigs)

        h.server._job_delivered = note
        await h.new_tip()
        jobs = [await rig.job() for rig in rigs]
        assert all(job["clean"] is True and job["parent_hash"] == OTHER_TIP.parents[0].hex() for job in jobs)
        assert len({job["job_id"] for job in jobs}) == len({job["data"] for job in jobs}) == count
        await wait_for(lambda: h.metric("miningproxy_job_broadcast_latency_seconds_count") == observed + 1)
        # Every rig counted once: the notes (one per batch) add up to the rigs, all for the new tip.
        assert sum(rigs for _, rigs in notes) == count
        assert {signal.generation.tip for signal, _ in notes} == {OTHER_TIP.parents[0]}
        extra: list[Any] = []

        async def nothing_more(rig: Client) -> None:
            with trio.move_on_after(0.2):
                extra.append(await rig.line())

        async with trio.open_nursery() as quiet:
            for rig in rigs:
                quiet.start_soon(nothing_more, rig)
        assert extra == []
        nursery.cancel_scope.cancel()


async def test_a_share_read_before_the_fan_out_books_its_job_is_judged_on_that_job():
    """The fan-out writes every rig's job line first and books the jobs (the session's history,
    vardiff, the weight metric) after: a rig that answers its new job at once, before its job
    is booked, has its share judged on that job, and every job is booked once the fan-out ends."""
    async with trio.open_nursery() as nursery:
        h = await start(nursery)
        rigs = [await Client.connect(h.port) for _ in range(FAN_OUT_BATCH + 3)]
        for rig in rigs:
            await rig.subscribe()
        answered = trio.Event()
        book_jobs = h.server._book_jobs
        unbooked_when_answered: list[int] = []

        async def after_the_share(handed: list[Any]) -> None:
            await answered.wait()  # the booking pass waits for the rig's answer
            unbooked_when_answered.append(sum(s._unbooked is not None for s in h.server.sessions()))
            await book_jobs(handed)

        h.server._book_jobs = after_the_share  # type: ignore[method-assign]
        await h.new_tip()
        first = await rigs[0].job()
        nonce = solve(bytes.fromhex(first["data"]), first["weight"])
        reply = await rigs[0].call("submit", {"job_id": first["job_id"], "nonce": f"{nonce:032x}"})
        answered.set()
        assert reply["result"] == "ok", reply
        # Only the rig whose share was read had booked its job by then.
        await wait_for(lambda: unbooked_when_answered)
        assert unbooked_when_answered == [len(rigs) - 1]
        await wait_for(lambda: all(s._unbooked is None for s in h.server.sessions()))
        jobs = [first] + [await rig.job() for rig in rigs[1:]]
        for session, job in zip(h.server.sessions(), jobs, strict=True):
            assert session.current_job is not None and session.current_job.job_id == job["job_id"]
        [status] = [r for r in h.server.rigs() if r["accepted"]]
        assert status["accepted"] == 1
        nursery.cancel_scope.cancel()


async def test_a_job_the_socket_takes_in_part_is_finished_by_the_writer_then_reported():
    """The fan-out writes a rig's new job straight to its socket; when the socket takes only part
    of it, the writer task sends the rest, and only then is the pool told the job was delivered."""
    async with trio.open_nursery() as nursery:
        h = await start(nursery, send_timeout=30.0)
        rig = await Client.connect(h.port)
        rig.stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await rig.subscribe()
        [conn] = list(h.server._connections)
        notes: list[tuple[Any, int]] = []
        h.server._job_delivered = lambda signal, rigs=1: notes.append((signal, rigs))
        conn.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        filler = b" " * 512  # JSON may start with blanks: the rig reads them as the job's prefix
        while conn._send_now(filler) == len(filler):  # until the socket is full
            pass
        assert conn.writable_now()
        signal = SimpleNamespace(clean=True, seq=-1)
        line = conn.session.take_new_job(True, trio.current_time())
        assert line is not None
        assert conn.send_new_job(line, conn.session.last_job_taken, signal) is False  # not whole
        assert not conn.writable_now() and notes == []
        job = await rig.job()  # reading drains the socket: the writer finishes the line
        assert job["clean"] is True and job["job_id"] == conn.session.current_job.job_id
        await wait_for(lambda: notes == [(signal, 1)])
        nursery.cancel_scope.cancel()


async def test_a_rigs_descriptor_comes_from_its_own_socket_and_is_gone_once_closed():
    """Reads, writes and jobs take a plain-TCP rig's descriptor from the standard library's socket
    under trio's wrapper (a C call). It must be that very socket: once trio closes it, the
    descriptor reads -1, so a number the kernel hands to the next rig is never written to."""
    async with trio.open_nursery() as nursery:
        h = await start(nursery)
        rig = await Client.connect(h.port)
        await rig.subscribe()
        [conn] = list(h.server._connections)
        assert isinstance(conn._socket, socket.socket)  # not the fallback: trio's wrapper
        assert conn._socket.fileno() == conn.stream.socket.fileno() >= 0
        await conn.stream.aclose()
        assert conn._socket.fileno() == -1
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("state", ["writable", "writer busy", "bytes unsent", "ok held for the record"])
async def test_the_fan_out_hands_a_job_straight_over_only_when_the_connection_allows_it(state, monkeypatch):
    """The fan-out spells out writable_now() inline: it may take a rig's job for a direct write
    only in the states where writable_now() is true; otherwise the job is queued, and the rig
    still gets it (from the writer task)."""
    taken: list[bool] = []
    real = Session.take_new_job

    def take_new_job(session: Session, clean: bool, now: float) -> bytes | None:
        taken.append(conn.writable_now())
        return real(session, clean, now)

    async with trio.open_nursery() as nursery:
        h = await start(nursery)
        rig = await Client.connect(h.port)
        await rig.subscribe()
        [conn] = list(h.server._connections)
        if state == "writer busy":
            conn._writing = True  # the writer holds bytes: queue behind them
        elif state == "bytes unsent":
            conn._unsent = b" "  # what a direct write left over (a blank: the rig's JSON skips it)
        elif state == "ok held for the record":
            conn._held = (b" ", conn.session.last_job_taken, 0, float("inf"))
        monkeypatch.setattr(Session, "take_new_job", take_new_job)
        made = conn.session.jobs_queued
        await h.new_tip()
        await wait_for(lambda: conn.session.jobs_queued > made)  # the fan-out reached the rig
        if state == "ok held for the record":
            assert taken == []
            conn.release_held()  # (the record's commit would)
        job = await rig.job()
        assert job["parent_hash"] == OTHER_TIP.parents[0].hex()
        assert taken == ([True] if state == "writable" else [])
        nursery.cancel_scope.cancel()


async def test_the_fan_out_does_not_wait_for_a_stalled_rig():
    async with trio.open_nursery() as nursery:
        h = await start(nursery, send_timeout=30.0)
        stalled = await Client.connect(h.port)
        stalled.stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await stalled.subscribe()
        good = await Client.connect(h.port)
        await good.subscribe()
        generation = h.pool.generation
        for i in range(3000):  # ~1 MB of jobs for the stalled rig, which reads none of them
            h.pool.work.publish(WorkSignal(generation, False, 1000 + i, trio.current_time()))
            await trio.sleep(0)
        started = trio.current_time()
        await h.new_tip()
        while (await good.job())["clean"] is not True:
            pass
        assert trio.current_time() - started < 2.0
        nursery.cancel_scope.cancel()


# --- limits ----------------------------------------------------------------------------------------


async def test_max_connections_per_ip_refuses_the_extra_connection():
    async with trio.open_nursery() as nursery:
        h = await start(nursery, max_per_ip=2)
        first, second = await Client.connect(h.port), await Client.connect(h.port)
        await first.subscribe()
        await second.subscribe()
        third = await Client.connect(h.port)
        assert await third.closed()
        assert h.metric("miningproxy_stratum_limit_hits_total", limit="max_per_ip") == 1.0
        other_ip = await Client.connect(h.port, local_address="127.0.0.2")
        await other_ip.subscribe()
        nursery.cancel_scope.cancel()


async def test_max_connections_in_total():
    async with trio.open_nursery() as nursery:
        h = await start(nursery, max_connections=1)
        first = await Client.connect(h.port)
        await first.subscribe()
        assert await (await Client.connect(h.port)).closed()
        assert h.metric("miningproxy_stratum_limit_hits_total", limit="max_connections") == 1.0
        nursery.cancel_scope.cancel()


async def test_a_connection_that_never_subscribes_is_closed():
    async with trio.open_nursery() as nursery:
        h = await start(nursery, subscribe_timeout=0.3)
        silent = await Client.connect(h.port)
        rig = await Client.connect(h.port)
        await rig.subscribe()
        started = trio.current_time()
        assert await silent.closed()
        assert 0.25 <= trio.current_time() - started < 3.0
        assert h.metric("miningproxy_stratum_limit_hits_total", limit="subscribe_timeout") == 1.0
        await trio.sleep(0.4)
        assert h.server.connections == 1 and (await rig.call("mining.ping", []))["result"] == "pong"
        nursery.cancel_scope.cancel()


async def flood_invalid_shares(rig: Client, job: dict[str, Any], count: int = 50) -> None:
    """Send ``count`` shares of ``job`` that miss its weight, in one write (the server may close
    the connection before it has them all)."""
    bad = miss(bytes.fromhex(job["data"]), 4.0)
    line = json.dumps(
        {"id": 1, "method": "submit", "params": {"job_id": job["job_id"], "nonce": f"{bad:032x}"}}
    )
    try:
        await rig.send((line + "\n").encode() * count)
    except trio.BrokenResourceError:
        pass


async def test_a_flood_of_invalid_shares_bans_the_ip_and_only_that_ip():
    ban = BanSettings(threshold=20, invalid_share=1, loopback=True, duration=60)
    async with trio.open_nursery() as nursery:
        h = await start(nursery, ban=ban)
        good = await Client.connect(h.port, local_address="127.0.0.2")
        good_job = await good.subscribe()
        flooder = await Client.connect(h.port)
        await flood_invalid_shares(flooder, await flooder.subscribe())
        assert await flooder.closed()
        assert h.metric("miningproxy_stratum_limit_hits_total", limit="ban") == 1.0
        again = await Client.connect(h.port)
        assert await again.closed()
        assert h.metric("miningproxy_stratum_limit_hits_total", limit="banned") == 1.0
        nonce = solve(bytes.fromhex(good_job["data"]), 4.0)
        assert (await good.call("submit", {"job_id": good_job["job_id"], "nonce": f"{nonce:032x}"}))[
            "result"
        ] == "ok"
        nursery.cancel_scope.cancel()


# --- solo mode, shutdown, TLS, metrics --------------------------------------------------------------


async def test_solo_mode_rig_without_address_gets_22_and_is_closed():
    async with trio.open_nursery() as nursery:
        h = await start(nursery, mode="solo", authorize_timeout=0.2)
        rig = await Client.connect(h.port)
        reply = await rig.call("subscribe", None)
        assert reply["result"] == "ok"
        error = await rig.line()
        assert error["error"]["code"] == 22 and "id" not in error
        assert await rig.closed()
        named = await Client.connect(h.port)
        await named.call("mining.subscribe", [])
        assert (await named.call("mining.authorize", [PRIVATENET_ADDRESS + ".rig1", "x"]))["result"] == "ok"
        assert (await named.job())["clean"] is True
        nursery.cancel_scope.cancel()


async def test_graceful_shutdown_asks_rigs_to_reconnect_and_answers_submits_on_the_wire():
    async with trio.open_nursery() as nursery:
        h = await start(nursery, shutdown_grace=0.3)
        rig = await Client.connect(h.port)
        job = await rig.subscribe()
        done = trio.Event()

        async def shut() -> None:
            await h.server.shutdown()
            done.set()

        nursery.start_soon(shut)
        show = await rig.line()
        reconnect = await rig.line()
        assert show["method"] == "client.show_message" and isinstance(show["params"][0], str)
        assert reconnect["method"] == "client.reconnect"
        nonce = solve(bytes.fromhex(job["data"]), 4.0)
        assert (await rig.call("submit", {"job_id": job["job_id"], "nonce": f"{nonce:032x}"}))[
            "result"
        ] == "ok"
        assert await rig.closed()
        with trio.fail_after(TIMEOUT):
            await done.wait()
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", h.port)
        nursery.cancel_scope.cancel()


def self_signed(tmp_path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(cert_path), str(key_path)


async def test_tls_listener(tmp_path):
    pytest.importorskip("cryptography")
    cert, key = self_signed(tmp_path)
    async with trio.open_nursery() as nursery:
        h = await start(nursery, tls_listen=("127.0.0.1", 0), tls_cert=cert, tls_key=key)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        raw = await trio.open_tcp_stream("127.0.0.1", h.server.tls_ports[0])
        stream = trio.SSLStream(raw, context, server_hostname="localhost")
        rig = Client(stream)
        job = await rig.subscribe()
        nonce = solve(bytes.fromhex(job["data"]), 4.0)
        assert (await rig.call("submit", {"job_id": job["job_id"], "nonce": f"{nonce:032x}"}))[
            "result"
        ] == "ok"
        plain = await Client.connect(h.port)  # the plain listener still works
        await plain.subscribe()
        nursery.cancel_scope.cancel()


async def test_metrics_rigs_weights_and_per_worker_series_removed_on_disconnect():
    async with trio.open_nursery() as nursery:
        h = await start(nursery, per_worker_metrics=True)
        a, b = await Client.connect(h.port), await Client.connect(h.port)
        for rig, worker in ((a, "alpha"), (b, "beta")):
            job = await rig.subscribe()
            await rig.call("mining.authorize", [f"{PRIVATENET_ADDRESS}.{worker}", "x"])
            nonce = solve(bytes.fromhex(job["data"]), 4.0)
            await rig.call("submit", {"job_id": job["job_id"], "nonce": f"{nonce:032x}"})
        assert h.metric("miningproxy_rigs_connected") == 2.0
        assert h.metric("miningproxy_vardiff_weight_count") >= 2.0
        name = "miningproxy_worker_hashrate_hashes_per_second"
        assert h.metric(name, address=PRIVATENET_ADDRESS, worker="alpha") > 0
        assert h.metric(name, address=PRIVATENET_ADDRESS, worker="beta") > 0
        await a.aclose()
        await wait_for(lambda: h.server.connections == 1)
        assert h.metric("miningproxy_rigs_connected") == 1.0 and h.pool.consumers == 1
        assert h.metric(name, address=PRIVATENET_ADDRESS, worker="alpha") is None
        assert h.metric(name, address=PRIVATENET_ADDRESS, worker="beta") > 0
        workers = {miner.worker for miner in h.pool.stats.miners}
        assert "beta" in workers and "alpha" not in workers  # the pool forgot the gone rig
        nursery.cancel_scope.cancel()


async def test_a_new_blocks_job_at_a_new_weight_is_counted_in_the_weight_histogram():
    async with trio.open_nursery() as nursery:
        h = await start(nursery)
        rig = await Client.connect(h.port)
        first = await rig.subscribe()
        assert h.metric("miningproxy_vardiff_weight_count") == 1.0
        (session,) = h.server.sessions()
        session.vardiff._set(first["weight"] / 2, trio.current_time(), 0.0)  # a retarget, as if due
        await h.new_tip()
        job = await rig.job()
        assert job["weight"] == first["weight"] / 2 and job["clean"] is True
        # The fan-out handed the job straight to the socket; the new weight still reached metrics.
        assert h.metric("miningproxy_vardiff_weight_count") == 2.0
        assert h.metric("miningproxy_vardiff_weight_sum") == first["weight"] * 1.5
        await h.new_tip(TEMPLATES[0])
        await rig.job()
        assert h.metric("miningproxy_vardiff_weight_count") == 2.0  # the same weight again: no sample
        assert h.metric("miningproxy_jobs_sent_total") == 3.0  # the session asks the factory itself
        nursery.cancel_scope.cancel()


async def test_per_worker_series_are_off_by_default():
    async with trio.open_nursery() as nursery:
        h = await start(nursery)
        rig = await Client.connect(h.port)
        await rig.subscribe()
        assert b"miningproxy_worker_hashrate" not in h.metrics.render()
        nursery.cancel_scope.cancel()


async def test_vardiff_through_the_server_raises_a_fast_rigs_weight():
    fast = VardiffSettings(min_weight=1.0, max_weight=6.0, initial_weight=1.0, ramp_shares=3)
    async with trio.open_nursery() as nursery:
        h = await start(nursery, vardiff=fast)
        rig = await Client.connect(h.port)
        job = await rig.subscribe()
        header = bytes.fromhex(job["data"])
        nonce = -1
        for _ in range(3):
            nonce = solve(header, 1.0, nonce + 1)
            assert (await rig.call("submit", {"job_id": job["job_id"], "nonce": f"{nonce:032x}"}))[
                "result"
            ] == "ok"
        retarget = await rig.job()
        assert retarget["weight"] == 6.0 and retarget["clean"] is False
        nursery.cancel_scope.cancel()


# --- the real clients' own frames ---------------------------------------------------------------------


async def test_frames_as_the_node_client_ccminer_and_cgminer_send_them():
    async with trio.open_nursery() as nursery:
        h = await start(nursery, get_version=True)
        # hathor-core's StratumClient: string ids from "0", nonce as Python's hex(), an empty aux_pow
        node = await Client.connect(h.port)
        await node.send({"method": "subscribe", "params": {"address": None}, "id": "0"})
        assert await node.line() == {"result": "ok", "error": None, "id": "0"}
        job = await node.job()
        nonce = solve(bytes.fromhex(job["data"]), job["weight"])
        await node.send(
            {
                "method": "submit",
                "params": {"job_id": job["job_id"], "nonce": hex(nonce), "aux_pow": ""},
                "id": "1",
            }
        )
        replies = [await node.line(), await node.line()]  # get_version (ignored by it) and the reply
        assert {"result": "ok", "error": None, "id": "1"} in replies
        # ccminer: a jsonrpc 2.0 subscribe with its fixed string id, whose reply id it strcmp()s
        ccminer = await Client.connect(h.port)
        await ccminer.send(
            b'{\t"jsonrpc": "2.0", \t"id": "61e39f788ae04442b97d52c6b814ebab", \t"method": "subscribe", '
            b'\t"params": {"address": "WY1URKUnqCTyiixW1Dw29vmeG99hNN4EW6"}\t}\n'
        )
        assert (await ccminer.line())["id"] == "61e39f788ae04442b97d52c6b814ebab"
        assert (await ccminer.line())["method"] == "job"
        # cgminer: mining.configure first, integer ids it matches with json_integer_value, answers get_version
        cgminer = await Client.connect(h.port)
        configure = await cgminer.call(
            "mining.configure", [["version-rolling"], {"version-rolling.mask": "ffffffff"}], msgid=0
        )
        assert configure["result"] == {"version-rolling": False}
        subscribe = await cgminer.call("mining.subscribe", {"address": PRIVATENET_ADDRESS}, msgid=1)
        assert subscribe == {"result": "ok", "error": None, "id": 1}
        job = await cgminer.job()
        ask = await cgminer.line()
        assert ask["method"] == "client.get_version" and type(ask["id"]) is int
        await cgminer.send({"id": ask["id"], "result": "cgminer/4.11.1", "error": None})
        nonce = solve(bytes.fromhex(job["data"]), job["weight"])
        reply = await cgminer.call(
            "mining.submit", {"job_id": job["job_id"], "nonce": f"{nonce:032x}"}, msgid=7
        )
        assert reply == {"result": "ok", "error": None, "id": 7}
        await wait_for(lambda: "cgminer/4.11.1" in [r["version"] for r in h.server.rigs()])
        nursery.cancel_scope.cancel()


async def test_rigs_wait_for_the_upstream_network_to_be_known():
    async with trio.open_nursery() as nursery:
        h = await start(nursery)
        h.server.set_network(None)  # as if the upstream's /v1a/version had not answered yet
        rig = await Client.connect(h.port)
        assert (await rig.call("subscribe", {"address": PRIVATENET_ADDRESS}))["error"]["code"] == 10
        h.server.set_network(PRIVATENET)
        await rig.subscribe()
        nursery.cancel_scope.cancel()
