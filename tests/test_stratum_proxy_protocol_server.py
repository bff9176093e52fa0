"""The Stratum server behind a load balancer that speaks the PROXY protocol (real loopback sockets).

The "balancer" is the test itself: it connects from 127.0.0.1, as a balancer on the same host
would, and writes the header the way HAProxy does before the rig's own bytes.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import ssl

import pytest
import trio

from miningproxy.stratum.server import _in_networks
from miningproxy.stratum.settings import BanSettings
from tests.test_stratum_proxy_protocol import v1, v2
from tests.test_stratum_server import Client, flood_invalid_shares, self_signed, start, wait_for
from tests.test_stratum_support import solve

BALANCER = ("127.0.0.0/8",)


def peers(h) -> list[str]:
    return sorted(session.peer for session in h.server.sessions())


def limit_hits(h, limit: str) -> float:
    return h.metric("miningproxy_stratum_limit_hits_total", limit=limit)


async def behind_balancer(port: int, source: tuple[str, int], *, version: int = 1) -> Client:
    rig = await Client.connect(port)
    header = v1(source, ("127.0.0.1", port)) if version == 1 else v2(source, ("127.0.0.1", port))
    await rig.send(header)
    return rig


async def test_each_rig_gets_its_own_address_from_the_header_and_keeps_its_bytes():
    async with trio.open_nursery() as nursery:
        h = await start(nursery, proxy_protocol_from=BALANCER)
        # Version 1, the header and the rig's subscribe in one segment.
        first = await Client.connect(h.port)
        subscribe = {"jsonrpc": "2.0", "id": "sub", "method": "subscribe", "params": {}}
        await first.send(
            v1(("203.0.113.7", 51234), ("127.0.0.1", h.port)) + json.dumps(subscribe).encode() + b"\n"
        )
        assert (await first.line())["result"] == "ok"
        # Version 2 in three pieces, then the rig's lines: nothing is lost on either side of it.
        second = await Client.connect(h.port)
        header = v2(("2001:db8::7", 443), ("::1", h.port))
        for piece in (header[:5], header[5:20], header[20:]):
            await second.send(piece)
            await trio.sleep(0.05)
        job = await second.subscribe()
        nonce = solve(bytes.fromhex(job["data"]), 4.0)
        reply = await second.call("submit", {"job_id": job["job_id"], "nonce": f"{nonce:032x}"})
        assert reply["result"] == "ok"
        assert peers(h) == ["2001:db8::7:443", "203.0.113.7:51234"]
        assert limit_hits(h, "proxy_header") == 0.0
        nursery.cancel_scope.cancel()


async def test_limits_and_bans_count_the_rigs_address_not_the_balancers():
    ban = BanSettings(threshold=20, invalid_share=1, duration=60)
    async with trio.open_nursery() as nursery:
        h = await start(nursery, proxy_protocol_from=BALANCER, max_per_ip=1, ban=ban)
        keeper = await behind_balancer(h.port, ("198.51.100.1", 1000))
        keeper_job = await keeper.subscribe()
        # A second rig behind the same address is over max_per_ip; another address is not.
        over = await behind_balancer(h.port, ("198.51.100.1", 1001))
        assert await over.closed()
        assert limit_hits(h, "max_per_ip") == 1.0
        flooder = await behind_balancer(h.port, ("198.51.100.2", 2000), version=2)
        await flood_invalid_shares(flooder, await flooder.subscribe())
        assert await flooder.closed()
        assert limit_hits(h, "ban") == 1.0
        # The flooder's address is banned; the balancer, and every other rig behind it, is not.
        again = await behind_balancer(h.port, ("198.51.100.2", 2001))
        assert await again.closed()
        assert limit_hits(h, "banned") == 1.0
        nonce = solve(bytes.fromhex(keeper_job["data"]), 4.0)
        reply = await keeper.call("submit", {"job_id": keeper_job["job_id"], "nonce": f"{nonce:032x}"})
        assert reply["result"] == "ok"
        newcomer = await behind_balancer(h.port, ("198.51.100.3", 3000))
        await newcomer.subscribe()
        nursery.cancel_scope.cancel()


async def test_a_balancer_connection_without_a_good_header_is_closed_and_counted(caplog):
    caplog.set_level(logging.DEBUG, logger="miningproxy.stratum")
    async with trio.open_nursery() as nursery:
        h = await start(nursery, proxy_protocol_from=BALANCER, subscribe_timeout=0.3)
        plain = await Client.connect(h.port)  # a rig reaching the proxy around the balancer
        await plain.send({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {}})
        assert await plain.closed()
        assert limit_hits(h, "proxy_header") == 1.0
        half = await Client.connect(h.port)
        await half.send(b"PROXY TCP4 203.0.113.7 ")  # and nothing more
        started = trio.current_time()
        assert await half.closed()
        assert 0.25 <= trio.current_time() - started < 3.0
        assert limit_hits(h, "proxy_header") == 2.0
        # A TCP check (connect, close, not a byte sent) is no fault: not counted.
        probe = await trio.open_tcp_stream("127.0.0.1", h.port)
        await probe.aclose()
        await wait_for(lambda: "closed before sending anything" in caplog.text)  # it was handled
        assert limit_hits(h, "proxy_header") == 2.0
        # LOCAL: the balancer's own check; it stands as itself and is served like any rig.
        check = await Client.connect(h.port)
        await check.send(v2(None, None, command=0x20))
        await check.subscribe()
        assert [peer.rsplit(":", 1)[0] for peer in peers(h)] == ["127.0.0.1"]
        assert limit_hits(h, "proxy_header") == 2.0
        nursery.cancel_scope.cancel()


async def test_a_rig_outside_the_named_balancers_cannot_pick_its_address():
    async with trio.open_nursery() as nursery:
        h = await start(nursery, proxy_protocol_from=("10.0.0.0/8",))
        rig = await Client.connect(h.port)
        await rig.send(v1(("203.0.113.9", 1), ("127.0.0.1", h.port)))
        await rig.send({"jsonrpc": "2.0", "id": "sub", "method": "subscribe", "params": {}})
        # The header is just a line that is not JSON-RPC to the rig's session.
        assert "error" in await rig.line()
        assert all(not peer.startswith("203.0.113.9") for peer in peers(h))
        assert limit_hits(h, "proxy_header") == 0.0
        nursery.cancel_scope.cancel()


async def test_the_header_comes_before_the_tls_handshake(tmp_path):
    pytest.importorskip("cryptography")
    cert, key = self_signed(tmp_path)
    async with trio.open_nursery() as nursery:
        h = await start(
            nursery, proxy_protocol_from=BALANCER, tls_listen=("127.0.0.1", 0), tls_cert=cert, tls_key=key
        )
        port = h.server.tls_ports[0]
        raw = await trio.open_tcp_stream("127.0.0.1", port)
        await raw.send_all(v2(("192.0.2.44", 40000), ("127.0.0.1", port)))
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        rig = Client(trio.SSLStream(raw, context, server_hostname="localhost"))
        await rig.subscribe()
        await wait_for(lambda: peers(h) == ["192.0.2.44:40000"])
        nursery.cancel_scope.cancel()


def test_a_balancer_is_recognised_through_a_dual_stack_listener():
    networks = (ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("fd00::/8"))
    assert _in_networks("10.0.0.5", networks)
    assert _in_networks("::ffff:10.0.0.5", networks)  # an IPv4 balancer on a listener bound to "::"
    assert _in_networks("fd00::1", networks)
    assert not _in_networks("10.0.1.5", networks)
    assert not _in_networks("?", networks)  # peer_of's answer when the socket is already gone
