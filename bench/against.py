"""The share-path rig simulator against any Hathor Stratum server: ``python -m bench.against``.

``python -m bench.against --port P [--host H] [--rigs N] [--window W] [--seconds S] [--pid PID]``

Connects ``N`` simulated rigs (``bench/rigsim.py``, the same simulator figure 1 uses), each
subscribing and authorizing as ``ADDRESS.rigI`` (``--address``, default the privatenet genesis
wallet), mines valid shares for the jobs the server hands out and keeps ``W`` in flight per rig,
then prints one JSON line: replies counted over ``S`` seconds after a warm-up, shares/s, and with
``--pid`` (the server's process id, same machine) the server's CPU seconds and shares per CPU
second, the figure's "on one core" number. Give the server a low share difficulty (weight ~0.1,
difficulty ~1e-5): the simulator finds each share by hashing, like a rig.

Every reply counts as answered; ``errors`` says how many were refusals and ``first_error`` shows
the first, so a server that rejects the simulator's shares is visible at once.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rigs", type=int, default=100)
    parser.add_argument("--window", type=int, default=4, help="shares in flight per rig")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--pid", type=int, help="the server's pid, for its CPU time (same machine)")
    parser.add_argument("--address", help="payout address the rigs authorize with (ADDRESS.rigN)")
    args = parser.parse_args(argv)
    if args.pid is not None and not Path(f"/proc/{args.pid}/stat").exists():
        parser.error(f"--pid {args.pid}: no such process on this machine")
    command = [
        sys.executable,
        "-m",
        "bench.rigsim",
        *("--host", args.host, "--port", str(args.port)),
        *("--count", str(args.rigs), "--window", str(args.window)),
    ]
    if args.address:
        command += ["--address", args.address]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env) as sim:
        assert sim.stdin is not None and sim.stdout is not None
        ready = json.loads(sim.stdout.readline() or "{}")
        if ready.get("ready") != args.rigs:
            print(json.dumps({"error": "not every rig got a job", **ready}), flush=True)
            sim.stdin.close()
            return 1
        shares = {"cmd": "shares", "seconds": args.seconds, "warmup": args.warmup, "pid": args.pid}
        sim.stdin.write(json.dumps(shares) + "\n")
        sim.stdin.flush()
        answer = json.loads(sim.stdout.readline())
        sim.stdin.close()
    out = {
        "rigs": args.rigs,
        "window": args.window,
        "seconds": answer["seconds"],
        "answered": answer["ok"] + answer["errors"],
        "errors": answer["errors"],
        "shares_per_s": answer["rate"],
    }
    if args.pid is not None:
        out["server_cpu_s"] = answer["server_cpu"]
        out["shares_per_cpu_s"] = answer["cpu_rate"]
    if answer["first_error"]:
        out["first_error"] = answer["first_error"]
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
