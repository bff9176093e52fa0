"""In-process costs of the share path and the job build: for A/B runs between two commits.

``python -m bench.inproc share [--count N] [--record]`` feeds N valid shares, 32 lines per read,
through one Session (LineFramer, Session.receive_many, the real PoolService judging and crediting them)
and prints the µs per share of the fastest and the median of six chunks. ``--record`` adds the
pool's durable record (SQLite in a temporary directory, ``synchronous=full``, as deployed) and
waits for each read's commit before taking the replies, as the server does; the µs are then the
event loop thread's CPU time (``time.thread_time``), without the writer thread and the fsync.

``python -m bench.inproc job [--sessions S] [--rounds R]`` gives S subscribed sessions a new
template R times and times each round's ``take_new_job`` + ``take_events`` for all of them (what
the fan-out builds per rig, without the sockets; on commits before ``take_new_job``, ``new_work``
+ ``data_to_send``): µs per rig, fastest and median. Where sessions book their jobs after the
fan-out (``Session.book``), the round books them all after the lines, as the fan-out does, and
``us_line_*`` is the time up to the last line: what a rig's job waits for. ``--solo``: the
sessions mine in solo mode, each paying its own address (every rig's job is on terms of its own).

``--instructions`` runs the same scenario under valgrind (``--tool=callgrind``) twice, once whole
and once without the measured loop, and prints the difference per share or per rig job. A count
of executed instructions does not move with the machine's load, so two commits can be compared
on a busy machine; it does not see cache misses or the system calls the real servers make, so it
complements the figures of ``make bench``, it does not replace them.

No sockets and no other process: the figures in docs/BENCHMARKS.md measure the proxy as rigs
meet it; these measure what the code itself costs.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import trio

from bench.common import PRIVATENET_ADDRESS
from bench.servers import FakeUpstream, fake_template

ROOT = Path(__file__).resolve().parent.parent
READ_LINES = 32  # lines per read, as at 1 connection in figure 1
SHARE_WEIGHT = 0.1  # as in figure 1: a valid nonce every ~1.07 hashes
JOB_WEIGHT = 16.0  # as in figure 2


async def _pool(nursery: trio.Nursery) -> Any:
    from miningproxy.metrics import Metrics
    from miningproxy.pool.service import PoolService

    upstream = FakeUpstream()
    pool = PoolService(
        upstream=upstream, address=PRIVATENET_ADDRESS, tag="bench", job_refresh=300.0, metrics=Metrics()
    )
    await nursery.start(upstream.run)
    await nursery.start(pool.run)
    _publish(upstream, 60.0)
    while pool.generation is None:
        await trio.sleep(0.001)
    return pool, upstream


def _publish(upstream: Any, block_weight: float) -> None:
    template = fake_template(block_weight)
    upstream.templates.publish(
        SimpleNamespace(node="bench", templates=[template], received_at=trio.current_time())
    )


def _session(pool: Any, weight: float, solo_index: int | None = None) -> Any:
    """A subscribed session at ``weight``; with ``solo_index``, a solo-mode one paying an address
    of its own (made from the index)."""
    from miningproxy.hathor.addresses import encode_address
    from miningproxy.hathor.networks import TESTNET, network_for_name
    from miningproxy.stratum.session import Session
    from miningproxy.stratum.settings import StratumSettings, VardiffSettings

    settings = StratumSettings(
        listen=("127.0.0.1", 0),
        vardiff=VardiffSettings(initial_weight=weight, min_weight=weight, max_weight=weight),
    )
    mode, address = "pool", PRIVATENET_ADDRESS
    if solo_index is not None:
        mode, address = "solo", encode_address(TESTNET.p2pkh_version, solo_index.to_bytes(20, "big"))
    session = Session(
        pool,
        settings,
        network_for_name("privatenet"),
        payout_mode=mode,
        peer="bench",
        now=trio.current_time(),
    )
    subscribe = {"id": 1, "method": "subscribe", "params": {"address": address}}
    session.receive_line(json.dumps(subscribe), trio.current_time())
    if not session.mining:
        raise RuntimeError(f"the session did not start mining: {session.data_to_send()!r}")
    session.data_to_send()
    session.take_events()
    return session


async def _record(nursery: trio.Nursery, pool: Any, directory: str) -> Any:
    """The pool's durable record, as bench.servers --record sets it up."""
    from miningproxy.events.feed import EventFeed
    from miningproxy.events.log import EventLog
    from miningproxy.events.pool_events import POOL_SEQ, PoolEvents, open_pool_stream

    event_log = EventLog(Path(directory) / "events.sqlite3", synchronous="full")
    open_pool_stream(event_log, "privatenet")
    events = PoolEvents(EventFeed(event_log, POOL_SEQ))
    await nursery.start(events.run)
    pool.events = events
    return events


async def _share(count: int, dry: bool, record: bool = False) -> dict[str, Any]:
    from miningproxy.stratum.framing import LineFramer

    async with trio.open_nursery() as nursery:
        pool, _ = await _pool(nursery)
        directory = tempfile.TemporaryDirectory()
        events = await _record(nursery, pool, directory.name) if record else None
        clock = time.thread_time if record else time.perf_counter
        session = _session(pool, SHARE_WEIGHT)
        job = session.current_job
        nonces: list[int] = []
        nonce = 0
        while len(nonces) < count:  # mined here, outside the measured loop
            nonce += 1
            if job.hasher.hash_nonce_bytes(nonce.to_bytes(16, "big")) < job.share_target:
                nonces.append(nonce)
        lines = [
            f'{{"id":{i},"method":"submit","params":{{"job_id":"{job.job_id}","nonce":"{n:032x}"}}}}\n'
            for i, n in enumerate(nonces, start=10)
        ]
        reads = ["".join(lines[i : i + READ_LINES]).encode() for i in range(0, count, READ_LINES)]
        result: dict[str, Any] = {"scenario": "share", "shares": count, "record": record}
        if not dry:
            framer = LineFramer(session.settings.max_line)
            chunk = max(1, len(reads) // 6)
            per_share = []
            for start in range(0, len(reads), chunk):
                began = clock()
                for data in reads[start : start + chunk]:
                    session.receive_many(framer.feed(data), trio.current_time())
                    if events is not None:
                        await events.flush()  # the replies' "ok" waits for the commit
                    session.data_to_send()
                    session.take_events()
                    session.take_unsynced_accepts()
                done = sum(data.count(b"\n") for data in reads[start : start + chunk])
                per_share.append((clock() - began) / done * 1e6)
            if session.accepted != count:
                raise RuntimeError(f"{session.accepted} of {count} shares accepted: {dict(session.rejected)}")
            result.update(us_min=min(per_share), us_median=statistics.median(per_share))
        nursery.cancel_scope.cancel()
    directory.cleanup()
    return result


async def _job(sessions: int, rounds: int, dry: bool, solo: bool = False) -> dict[str, Any]:
    async with trio.open_nursery() as nursery:
        pool, upstream = await _pool(nursery)
        clients = [_session(pool, JOB_WEIGHT, index if solo else None) for index in range(sessions)]
        take_new_job = getattr(type(clients[0]), "take_new_job", None)
        book = getattr(type(clients[0]), "book", None)
        result: dict[str, Any] = {"scenario": "job", "sessions": sessions, "rounds": rounds, "solo": solo}
        per_rig = []
        per_rig_line = []  # up to the last rig's line: before the booking pass, where there is one
        for round_ in range(0 if dry else rounds):
            _publish(upstream, 60.0 + round_ + 1)  # a new template (another block weight), as on a new block
            seen = pool.generation
            while pool.generation is seen:
                await trio.sleep(0)
            now = trio.current_time()
            began = time.perf_counter()
            for session in clients:
                # As the fan-out does: the job's line handed over at once (take_new_job), or on
                # commits before it, queued and taken back.
                if take_new_job is None:
                    session.new_work(True, now)
                    session.data_to_send()
                elif take_new_job(session, True, now) is None:
                    raise RuntimeError("a session made no job")
                if book is None:
                    session.take_events()
            per_rig_line.append((time.perf_counter() - began) / sessions * 1e6)
            if book is not None:  # as the fan-out does once every rig has its line
                for session in clients:
                    book(session)
                    session.take_events()
            per_rig.append((time.perf_counter() - began) / sessions * 1e6)
        if per_rig:
            kept = per_rig[1:] or per_rig  # the first round also warms the caches up
            lines = per_rig_line[1:] or per_rig_line
            result.update(
                us_min=min(kept),
                us_median=statistics.median(kept),
                us_line_min=min(lines),
                us_line_median=statistics.median(lines),
            )
        nursery.cancel_scope.cancel()
    return result


def instructions(argv: list[str]) -> dict[str, Any]:
    """The scenario's instructions per unit: valgrind on the whole run minus a dry run."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("--instructions needs valgrind (apt install valgrind)")
    counts = []
    for extra in ([], ["--dry"]):
        command = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable]
        command += ["-m", "bench.inproc", *argv, *extra]
        run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
        found = re.search(r"Collected : (\d+)", run.stderr)
        if run.returncode != 0 or found is None:
            raise SystemExit(f"valgrind run failed ({run.returncode}): {run.stderr[-2000:]}")
        counts.append(int(found.group(1)))
    args = _parser().parse_args(argv)
    units = args.count if args.scenario == "share" else args.sessions * args.rounds
    return {
        "scenario": args.scenario,
        "instructions_per_unit": round((counts[0] - counts[1]) / units),
        "unit": "share" if args.scenario == "share" else "rig job",
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=("share", "job"))
    parser.add_argument("--count", type=int, default=30_000, help="shares (share)")
    parser.add_argument("--record", action="store_true", help="share: with the durable pool record")
    parser.add_argument("--sessions", type=int, default=1000, help="sessions (job)")
    parser.add_argument("--rounds", type=int, default=10, help="new templates (job)")
    parser.add_argument("--solo", action="store_true", help="job: solo mode, an address per session")
    parser.add_argument("--instructions", action="store_true", help="count instructions with valgrind")
    parser.add_argument("--dry", action="store_true", help=argparse.SUPPRESS)  # the set-up only
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if args.instructions:
        result = instructions([a for a in argv if a != "--instructions"])
    elif args.scenario == "share":
        result = trio.run(_share, args.count, args.dry, args.record)
    else:
        result = trio.run(_job, args.sessions, args.rounds, args.dry, args.solo)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
