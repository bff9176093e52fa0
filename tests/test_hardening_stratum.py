"""The Stratum listener under attack and load: the real server on loopback, real sockets.

Each test has a hostile client (or thousands) and a well-behaved rig beside it; the evidence is
that the server never goes down (a task that raised would take the whole nursery with it), the
hostile client gets the protocol's answer or is cut off, and the good rig keeps being served.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys

import pytest
import trio

from miningproxy.stratum.settings import BanSettings
from tests.test_hardening_support import ROOT, source_address
from tests.test_stratum_server import Client, start, wait_for

MIB = 1 << 20


async def new_tip_reaches(h, good: Client) -> None:
    from tests.test_stratum_support import OTHER_TIP, TEMPLATES

    template = OTHER_TIP if h.pool.tip != OTHER_TIP.parents[0] else TEMPLATES[0]
    await h.new_tip(template)
    while not (await good.job())["clean"]:
        pass


# --- 10,000 rigs at once ------------------------------------------------------------------------


async def many_rigs_at_once(count: int) -> None:
    async with trio.open_nursery() as nursery:
        h = await start(nursery, max_connections=count + 10, subscribe_timeout=120.0, job_interval=300.0)
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "tests.test_hardening_support", "swarm", str(h.port), str(count)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        lines = b""

        async def next_line() -> str:
            nonlocal lines
            while b"\n" not in lines:
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, "the swarm died"
                lines += chunk
            line, lines = lines.split(b"\n", 1)
            return line.decode()

        try:
            with trio.fail_after(60 + count / 50):
                assert await next_line() == f"READY {count}"
                assert h.server.connections == count
                assert h.metric("miningproxy_rigs_connected") == count
                started = trio.current_time()
                await new_tip_reaches_pool(h)
                assert await next_line() == f"CLEAN {count}"
                fan_out = trio.current_time() - started
                # Every rig answered, nobody refused, nothing leaked.
                assert (h.metric("miningproxy_stratum_limit_hits_total", limit="max_connections") or 0) == 0
                assert fan_out < 30, fan_out
        finally:
            await proc.stdin.aclose()
            with trio.move_on_after(30):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
        await wait_for(lambda: h.server.connections == 0, timeout=30)
        assert h.metric("miningproxy_rigs_connected") == 0
        assert h.pool.consumers == 0 and not h.server._per_ip and not h.server._miners
        nursery.cancel_scope.cancel()


async def new_tip_reaches_pool(h) -> None:
    from tests.test_stratum_support import OTHER_TIP

    await h.new_tip(OTHER_TIP)


async def test_1000_rigs_connect_at_once_and_all_get_every_new_tip():
    await many_rigs_at_once(1000)


@pytest.mark.slow
async def test_10000_rigs_connect_at_once_and_all_get_every_new_tip():
    await many_rigs_at_once(10_000)


# --- connection churn -----------------------------------------------------------------------------


async def churn(cycles: int, parallel: int) -> None:
    async with trio.open_nursery() as nursery:
        h = await start(nursery, max_per_ip=parallel + 5)
        good = await Client.connect(h.port, local_address="127.0.0.2")
        await good.subscribe()
        done = 0

        async def cycle(i: int) -> None:
            nonlocal done
            stream = await trio.open_tcp_stream("127.0.0.1", h.port, local_address=source_address(i))
            rig = Client(stream)
            mode = i % 4
            if mode:  # 0: connect and vanish; else subscribe first
                await rig.subscribe()
            if mode == 3:  # a reset instead of a FIN: SO_LINGER 0
                stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            if mode == 2:
                await rig.send(b'{"id": 1, "method": "submit", "params": {"job_id": "00", "nonce": "1"}}\n')
            await stream.aclose()
            done += 1

        with trio.fail_after(60 + cycles / 20):
            limiter = trio.CapacityLimiter(parallel)

            async def limited(i: int) -> None:
                async with limiter:
                    await cycle(i)

            async with trio.open_nursery() as inner:
                for i in range(cycles):
                    inner.start_soon(limited, i)
        assert done == cycles
        await wait_for(lambda: h.server.connections == 1, timeout=10)
        # Nothing kept for the connections that are gone: per-IP counts, miners, consumers, gauges.
        assert list(h.server._per_ip) == ["127.0.0.2"]
        assert len(h.server._miners) == 1 and h.pool.consumers == 1
        assert h.metric("miningproxy_rigs_connected") == 1
        await new_tip_reaches(h, good)
        nursery.cancel_scope.cancel()


async def test_connection_churn_leaves_nothing_behind():
    await churn(1500, 50)


@pytest.mark.slow
async def test_connection_churn_leaves_nothing_behind_long():
    await churn(30_000, 200)


# --- slowloris, huge lines, nesting, bad UTF-8 ----------------------------------------------------


async def slowloris(clients: int, interval: float, timeout: float) -> None:
    async with trio.open_nursery() as nursery:
        h = await start(nursery, subscribe_timeout=timeout)
        good = await Client.connect(h.port, local_address="127.0.0.2")
        await good.subscribe()
        request = json.dumps({"id": 1, "method": "subscribe", "params": {}}).encode()
        closed = 0

        async def drip(i: int) -> None:
            nonlocal closed
            stream = await trio.open_tcp_stream("127.0.0.1", h.port, local_address=source_address(i))
            try:
                for byte in request:  # never the newline: a subscribe that never completes
                    await stream.send_all(bytes([byte]))
                    await trio.sleep(interval)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            with trio.fail_after(timeout + 5):
                while await stream.receive_some(4096):
                    pass
            closed += 1
            await stream.aclose()

        async with trio.open_nursery() as inner:
            for i in range(clients):
                inner.start_soon(drip, i)
            # Meanwhile the good rig is served as usual.
            await new_tip_reaches(h, good)
        assert closed == clients
        assert h.metric("miningproxy_stratum_limit_hits_total", limit="subscribe_timeout") == clients
        await new_tip_reaches(h, good)
        nursery.cancel_scope.cancel()


async def test_slowloris_rigs_are_closed_at_the_subscribe_timeout():
    await slowloris(clients=50, interval=0.05, timeout=1.0)


@pytest.mark.slow
async def test_slowloris_a_byte_a_second():
    await slowloris(clients=500, interval=1.0, timeout=20.0)


@pytest.mark.parametrize("newline", [False, True], ids=["endless", "one-line"])
async def test_a_1_mib_line_is_refused_and_the_sender_closed(newline):
    async with trio.open_nursery() as nursery:
        h = await start(nursery)
        good = await Client.connect(h.port)
        await good.subscribe()
        bad = await Client.connect(h.port)
        await bad.subscribe()
        line = b'{"id": 1, "method": "mining.ping", "params": ["' + b"a" * MIB + b'"]}'
        try:
            await bad.send(line + (b"\n" if newline else b""))
        except trio.BrokenResourceError:
            pass  # the server closed while we were still sending: fine
        error = await bad.line()
        assert error is None or error["error"]["code"] == -32600
        assert await bad.closed()
        assert h.metric("miningproxy_stratum_limit_hits_total", limit="max_line") == 1.0
        await new_tip_reaches(h, good)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "payload, code",
    [
        (b"[" * 8000 + b"\n", -32700),
        (b'{"id": 1, "method": "submit", "params": ' + b"[" * 8000 + b"\n", -32700),
        (b'{"id": 1, "method": "subscribe", "params": {"address": "\xff\xfe"}}\n', -32700),
        (b'{"id": 1e999, "method": "submit", "params": {"job_id": 1, "nonce": []}}\n', -32602),
    ],
    ids=["nested", "nested-params", "invalid-utf8", "wrong-types"],
)
async def test_hostile_json_gets_the_json_rpc_error_and_others_are_unaffected(payload, code):
    async with trio.open_nursery() as nursery:
        h = await start(nursery)
        good = await Client.connect(h.port)
        await good.subscribe()
        bad = await Client.connect(h.port)
        await bad.subscribe()
        await bad.send(payload)
        error = await bad.line()
        assert error["error"]["code"] == code, error
        assert await bad.closed()
        await new_tip_reaches(h, good)
        nursery.cancel_scope.cancel()


async def test_an_invalid_share_flood_bans_its_ip_while_others_mine_on():
    # Ban score: 1 point per invalid share, banned at 50; the flood comes from one IP, the rest
    # of the pool from others (and keeps mining). The IP stays refused while banned.
    ban = BanSettings(threshold=50, invalid_share=1, loopback=True, duration=60)
    async with trio.open_nursery() as nursery:
        h = await start(nursery, ban=ban)
        good = await Client.connect(h.port, local_address="127.0.0.2")
        await good.subscribe()
        flooders = [await Client.connect(h.port, local_address="127.0.0.3") for _ in range(3)]
        jobs = [await f.subscribe() for f in flooders]
        lines = b"".join(
            json.dumps(
                {"id": n, "method": "submit", "params": {"job_id": job["job_id"], "nonce": f"{n:032x}"}}
            ).encode()
            + b"\n"
            for n, job in enumerate(jobs * 40)
        )

        async def flood(f: Client) -> None:
            try:
                await f.send(lines)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        async with trio.open_nursery() as inner:
            for f in flooders:
                inner.start_soon(flood, f)
        for f in flooders:  # every connection of the banned IP goes, not just the last straw's
            assert await f.closed()
        assert h.metric("miningproxy_stratum_limit_hits_total", limit="ban") == 1.0
        assert await (await Client.connect(h.port, local_address="127.0.0.3")).closed()
        await new_tip_reaches(h, good)
        nursery.cancel_scope.cancel()
