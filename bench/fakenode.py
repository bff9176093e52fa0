"""A fake Hathor node for the benchmarks: ``/v1a/mining_ws`` only, timestamps on the node's side.

``python -m bench.fakenode [--block-weight W]`` prints ``{"port": P}``, then obeys JSON commands:

``{"cmd": "notify"}``
    a new tip: the dev node's chain grows by one block and every client gets ``mining.notify``
    with the new template (its weight set to ``--block-weight``); answers ``{"t0": ...}``, the
    monotonic time taken right before the message is written.
``{"cmd": "submits"}``
    answers ``{"submits": [[nonce_hex, monotonic arrival], ...]}`` (and forgets them): every
    ``mining.submit`` (answered ``true``, never validated: the proxy checked the PoW) and every
    other message holding a ``"nonce"`` (what the relay baseline forwards).

Templates come from :class:`~miningproxy.devnode.server.DevNode` (its chain is only a template
factory here), so they have the real node's shape.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import time
from functools import partial
from typing import Any

import trio
import trio_websocket

from bench.servers import _commands, say
from miningproxy.api.http import HttpRequest, Router, serve_http
from miningproxy.devnode.server import DevNode
from miningproxy.devnode.settings import DevNodeSettings

_NONCE = re.compile(r'"nonce":"([0-9a-fA-F]+)"')


class FakeNode:
    def __init__(self, block_weight: float) -> None:
        # Weight 1: the dev node mines its own next block in a couple of hashes.
        self.chain_node = DevNode(DevNodeSettings(block_weight=1.0, min_block_weight=1.0))
        self.block_weight = block_weight
        self.clients: set[trio_websocket.WebSocketConnection] = set()
        self.submits: list[tuple[str, float]] = []

    def notify_text(self) -> str:
        templates = self.chain_node.templates_json()
        for template in templates:
            template["weight"] = self.block_weight
        return json.dumps({"id": None, "method": "mining.notify", "params": templates}, separators=(",", ":"))

    async def mining_ws(self, ws: trio_websocket.WebSocketConnection, request: HttpRequest) -> None:
        await ws.send_message(self.notify_text())
        self.clients.add(ws)
        try:
            while True:
                message = await ws.get_message()
                arrived = time.monotonic()
                text = message if isinstance(message, str) else message.decode()
                if '"mining.submit"' in text:
                    frame = json.loads(text)
                    params = frame["params"]
                    hexdata = params["hexdata"] if isinstance(params, dict) else params[0]
                    self.submits.append((hexdata[-32:], arrived))
                    await ws.send_message(json.dumps({"id": frame["id"], "error": None, "result": True}))
                elif (match := _NONCE.search(text)) is not None:
                    self.submits.append((match.group(1).lower().rjust(32, "0"), arrived))
        except trio_websocket.ConnectionClosed:
            pass
        finally:
            self.clients.discard(ws)

    async def notify(self) -> dict[str, Any]:
        self.chain_node.mine_block()
        text = self.notify_text()
        t0 = time.monotonic()
        for ws in list(self.clients):
            await ws.send_message(text)
        return {"t0": t0, "clients": len(self.clients)}

    async def take_submits(self) -> dict[str, Any]:
        submits, self.submits = self.submits, []
        return {"submits": submits}


async def run(args: argparse.Namespace) -> None:
    node = FakeNode(args.block_weight)
    router = Router()
    router.websocket("/v1a/mining_ws", node.mining_ws)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(serve_http, router, "127.0.0.1", 0))
        say(port=listeners[0].socket.getsockname()[1], pid=os.getpid())

        async def clients() -> dict[str, Any]:
            return {"clients": len(node.clients)}

        await _commands({"notify": node.notify, "submits": node.take_submits, "clients": clients})
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block-weight", type=float, default=60.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    trio.run(run, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
