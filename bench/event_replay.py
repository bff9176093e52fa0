"""Event replay benchmark: ``python bench/event_replay.py [--events N] [--windows 1,100,1000] [--json]``.

Replays a stored event log to one event_ws consumer over loopback and reports events per second
for each window size, next to two baselines measured in the same run on the same log:

- ``sqlite_read``: reading every row (id, event JSON text) from SQLite, nothing else;
- ``sqlite_read_json``: the same plus what a straightforward server does per event -- decode the
  stored event and encode the EVENT envelope with ``json.dumps``.

The consumer runs in its own process (so its cost does not land on the server's event loop) and
behaves like a node client: START_STREAM from the beginning, an ACK for every event (the ACKs for
the events of one read go out in one write). It is a real websocket client -- the handshake is
wsproto's, every frame it sends is masked with its own random key -- but lean, so it measures the
server and not a client library: its hot loop splits the server's (unmasked) frames by hand
(header and length), finds each event's id with a byte search, checks the ids arrive in order,
and answers with ACK frames masked and built before the clock starts. (A wsproto consumer caps at
~18,000 events/s of its own CPU on the 2-core benchmark machine, below what the server reaches.)
The proxy's server assembles frames from the stored text without decoding it.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio  # noqa: E402

from miningproxy.api.http import Router, serve_http  # noqa: E402
from miningproxy.events.chain_events import ChainEventSource, Vertex, VertexOutput, to_stored  # noqa: E402
from miningproxy.events.feed import EventFeed  # noqa: E402
from miningproxy.events.log import EventLog, StreamIdentity  # noqa: E402
from miningproxy.events.server import EventStreamServer  # noqa: E402

IDENTITY = StreamIdentity(
    "514eef12dd47211ed0f85e3cce0979714f404a550974225ec129266b91e6ee8c",
    "privatenet-fastmine",
    "fc40a227-7161-4da3-bb46-5f35b0a3213d",
)

_CONSUMER = textwrap.dedent(
    """
    import json, os, socket, sys, time
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, RejectConnection, Request, TextMessage

    MARK = b'"event":{"id":'

    def masked(text):
        # One client text frame (FIN, masked with a fresh random key), as RFC 6455 asks of clients.
        payload = text.encode()
        size = len(payload)
        assert size < 126
        key = os.urandom(4)
        stream = (key * (size // 4 + 1))[:size]
        body = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(size, "big")
        return bytes((0x81, 0x80 | size)) + key + body

    def main(port, count, window, ack_every):
        # The ACK frames, built before the clock starts.
        acks = [masked('{"type":"ACK","ack_event_id":%d,"window_size":%d}' % (i, window)) for i in range(count)]
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The handshake with wsproto (it checks the server's answer).
        ws = WSConnection(ConnectionType.CLIENT)
        sock.sendall(ws.send(Request(host="127.0.0.1", target="/v1a/event_ws")))
        head = b""
        while True:
            data = sock.recv(65536)
            if not data:
                raise SystemExit("closed by the server during the handshake")
            head += data
            ws.receive_data(data)
            events = list(ws.events())
            if any(isinstance(e, RejectConnection) for e in events):
                raise SystemExit("handshake refused")
            if any(isinstance(e, AcceptConnection) for e in events):
                break
        buf = head.split(b"\\r\\n\\r\\n", 1)[1]  # frames right behind the 101 response, if any
        started = time.perf_counter()
        cpu = time.process_time()
        sock.sendall(masked(json.dumps({"type": "START_STREAM", "last_ack_event_id": None, "window_size": window})))
        received = 0
        expected = 0
        while received < count:
            data = sock.recv(1 << 20)
            if not data:
                raise SystemExit("closed by the server")
            buf = buf + data if buf else data
            end = len(buf)
            pos = 0
            out = []
            # The server's frames by hand: FIN text frames, unmasked, no extensions.
            while end - pos >= 2:
                b0 = buf[pos]
                size = buf[pos + 1]
                if size & 0x80 or b0 != 0x81:
                    raise SystemExit("unexpected frame header %#x %#x" % (b0, size))
                head = 2
                if size == 126:
                    if end - pos < 4:
                        break
                    size = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                    head = 4
                elif size == 127:
                    if end - pos < 10:
                        break
                    size = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                    head = 10
                stop = pos + head + size
                if stop > end:
                    break
                mark = buf.find(MARK, pos + head, stop)
                if mark < 0:
                    raise SystemExit("not an EVENT frame: %r" % buf[pos + head : stop][:200])
                digits = mark + len(MARK)
                event_id = int(buf[digits : buf.index(b",", digits, stop)])
                if event_id != expected:
                    raise SystemExit("expected event %d, got %d" % (expected, event_id))
                expected += 1
                received += 1
                pos = stop
                if received % ack_every == 0 or received == count:
                    # like a node client: an ACK per event (those of one read written together)
                    out.append(acks[event_id])
            buf = buf[pos:]
            if out:
                sock.sendall(b"".join(out))
        seconds = time.perf_counter() - started
        print(json.dumps({"seconds": seconds, "events": received, "cpu_seconds": time.process_time() - cpu}))

    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    """
)


def _make_log(path: Path, count: int) -> int:
    """A node-shaped log of ``count`` events (blocks with one output: ~1.4 kB each, like a real node's)."""
    clock = iter(1795814404.0 + i * 0.001 for i in range(10**9))
    source = ChainEventSource("privatenet-fastmine", clock=lambda: next(clock))
    genesis = Vertex("00" * 32, 0, 1643902665, 8.0, 0)
    txs = [Vertex("11" * 32, 0, 1643902666, 1.0, 1), Vertex("22" * 32, 0, 1643902667, 1.0, 1)]
    events = source.load(genesis, txs)
    parent = genesis.hash
    script = bytes.fromhex("76a914" + "66" * 20 + "88ac")
    height = 0
    while len(events) < count:
        height += 1
        block = Vertex(
            f"{height:064x}",
            height,
            1643902667 + height,
            8.0,
            0,
            (parent, txs[0].hash, txs[1].hash),
            (VertexOutput(6400, script),),
        )
        events += source.add_block(block)
        parent = block.hash
    stored = to_stored(events[:count])
    with EventLog(path) as log:
        for start in range(0, count, 5000):
            log.append("node", stored[start : start + 5000], identity=IDENTITY)
    return sum(len(s.text) for s in stored) // count


def _baselines(path: Path) -> dict[str, float]:
    db = sqlite3.connect(path)
    started = time.perf_counter()
    rows = db.execute("SELECT id, body FROM events WHERE seq='node' ORDER BY id").fetchall()
    read_seconds = time.perf_counter() - started
    started = time.perf_counter()
    rows = db.execute("SELECT id, body FROM events WHERE seq='node' ORDER BY id").fetchall()
    frames = [
        json.dumps(
            {
                "type": "EVENT",
                "peer_id": IDENTITY.peer_id,
                "network": IDENTITY.network,
                "event": json.loads(body),
                "latest_event_id": len(rows) - 1,
                "stream_id": IDENTITY.stream_id,
            },
            separators=(",", ":"),
            ensure_ascii=False,
        )
        for _, body in rows
    ]
    json_seconds = time.perf_counter() - started
    db.close()
    assert len(frames) == len(rows)
    return {"sqlite_read": len(rows) / read_seconds, "sqlite_read_json": len(rows) / json_seconds}


async def _replay(
    path: Path, count: int, window: int, ack_every: int = 1, consumer: dict[str, Any] | None = None
) -> float:
    """Events/s of one replay; ``consumer`` (if given) gets the consumer's report (seconds, events,
    cpu_seconds: its own CPU time while streaming)."""
    with EventLog(path) as log:
        feed = EventFeed(log, "node")
        router = Router()
        router.websocket("/v1a/event_ws", EventStreamServer(feed).handle)
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(serve_http, router, "127.0.0.1", 0)
            port = listeners[0].socket.getsockname()[1]
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
            result = await trio.run_process(
                [sys.executable, "-c", _CONSUMER, str(port), str(count), str(window), str(ack_every)],
                capture_stdout=True,
                env=env,
            )
            nursery.cancel_scope.cancel()
    outcome = json.loads(result.stdout)
    if consumer is not None:
        consumer.update(outcome)
    return outcome["events"] / outcome["seconds"]


def run(
    *,
    events: int = 20_000,
    windows: tuple[int, ...] = (1, 100, 1000),
    reps: int = 1,
    window1_events: int = 3000,
) -> dict[str, Any]:
    """Run the benchmark ``reps`` times (baselines and replays interleaved); returns the medians of
    events/s for replay at each window and for the baselines."""
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.sqlite3"
        event_bytes = _make_log(path, events)
        for _ in range(reps):
            one: dict[str, Any] = dict(_baselines(path))
            for window in windows:
                count = min(events, window1_events) if window == 1 else events  # window 1 is round-trip bound
                consumer: dict[str, Any] = {}
                one[window] = trio.run(_replay, path, count, window, 1, consumer)
                one[("cpu", window)] = consumer["cpu_seconds"] / consumer["seconds"]
            # The same at window 1000 with a client that acknowledges every 100th event: the cost of
            # the send path alone, without one ACK message to parse per event.
            one["ack100"] = trio.run(_replay, path, events, 1000, 100)
            runs.append(one)
    med = statistics.median
    result: dict[str, Any] = {
        "events": events,
        "event_bytes": event_bytes,
        "reps": reps,
        "sqlite_read": med(r["sqlite_read"] for r in runs),
        "sqlite_read_json": med(r["sqlite_read_json"] for r in runs),
        "replay": {w: med(r[w] for r in runs) for w in windows},
        "replay_runs": {w: [round(r[w]) for r in runs] for w in windows},
        "replay_window1000_ack_every_100": med(r["ack100"] for r in runs),
        # The consumer's own CPU time over the wall time of the replay: well below 1, it is not
        # what limits the rate.
        "consumer_cpu_share": {w: round(med(r[("cpu", w)] for r in runs), 2) for w in windows},
    }
    result["replay_vs_read_json"] = {w: r / result["sqlite_read_json"] for w, r in result["replay"].items()}
    return result


def format_result(result: dict[str, Any]) -> str:
    lines = [
        f"event replay: {result['events']} events of ~{result['event_bytes']} bytes, one consumer acking every event",
        f"  baseline sqlite read:               {result['sqlite_read']:>10,.0f} events/s",
        f"  baseline sqlite read + json encode: {result['sqlite_read_json']:>10,.0f} events/s",
    ]
    shares = result.get("consumer_cpu_share", {})
    for window, rate in result["replay"].items():
        ratio = result["replay_vs_read_json"][window]
        share = f"; consumer busy {shares[window]:.0%}" if window in shares else ""
        lines.append(
            f"  /event_ws replay, window {window:>4}:     {rate:>10,.0f} events/s  ({ratio:.2f}x read+json{share})"
        )
    batched = result["replay_window1000_ack_every_100"]
    lines.append(f"  same, window 1000, ACK every 100th: {batched:>10,.0f} events/s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--windows", default="1,100,1000")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(events=args.events, windows=tuple(int(w) for w in args.windows.split(",")))
    print(json.dumps(result) if args.json else format_result(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
