"""Figure 1, the share path: shares/s end to end over loopback, against a line-echo floor.

A rig's submit line goes in, is parsed, checked (sha256d on the job's midstate, duplicate and
stale checks), credited, and its reply goes out. The rig simulator (another process) keeps a fixed
number of shares in flight per connection and counts the replies; the same simulator, sending the
same lines, drives a bare trio line-echo server on the same kind of sockets: the floor.

Three servers are measured, interleaved, each ``reps`` times:

- ``echo``: the floor;
- ``proxy``: PoolService + StratumServer (shares validated and credited in memory);
- ``proxy+record``: the same with the pool's durable accounting record on (SQLite WAL,
  synchronous=full, group commit), as deployed: a rig's "ok" waits for its record's commit.

Besides shares per wall-clock second, each run reports shares per CPU-second of the server
process (its CPU time over the counting window, read from /proc): on this shared machine that is
the steadier measure of "shares/s on one core".
"""

from __future__ import annotations

from typing import Any

from bench.common import Child, median

SHARE_WEIGHT = 0.1  # a valid share every ~1.07 hashes: the rig spends its time on I/O, not hashing
WINDOWS = {1: 32, 100: 4, 1000: 2}  # shares in flight per connection
SERVERS = {
    "echo": (("echo",), "echo"),
    "proxy": (("stratum", "--share-weight", str(SHARE_WEIGHT)), "stratum"),
    "proxy+record": (("stratum", "--share-weight", str(SHARE_WEIGHT), "--record"), "stratum"),
}
GOAL_RATE = 20_000
GOAL_RATIO = 3.0


def run(
    *,
    quick: bool = False,
    sizes: tuple[int, ...] = (1, 100, 1000),
    seconds: float | None = None,
    reps: int | None = None,
) -> dict[str, Any]:
    seconds = seconds if seconds is not None else (1.0 if quick else 2.5)
    reps = reps if reps is not None else (1 if quick else 3)
    results: dict[str, Any] = {"seconds": seconds, "reps": reps, "share_weight": SHARE_WEIGHT, "sizes": {}}
    for size in sizes:
        window = WINDOWS.get(size, 2)
        servers: dict[str, Child] = {}
        rigs: dict[str, Child] = {}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in SERVERS}
        try:
            for name, (args, mode) in SERVERS.items():
                servers[name] = Child("bench.servers", *args, name=f"{name} server")
                port = servers[name].receive()["port"]
                rigs[name] = Child(
                    "bench.rigsim",
                    *("--port", str(port), "--count", str(size), "--mode", mode, "--window", str(window)),
                    name=f"rigsim for {name}",
                )
                ready = rigs[name].receive(180)
                if ready["ready"] != size:
                    raise RuntimeError(f"{name}: only {ready['ready']} of {size} rigs ready: {ready}")
            for _ in range(reps):
                for name in SERVERS:  # interleaved: a change in the machine's load hits every server alike
                    answer = rigs[name].ask(
                        seconds + 30, cmd="shares", seconds=seconds, warmup=0.3, pid=servers[name].pid
                    )
                    if answer["errors"]:
                        raise RuntimeError(
                            f"{name}: {answer['errors']} shares refused: {answer['first_error']}"
                        )
                    runs[name].append(answer)
        finally:
            for child in [*rigs.values(), *servers.values()]:
                child.close()
        summary: dict[str, Any] = {"window": window}
        for name, answers in runs.items():
            summary[name] = {
                "rate": median([a["rate"] for a in answers]),
                "cpu_rate": median([a["cpu_rate"] or 0.0 for a in answers]),
                "cpu_share": median([a["server_cpu"] / a["seconds"] for a in answers]),
                "runs": [round(a["rate"]) for a in answers],
            }
        for name in ("proxy", "proxy+record"):
            summary[name]["ratio"] = summary["echo"]["rate"] / summary[name]["rate"]
            summary[name]["cpu_ratio"] = summary["echo"]["cpu_rate"] / summary[name]["cpu_rate"]
        results["sizes"][str(size)] = summary
    return results


def verdicts(result: dict[str, Any]) -> list[str]:
    out = []
    for size, s in result["sizes"].items():
        for name in ("proxy", "proxy+record"):
            r = s[name]
            out.append(
                f"{name} at {size} connection(s): {r['cpu_rate']:,.0f} shares/CPU-s "
                f"({'met' if r['cpu_rate'] >= GOAL_RATE else 'MISSED'} >= {GOAL_RATE:,}), "
                f"{r['cpu_ratio']:.2f}x the echo floor ({'met' if r['cpu_ratio'] <= GOAL_RATIO else 'MISSED'} <= 3x)"
            )
    return out


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
