"""A fake Hathor node for the benchmarks: ``/v1a/mining_ws`` only, timestamps on the node's side.

``python -m bench.fakenode [--block-weight W]`` prints ``{"port": P}``, then obeys JSON commands:

``{"cmd": "notify"}``
    a new tip: the dev node's chain grows by one block and every client gets ``mining.notify``
    with the new template (its weight set to ``--block-weight``); answers ``{"t0": ...,
    "t0_wall": ...}``, the monotonic and wall-clock times taken right before the message is written.
``{"cmd": "submits"}``
    answers ``{"submits": [[nonce_hex, monotonic arrival, kernel arrival, shared], ...]}`` (and
    forgets them): every ``mining.submit`` (answered ``true``, never validated: the proxy checked
    the PoW) and every other message holding a ``"nonce"`` (what the relay baseline forwards).
``{"cmd": "ack_to", "port": P}``
    from now on, every nonce that arrives is also sent, as one UDP datagram (its 32 hex digits),
    to 127.0.0.1:P (a rig simulator's ``acks`` socket), once it is stamped.

Two arrival times per message:

* *monotonic arrival*: ``time.monotonic()`` once ``get_message()`` returned it, i.e. in the node's
  application (after the kernel woke this process, trio-websocket's reader task parsed the frame
  and handed it over through a memory channel to this task);
* *kernel arrival*: the socket's receive timestamp (CLOCK_REALTIME, ``SO_TIMESTAMPNS``, see
  :mod:`bench.kstamp`) of the read that completed the message's last frame, i.e. the moment the
  sender's write reached this socket; ``shared`` is true when that read also held bytes of a later
  message (the stamp may then be that later write's). None when the packet was not stamped.

Templates come from :class:`~miningproxy.devnode.server.DevNode` (its chain is only a template
factory here), so they have the real node's shape.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import socket
import time
from functools import partial
from typing import Any

import trio
import trio_websocket

from bench.kstamp import ANCILLARY_SIZE, WsMessageStamps, enable_rx_stamps, rx_stamp
from bench.servers import _commands, say
from miningproxy.api.http import HttpRequest, Router, serve_http_stream
from miningproxy.devnode.server import DevNode
from miningproxy.devnode.settings import DevNodeSettings

_NONCE = re.compile(r'"nonce":"([0-9a-fA-F]+)"')
RECEIVE_SIZE = 65536


class StampedSocketStream(trio.abc.HalfCloseableStream):
    """A SocketStream whose reads go through ``recvmsg`` and feed their kernel receive stamps to
    :attr:`stamps` (the websocket messages they complete); everything else is the SocketStream's.
    (trio.SocketStream itself cannot be subclassed.)"""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.socket = stream.socket
        enable_rx_stamps(self.socket)  # type: ignore[arg-type]
        self.stamps = WsMessageStamps()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is None:
            max_bytes = RECEIVE_SIZE
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        try:
            data, ancdata, _, _ = await self.socket.recvmsg(max_bytes, ANCILLARY_SIZE)
        except OSError as exc:
            if self.socket.fileno() == -1:
                raise trio.ClosedResourceError("this socket was already closed") from None
            raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc
        self.stamps.feed(data, rx_stamp(ancdata))
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


class FakeNode:
    def __init__(self, block_weight: float) -> None:
        # Weight 1: the dev node mines its own next block in a couple of hashes.
        self.chain_node = DevNode(DevNodeSettings(block_weight=1.0, min_block_weight=1.0))
        self.block_weight = block_weight
        self.router = Router()
        self.clients: set[trio_websocket.WebSocketConnection] = set()
        self.submits: list[tuple[str, float, float | None, bool]] = []
        self.streams: dict[str, StampedSocketStream] = {}  # by peer "host:port"
        self.unmatched = 0  # messages whose kernel stamp could not be told (never expected)
        self.ack_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.ack_sock.setblocking(False)
        self.ack_port: int | None = None

    def notify_text(self) -> str:
        templates = self.chain_node.templates_json()
        for template in templates:
            template["weight"] = self.block_weight
        return json.dumps({"id": None, "method": "mining.notify", "params": templates}, separators=(",", ":"))

    async def mining_ws(self, ws: trio_websocket.WebSocketConnection, request: HttpRequest) -> None:
        await ws.send_message(self.notify_text())
        self.clients.add(ws)
        stream = self.streams.get(request.peer)
        stamps = stream.stamps.messages if stream is not None else None
        try:
            while True:
                message = await ws.get_message()
                arrived = time.monotonic()
                raw = message.encode() if isinstance(message, str) else message
                kernel, shared = self._kernel_stamp(stamps, len(raw))
                text = message if isinstance(message, str) else message.decode()
                if '"mining.submit"' in text:
                    frame = json.loads(text)
                    params = frame["params"]
                    hexdata = params["hexdata"] if isinstance(params, dict) else params[0]
                    self.submits.append((hexdata[-32:], arrived, kernel, shared))
                    self._ack(hexdata[-32:])
                    await ws.send_message(json.dumps({"id": frame["id"], "error": None, "result": True}))
                elif (match := _NONCE.search(text)) is not None:
                    nonce = match.group(1).lower().rjust(32, "0")
                    self.submits.append((nonce, arrived, kernel, shared))
                    self._ack(nonce)
        except trio_websocket.ConnectionClosed:
            pass
        finally:
            self.clients.discard(ws)

    def _kernel_stamp(self, stamps: Any, size: int) -> tuple[float | None, bool]:
        """The next message's kernel stamp, checked against the delivered message's size."""
        if not stamps:
            self.unmatched += 1
            return None, False
        stamp = stamps.popleft()
        if stamp.size != size:  # never expected (no compression is negotiated): do not guess
            self.unmatched += 1
            stamps.clear()
            return None, False
        return stamp.stamp, stamp.shared

    async def on_connection(self, stream: trio.SocketStream) -> None:
        """Serve one connection like ``serve_http`` does, through a stamped stream."""
        stamped = StampedSocketStream(stream)
        host, port = stamped.socket.getpeername()[:2]
        peer = f"{host}:{port}"
        self.streams[peer] = stamped
        try:
            await serve_http_stream(stamped, self.router, peer=peer)
        finally:
            del self.streams[peer]

    async def notify(self) -> dict[str, Any]:
        self.chain_node.mine_block()
        text = self.notify_text()
        t0 = time.monotonic()
        t0_wall = time.time()  # for the rigs' kernel receive stamps (CLOCK_REALTIME)
        for ws in list(self.clients):
            await ws.send_message(text)
        return {"t0": t0, "t0_wall": t0_wall, "clients": len(self.clients)}

    def _ack(self, nonce: str) -> None:
        if self.ack_port is not None:
            try:
                self.ack_sock.sendto(nonce.encode(), ("127.0.0.1", self.ack_port))
            except OSError:  # (never expected) the rig then waits for its timeout
                pass

    async def ack_to(self, port: int) -> dict[str, Any]:
        self.ack_port = int(port)
        return {"ack_to": self.ack_port}

    async def take_submits(self) -> dict[str, Any]:
        submits, self.submits = self.submits, []
        return {"submits": submits, "unmatched": self.unmatched}


async def run(args: argparse.Namespace) -> None:
    node = FakeNode(args.block_weight)
    node.router.websocket("/v1a/mining_ws", node.mining_ws)
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(partial(trio.serve_listeners, node.on_connection, listeners))
        say(port=listeners[0].socket.getsockname()[1], pid=os.getpid())

        async def clients() -> dict[str, Any]:
            return {"clients": len(node.clients)}

        await _commands(
            {"notify": node.notify, "submits": node.take_submits, "ack_to": node.ack_to, "clients": clients}
        )
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
