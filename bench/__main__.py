"""``python -m bench [--quick] [--only NAME ...]``: run the benchmarks, write docs/BENCHMARKS.md.

Every figure is measured against a baseline run in the same process tree, on the same machine,
interleaved with it where the figure allows. Results are merged into ``docs/bench/results.json``
(so ``--only`` refreshes some figures and keeps the others) and the document and its plots
(``docs/bench/*.png``, when matplotlib is installed: ``pip install -e '.[bench]'``) are written
from that file. Each full run of a figure also adds a line to ``docs/bench/history.jsonl``, and the
document shows the goals over the last runs (bench/history.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import history, report
from bench.common import ROOT, machine, raise_nofile


def _share_path(quick: bool) -> dict[str, Any]:
    from bench import share_path

    return share_path.run(quick=quick)


def _fanout(quick: bool) -> dict[str, Any]:
    from bench import fanout

    return fanout.run(quick=quick)


def _connections(quick: bool) -> dict[str, Any]:
    from bench import connections

    return connections.run(quick=quick)


def _event_replay(quick: bool) -> dict[str, Any]:
    from bench import event_replay

    if quick:
        return event_replay.run(events=5000, reps=1, window1_events=1000)
    return event_replay.run(events=20_000, reps=3)


def _submit_latency(quick: bool) -> dict[str, Any]:
    from bench import submit_latency

    return submit_latency.run(quick=quick)


def _hashing(quick: bool) -> dict[str, Any]:
    from hashing.bench import run_hash_bench

    return run_hash_bench(1.0 if quick else 5.0, os.cpu_count() or 1)


FIGURES: dict[str, Callable[[bool], dict[str, Any]]] = {
    "share_path": _share_path,
    "fanout": _fanout,
    "connections": _connections,
    "event_replay": _event_replay,
    "submit_latency": _submit_latency,
    "hashing": _hashing,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and short runs (< 2 minutes)")
    parser.add_argument("--only", nargs="+", choices=sorted(FIGURES), metavar="NAME", help=", ".join(FIGURES))
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where BENCHMARKS.md and bench/ go")
    parser.add_argument("--no-doc", action="store_true", help="print the results, write nothing")
    parser.add_argument("--render", action="store_true", help="only rewrite the document from stored results")
    args = parser.parse_args(argv)
    raise_nofile(1 << 20)
    names = [] if args.render else args.only or list(FIGURES)
    results_path = args.out / "bench" / "results.json"
    stored: dict[str, Any] = {}
    if results_path.exists() and not args.no_doc:
        stored = json.loads(results_path.read_text())
    history_path = args.out / "bench" / "history.jsonl"
    run_id = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    code = history.commit(ROOT)
    started = time.monotonic()
    for name in names:
        print(f"bench: {name}{' (quick)' if args.quick else ''} ...", file=sys.stderr, flush=True)
        begin = time.monotonic()
        host = machine()
        result = FIGURES[name](args.quick)
        stored[name] = {
            "result": result,
            "machine": {**host, "load_after": os.getloadavg()[0]},
            "command": "python -m bench --only " + name + (" --quick" if args.quick else ""),
            "quick": args.quick,
            "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "seconds": time.monotonic() - begin,
        }
        if not args.quick and not args.no_doc:  # quick runs use other sizes: not comparable
            history.append(
                history_path, history.entry(name, result, run=run_id, when=stored[name]["when"], code=code)
            )
        print(
            f"bench: {name} done in {stored[name]['seconds']:.0f}s: "
            + "; ".join(report.headline(name, result)),
            file=sys.stderr,
            flush=True,
        )
    print(f"bench: total {time.monotonic() - started:.0f}s", file=sys.stderr)
    if args.no_doc:
        print(json.dumps({n: stored[n] for n in names}, indent=1, default=str))
        return 0
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(stored, indent=1, default=str) + "\n")
    plots = report.plots(stored, args.out / "bench")
    recent = history.section(history.load(history_path))
    (args.out / "BENCHMARKS.md").write_text(report.render(stored, plots, recent))
    print(f"bench: wrote {args.out / 'BENCHMARKS.md'} and {results_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
