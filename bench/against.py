"""The share-path rig simulator against any Hathor Stratum server: ``python -m bench.against``.

``python -m bench.against --port P [--host H] [--rigs N] [--window W] [--seconds S]
[--pid PID[,PID...]] [--address A] [--authorize auto|yes|no]``

Connects ``N`` simulated rigs (``bench/rigsim.py``, the same simulator figure 1 uses), each
subscribing with ``{"address": A}`` (``--address``, default the privatenet genesis wallet: give
an address of the server's network) and, where the server has the method, authorizing as
``A.rigI``; mines valid shares for the jobs the server hands out and keeps ``W`` in flight per rig,
then prints one JSON line: replies counted over ``S`` seconds after a warm-up, shares/s, and with
``--pid`` (the server's process id, same machine; several, comma-separated, are added up: a
server and the node it hands every block to) the server's CPU seconds and shares per CPU
second, the figure's "on one core" number. Give the server a low share difficulty (weight ~0.1,
difficulty ~1e-5): the simulator finds each share by hashing, like a rig.

``--authorize auto`` (the default) first asks the server on one connection, and the rigs
authorize only where it says yes: the proxy and cgminer-style pools answer ``authorize``; the
node's own Stratum has no such method and closes the connection on it (JSON-RPC codes <= -32600
are fatal there); tx-mining-service never answers it.

Every reply counts as answered; ``errors`` says how many were refusals, ``error_codes`` counts
them by code and ``first_error`` shows the first. A server that answers 31 "stale job" takes one
share per job (the node's own Stratum, tx-mining-service): from then on each rig sends one share
per job and waits for the next (``one_share_per_job``), instead of resubmitting into refusals.
``job_weights`` gives the lowest and highest share weight the server asked for during the run, and
``simulator_hashing_s`` how long the simulator spent finding shares: past half the run a
``warning`` says the rate is the simulator's (a server that raises its share weight, as the node
does with every share, ends up there). A rig that fails to get a job, or that the server closes
during the run, fails the whole command (exit status 1) with the server's last line: a
comparison never rests on fewer rigs than asked.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.common import PRIVATENET_ADDRESS, json_object

ROOT = Path(__file__).resolve().parent.parent

PROBE_TIMEOUT = 10.0  # for the server's first job
PROBE_QUIET = 2.0  # then, for an answer to authorize
HASHING_BOUND = 0.5  # of the run spent hashing, beyond which the rate is the simulator's


def probe_authorize(
    host: str, port: int, address: str, timeout: float = PROBE_TIMEOUT, quiet: float = PROBE_QUIET
) -> bool:
    """Whether to authorize, asked on one connection: subscribe, then authorize, and read until
    the authorize's reply (id 2), the server's close, or ``quiet`` seconds after its first job.
    Only a success is a yes: the node closes on authorize (-32601), tx-mining-service never
    answers it. RuntimeError, with what the server sent, when no job comes within ``timeout``."""
    lines: list[str] = []
    with socket.create_connection((host, port), timeout=timeout) as sock:
        hello = (
            f'{{"id":1,"method":"subscribe","params":{{"address":"{address}"}}}}\n'
            f'{{"id":2,"method":"authorize","params":["{address}.probe","x"]}}\n'
        )
        sock.sendall(hello.encode())
        buffer = b""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                return False  # closed on authorize (or on the subscribe: the run says which)
            buffer += data
            while b"\n" in buffer:
                raw, _, buffer = buffer.partition(b"\n")
                lines.append(raw.decode(errors="replace"))
                message = json_object(raw)
                if message is None:
                    continue
                if message.get("method") == "job" and deadline - time.monotonic() > quiet:
                    deadline = time.monotonic() + quiet  # a job came: authorize gets a little longer
                elif message.get("id") == 2 and "method" not in message:
                    return message.get("error") is None and message.get("result") in ("ok", True)
        if any('"job"' in line for line in lines):
            return False  # jobs, and no answer to authorize: the server ignores it
    raise RuntimeError(f"no job within {timeout:g}s; the server sent {lines[:4]}")


def _pids(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a pid or pids separated by commas, got {text!r}"
        ) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rigs", type=int, default=100)
    parser.add_argument("--window", type=int, default=4, help="shares in flight per rig")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument(
        "--pid",
        type=_pids,
        help="the server's pid, for its CPU time (same machine); PID,PID,... adds up several processes "
        "(a server and the node it hands blocks to)",
    )
    parser.add_argument(
        "--address",
        default=PRIVATENET_ADDRESS,
        help="payout address of the server's network the rigs subscribe with (and authorize as ADDRESS.rigN)",
    )
    parser.add_argument(
        "--authorize",
        choices=("auto", "yes", "no"),
        default="auto",
        help="send authorize after subscribe (auto: ask the server first)",
    )
    args = parser.parse_args(argv)
    for pid in args.pid or []:
        if not Path(f"/proc/{pid}/stat").exists():
            parser.error(f"--pid {pid}: no such process on this machine")
    if args.authorize == "auto":
        try:
            authorize = probe_authorize(args.host, args.port, args.address)
        except (OSError, RuntimeError) as exc:
            print(json.dumps({"error": f"asking the server whether it takes authorize: {exc}"}), flush=True)
            return 1
    else:
        authorize = args.authorize == "yes"
    command = [
        sys.executable,
        "-m",
        "bench.rigsim",
        *("--host", args.host, "--port", str(args.port)),
        *("--count", str(args.rigs), "--window", str(args.window)),
        *("--address", args.address),
        "--stale-waits",
    ]
    if not authorize:
        command.append("--no-authorize")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env) as sim:
        assert sim.stdin is not None and sim.stdout is not None
        ready = json.loads(sim.stdout.readline() or "{}")
        if ready.get("ready") != args.rigs or ready.get("failed"):
            print(
                json.dumps({"error": "not every rig got a job", "authorize": authorize, **ready}), flush=True
            )
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
        "authorize": authorize,
        "seconds": answer["seconds"],
        "answered": answer["ok"] + answer["errors"],
        "errors": answer["errors"],
        "shares_per_s": answer["rate"],
    }
    if args.pid is not None:
        out["server_cpu_s"] = answer["server_cpu"]
        out["shares_per_cpu_s"] = answer["cpu_rate"]
    if answer["errors"]:
        out["error_codes"] = answer["error_codes"]
        out["first_error"] = answer["first_error"]
    out["one_share_per_job"] = answer["one_per_job"]
    out["job_weights"] = answer["weights"]
    out["simulator_hashing_s"] = answer["hashing"]
    if answer["hashing"] > HASHING_BOUND * answer["seconds"]:
        out["warning"] = (
            f"the simulator spent {answer['hashing']:.1f} of {answer['seconds']:.1f} s finding shares "
            f"(job weights up to {max(answer['weights'] or [0]):g}): the rate measures the simulator, "
            "not the server; give the server a lower share weight"
        )
    if answer["rigs"] != args.rigs:
        out["error"] = f"{args.rigs - answer['rigs']} of {args.rigs} rigs were closed during the run"
        out["failures"] = answer["failures"]
        print(json.dumps(out), flush=True)
        return 1
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
