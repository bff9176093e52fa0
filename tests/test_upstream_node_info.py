"""Learning the upstream's network from GET /v1a/version."""

from __future__ import annotations

import pytest
import trio

from miningproxy.api.http import HttpResponse, Router, serve_http
from miningproxy.devnode.server import DevNode
from miningproxy.devnode.settings import DevNodeSettings
from miningproxy.upstream.node_http import NodeHttpError, http_get
from miningproxy.upstream.node_info import NodeInfoError, fetch_network_name


async def test_network_name_from_the_dev_node():
    async with trio.open_nursery() as nursery:
        port = await nursery.start(DevNode(DevNodeSettings(network="testnet-golf")).serve, "127.0.0.1", 0)
        assert await fetch_network_name(f"http://127.0.0.1:{port}/v1a/") == "testnet-golf"
        nursery.cancel_scope.cancel()


async def test_bad_answers_are_clear_errors():
    router = Router()

    async def garbage(request):
        return HttpResponse.text("not json")

    async def no_network(request):
        return HttpResponse.json({"version": "1"})

    router.http("/a/version", garbage)
    router.http("/b/version", no_network)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(serve_http, router, "127.0.0.1", 0)
        port = listeners[0].socket.getsockname()[1]
        with pytest.raises(NodeInfoError, match="not JSON"):
            await fetch_network_name(f"http://127.0.0.1:{port}/a/")
        with pytest.raises(NodeInfoError, match="no network name"):
            await fetch_network_name(f"http://127.0.0.1:{port}/b/")
        with pytest.raises(NodeInfoError, match="HTTP 404"):
            await fetch_network_name(f"http://127.0.0.1:{port}/missing/")
        assert (await http_get(f"http://127.0.0.1:{port}/missing")).status == 404
        nursery.cancel_scope.cancel()
    with pytest.raises(NodeInfoError):
        await fetch_network_name("http://127.0.0.1:9/v1a/", timeout=2)
    with pytest.raises(NodeHttpError, match="127.0.0.1:9"):
        await http_get("http://127.0.0.1:9/v1a/version", timeout=2)
