"""Figure 3, connections: memory per idle subscribed rig (RSS delta / N).

A fresh server process is started, its RSS read (after a garbage collection) once it serves the
first template, then N rigs connect, subscribe and authorize (each ``ADDRESS.rigI``, so each is a
miner of its own) and hold their job; after a second of quiet and another collection the RSS is
read again. Memory per rig = (RSS after - RSS before) / N.

The proxy runs with the product's default Stratum settings (vardiff, job refresh, client version
query) apart from the connection limits. Baseline: a bare trio server that keeps one task per
connection and answered the subscribe with one job line.

One process holds at most the hard RLIMIT_NOFILE of sockets (this machine cannot raise it), so the
largest size is capped there; the rigs are spread over several simulator processes.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import Child, max_sockets, rss_bytes

GOAL_KIB = 30.0


def _measure(kind: str, size: int) -> dict[str, Any]:
    args = ("stratum", "--job-interval", "30") if kind == "proxy" else ("bare",)
    server = Child("bench.servers", *args, name=f"{kind} server")
    sims: list[Child] = []
    try:
        port = server.receive(60)["port"]
        time.sleep(0.5)
        server.ask(cmd="gc")
        before = rss_bytes(server.pid)
        per_process = max_sockets()
        left = size
        while left > 0:
            count = min(left, per_process)
            left -= count
            mode = "stratum" if kind == "proxy" else "bare"
            sims.append(Child("bench.rigsim", "--port", str(port), "--count", str(count), "--mode", mode))
        started = time.monotonic()
        for sim in sims:
            ready = sim.receive(600)
            if ready["failed"]:
                raise RuntimeError(f"{kind}: {ready['failed']} rigs failed to connect: {ready['failures']}")
        connect_seconds = time.monotonic() - started
        time.sleep(1.0)
        server.ask(cmd="gc")
        after = rss_bytes(server.pid)
        return {
            "rss_before": before,
            "rss_after": after,
            "per_rig_kib": (after - before) / size / 1024,
            "connect_seconds": connect_seconds,
        }
    finally:
        for child in [*sims, server]:
            child.close()


def run(*, quick: bool = False, sizes: tuple[int, ...] | None = None) -> dict[str, Any]:
    requested = sizes or ((1000, 2000) if quick else (10000, 20000))
    cap = max_sockets()
    result: dict[str, Any] = {"requested": list(requested), "cap": cap, "sizes": {}, "capped": {}}
    for size in requested:
        run_size = min(size, cap)
        if run_size != size:
            result["capped"][str(size)] = run_size
        entry = {kind: _measure(kind, run_size) for kind in ("baseline", "proxy")}
        entry["rigs"] = run_size
        entry["ratio"] = entry["proxy"]["per_rig_kib"] / entry["baseline"]["per_rig_kib"]
        result["sizes"][str(size)] = entry
    return result


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
