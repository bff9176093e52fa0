"""The servers a benchmark measures, each in its own process: the proxy and the baselines.

``python -m bench.servers MODE [options]`` prints ``{"port": P}`` (and, for the proxy, what it
listens on) once it serves, then obeys JSON commands on stdin (``{"cmd": "quit"}``, ``stats``).

Modes:

``stratum``
    the real proxy components: :class:`PoolService` + :class:`StratumServer`, with the real
    :class:`MiningUpstream` connected to ``--node`` (a fake node, see ``bench/fakenode.py``) or an
    in-process fake upstream holding one template. ``--record`` adds the pool's durable accounting
    record (SQLite, ``synchronous=full``, with the found-block journal, as deployed; ``--synchronous
    normal`` for the other setting of ``[events] synchronous``): every "ok" then waits for its commit.
``echo``
    the share-path floor: a bare trio server that writes every complete line back (one write per
    read), on the same kind of sockets.
``bare``
    the fan-out and memory floor: one task per connection that answers the first line with a
    pre-encoded job line; with ``--node``, every message from the node makes it write one
    pre-encoded clean job line to every connection, in a loop.
``relay``
    the submit-latency floor: every line from a rig is sent as one websocket message to ``--node``.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import tempfile
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import trio
import trio_websocket

from bench.common import raise_nofile

# A job line the size of the proxy's (header hex, 32-hex job id), for the bare server.
_JOB = {
    "method": "job",
    "params": {
        "data": "ab" * 64,
        "job_id": "cd" * 16,
        "nonce_size": 16,
        "weight": 20.0,
        "clean": False,
        "parent_hash": "ef" * 32,
    },
    "id": "0",
}
JOB_LINE = (json.dumps(_JOB, separators=(",", ":")) + "\n").encode()
_JOB["params"]["clean"] = True  # type: ignore[index]
CLEAN_JOB_LINE = (json.dumps(_JOB, separators=(",", ":")) + "\n").encode()


async def _commands(handlers: dict[str, Any]) -> None:
    """Read JSON commands from stdin until quit (or EOF); answer each with one line."""
    stdin = trio.lowlevel.FdStream(os.dup(0))
    buffer = b""
    while True:
        data = await stdin.receive_some(65536)
        if not data:
            return
        buffer += data
        while b"\n" in buffer:
            line, _, buffer = buffer.partition(b"\n")
            command = json.loads(line)
            name = command.pop("cmd")
            if name == "quit":
                return
            handler = handlers.get(name)
            answer = await handler(**command) if handler else {"error": f"unknown command {name!r}"}
            say(**answer)


def say(**answer: Any) -> None:
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


async def _gc() -> dict[str, Any]:
    gc.collect()
    return {"gc": True}


# --- the proxy -----------------------------------------------------------------------------------


def fake_template(block_weight: float) -> Any:
    """One real-shaped template (the dev node's) at ``block_weight``."""
    from miningproxy.devnode.server import DevNode
    from miningproxy.hathor.template import BlockTemplate

    template = DevNode().templates_json()[0]
    template["weight"] = block_weight
    return BlockTemplate.from_json(template)


class FakeUpstream:
    def __init__(self) -> None:
        from miningproxy.latest import LatestValue

        self.templates: Any = LatestValue()
        self.submitted = 0

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    async def submit(self, struct: bytes, *, block_hash: bytes, **_: Any) -> Any:
        self.submitted += 1
        await trio.lowlevel.checkpoint()
        return SimpleNamespace(status="accepted", reason="", node="fake")


def _pin_spread_weights(lowest: float, count: int) -> None:
    """Give the server's rigs ``count`` different share weights, pinned: ``lowest`` and the next
    ``count - 1`` steps of vardiff's grid, one rig after the other. A pool's rigs sit on a few
    dozen weights, not one; a fan-out builds each weight's job terms once. (The server makes its
    sessions from the name ``Session`` in its module: here a subclass that swaps in a pinned
    vardiff after the usual set-up.)"""
    import itertools

    import miningproxy.stratum.server as server_module
    from miningproxy.stratum.session import Session
    from miningproxy.stratum.settings import VardiffSettings
    from miningproxy.stratum.vardiff import Vardiff

    step = VardiffSettings().weight_step
    pinned = [VardiffSettings(initial_weight=w, min_weight=w, max_weight=w) for w in
              (lowest + k * step for k in range(count))]  # fmt: skip
    turn = itertools.cycle(pinned)

    class SpreadSession(Session):
        __slots__ = ()

        def __init__(self, *args: Any, now: float, **kwargs: Any) -> None:
            super().__init__(*args, now=now, **kwargs)
            self.vardiff = Vardiff(next(turn), now)

    server_module.Session = SpreadSession  # type: ignore[misc]


async def serve_stratum(args: argparse.Namespace) -> None:
    from bench.common import PRIVATENET_ADDRESS
    from miningproxy import gcpolicy
    from miningproxy.events.block_journal import BlockJournal, journal_path
    from miningproxy.events.feed import EventFeed
    from miningproxy.events.log import EventLog
    from miningproxy.events.pool_events import POOL_SEQ, PoolEvents, open_pool_stream
    from miningproxy.hathor.networks import network_for_name
    from miningproxy.metrics import Metrics
    from miningproxy.pool.service import PoolService
    from miningproxy.stratum.server import StratumServer
    from miningproxy.stratum.settings import StratumSettings, VardiffSettings
    from miningproxy.upstream.mining import MiningUpstream

    metrics = Metrics()
    gcpolicy.apply()  # as `miningproxy run` does
    gcpolicy.PauseTimer(metrics.observe_gc_pause).install()
    # The longest collector pause per generation so far, for "stats" (the histogram has no max).
    longest: dict[int, float] = {}
    gcpolicy.PauseTimer(
        lambda gen, took: longest.__setitem__(gen, max(took, longest.get(gen, 0.0)))
    ).install()
    if args.node:
        upstream: Any = MiningUpstream([args.node], optimistic="off", backoff_initial=0.1, backoff_max=1.0)
    else:
        upstream = FakeUpstream()
    pool = PoolService(
        upstream=upstream, address=PRIVATENET_ADDRESS, tag="bench", job_refresh=300.0, metrics=metrics
    )
    vardiff = VardiffSettings()
    if args.share_weight:
        w = args.share_weight  # pinned: no retarget ever sends a new job mid-measurement
        vardiff = VardiffSettings(initial_weight=w, min_weight=w, max_weight=w)
        if args.weight_spread > 1:
            _pin_spread_weights(w, args.weight_spread)
    settings = StratumSettings(
        listen=("127.0.0.1", 0),
        max_connections=1_000_000,
        max_per_ip=1_000_000,
        job_interval=args.job_interval,
        get_version=True,
        vardiff=vardiff,
    )
    server = StratumServer(pool, settings, network_for_name("privatenet"), metrics=metrics)
    with tempfile.TemporaryDirectory() as tmp:
        async with trio.open_nursery() as nursery:
            await nursery.start(upstream.run)
            await nursery.start(pool.run)
            if not args.node:
                upstream.templates.publish(
                    SimpleNamespace(
                        node="fake",
                        templates=[fake_template(args.block_weight)],
                        received_at=trio.current_time(),
                    )
                )
            with trio.fail_after(30):
                while pool.generation is None:
                    await trio.sleep(0.01)
            if args.record:
                database = Path(tmp) / "events.sqlite3"
                event_log = EventLog(database, synchronous=args.synchronous)
                open_pool_stream(event_log, "privatenet")
                # With the found-block journal, as EventsService sets it up: a block's line is
                # written before the block goes upstream (figure 5 times it).
                journal = BlockJournal(journal_path(database) or "")
                events = PoolEvents(
                    EventFeed(event_log, POOL_SEQ), journal=journal, journaled_before=journal.open()
                )
                await nursery.start(events.run)
                pool.events = events
            await nursery.start(server.run)

            async def stats() -> dict[str, Any]:
                return {
                    "connections": server.connections,
                    "accepted": pool.stats.pool.accepted,
                    "rejected": dict(pool.stats.pool.rejected),
                    "blocks": pool.stats.pool.blocks,
                    "gc_longest": {str(gen): took for gen, took in sorted(longest.items())},
                    "record_synchronous": event_log.synchronous() if args.record else None,
                }

            gcpolicy.freeze_startup()
            longest.clear()  # (the start-up collection just now is not the server's work)
            say(port=server.ports[0], pid=os.getpid())
            await _commands({"stats": stats, "gc": _gc})
            nursery.cancel_scope.cancel()


# --- baselines -----------------------------------------------------------------------------------


async def serve_echo(args: argparse.Namespace) -> None:
    async def echo(stream: trio.SocketStream) -> None:
        pending = b""
        try:
            while data := await stream.receive_some(65536):
                data = pending + data
                end = data.rfind(b"\n") + 1
                pending = data[end:]
                lines = data[:end].split(b"\n")  # the lines, one by one, as a line server sees them
                if end:
                    await stream.send_all(b"\n".join(lines))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
        say(port=listeners[0].socket.getsockname()[1], pid=os.getpid())
        await _commands({"gc": _gc})
        nursery.cancel_scope.cancel()


async def serve_bare(args: argparse.Namespace) -> None:
    streams: set[trio.SocketStream] = set()

    async def handle(stream: trio.SocketStream) -> None:
        try:
            await stream.receive_some(65536)  # the subscribe
            await stream.send_all(JOB_LINE)
            streams.add(stream)
            while await stream.receive_some(65536):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            streams.discard(stream)

    async def broadcast() -> None:
        async with trio_websocket.open_websocket_url(args.node) as ws:
            while True:
                await ws.get_message()
                # One non-blocking write per socket, as the proxy's fan-out does; send_all (two
                # trips through trio's scheduler each) only if a socket is full (never seen here).
                for stream in list(streams):
                    try:
                        sent = os.write(stream.socket.fileno(), CLEAN_JOB_LINE)
                    except BlockingIOError:
                        sent = 0
                    except OSError:
                        continue
                    if sent < len(CLEAN_JOB_LINE):
                        await stream.send_all(CLEAN_JOB_LINE[sent:])

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        if args.node:
            nursery.start_soon(broadcast)
        say(port=listeners[0].socket.getsockname()[1], pid=os.getpid())
        await _commands({"gc": _gc})
        nursery.cancel_scope.cancel()


async def serve_relay(args: argparse.Namespace) -> None:
    async with trio_websocket.open_websocket_url(args.node) as ws:

        async def drain() -> None:
            while True:
                await ws.get_message()

        async def relay(stream: trio.SocketStream) -> None:
            pending = b""
            try:
                while data := await stream.receive_some(65536):
                    lines = (pending + data).split(b"\n")
                    pending = lines.pop()
                    for line in lines:
                        await ws.send_message(line.decode())
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            listeners = await nursery.start(partial(trio.serve_tcp, relay, 0, host="127.0.0.1"))
            say(port=listeners[0].socket.getsockname()[1], pid=os.getpid())
            await _commands({"gc": _gc})
            nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("stratum", "echo", "bare", "relay"))
    parser.add_argument("--node", help="ws:// URL of the fake node (stratum: its mining_ws base http URL)")
    parser.add_argument("--record", action="store_true", help="stratum: the durable pool record on")
    parser.add_argument(
        "--synchronous",
        choices=("full", "normal"),
        default="full",
        help="stratum --record: the record's [events] synchronous (full, the default, as deployed)",
    )
    parser.add_argument("--share-weight", type=float, default=0.0, help="stratum: pin the share weight")
    parser.add_argument(
        "--weight-spread", type=int, default=1, help="stratum with --share-weight: rigs on this many weights"
    )
    parser.add_argument("--block-weight", type=float, default=60.0, help="stratum without --node")
    parser.add_argument("--job-interval", type=float, default=300.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    raise_nofile(1 << 20)
    serve = {"stratum": serve_stratum, "echo": serve_echo, "bare": serve_bare, "relay": serve_relay}
    trio.run(serve[args.mode], args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
