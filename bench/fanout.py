"""Figure 2, job fan-out: from the upstream's ``mining.notify`` to the last of N rigs holding its job.

A fake node (``bench/fakenode.py``, its own process) takes the clock right before it writes
``mining.notify`` with a new tip; the proxy (real MiningUpstream -> PoolService -> StratumServer,
its own process) turns it into one job per rig; the rig simulator (a third process) reports, for
each rig, the kernel's receive stamp of the clean job (``SO_TIMESTAMPNS``: the moment the job
reached the rig's socket) and, as context, when the simulator itself read it. Latency per rig =
stamp - t0. The kernel stamp is the figure: one simulator process reading 10,000 sockets takes
longer than a fast server takes to write them, and its own lag is not the server's.

Baseline, measured in the same run and interleaved round by round: a bare trio server holding the
same N rig sockets that, on the node's message, writes one pre-encoded job line to each socket in
a loop, one non-blocking ``write`` each (the floor: what the proxy's fan-out would cost if a job
were free).

A machine whose hard RLIMIT_NOFILE holds fewer sockets per process than a size asks (the server
holds every rig's socket) runs that size with as many rigs as it can, and says so: its p99 is
not judged against the goal of the size asked, which is for that many rigs.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import Child, max_sockets, median, percentile

GOALS_P99 = {1000: 0.025, 10000: 0.250}
# Rounds per size. A round's p99 swings with the machine's load (1,000 rigs: 18-29 ms in one run;
# 10,000 rigs: 160-413 ms), so each size gets as many as its time allows: the median then moves
# less from one run of `make bench` to the next. A round takes ~1 s at 1,000 rigs, ~5 s at 10,000.
ROUNDS = {100: 9, 1000: 9, 10000: 7}
QUICK_ROUNDS = 2
SHARE_WEIGHT = 16.0  # pinned: no vardiff retarget sends jobs of its own during a round
# The rigs hold this many weights (16 and up, in vardiff's steps of 1/16), pinned rig by rig: a
# pool's rigs sit on a few dozen weights, and each weight's jobs are on terms of their own.
WEIGHT_SPREAD = 64
CURVE_POINTS = 200


def _setup(kind: str, size: int) -> tuple[Child, Child, Child]:
    node = Child("bench.fakenode", name=f"fake node ({kind})")
    node_port = node.receive()["port"]
    if kind == "proxy":
        args = (
            "stratum",
            "--node",
            f"http://127.0.0.1:{node_port}/v1a/",
            "--share-weight",
            str(SHARE_WEIGHT),
            "--weight-spread",
            str(WEIGHT_SPREAD),
        )
    else:
        args = ("bare", "--node", f"ws://127.0.0.1:{node_port}/v1a/mining_ws")
    server = Child("bench.servers", *args, name=f"{kind} server")
    port = server.receive(60)["port"]
    deadline = time.monotonic() + 30
    while node.ask(cmd="clients")["clients"] < 1:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{kind}: the server never connected to the fake node")
        time.sleep(0.05)
    rigs = Child(
        "bench.rigsim",
        *("--port", str(port), "--count", str(size), "--mode", "stratum" if kind == "proxy" else "bare"),
        name=f"rigsim ({kind})",
    )
    ready = rigs.receive(300)
    if ready["ready"] != size:
        raise RuntimeError(f"{kind}: only {ready['ready']} of {size} rigs ready: {ready}")
    return node, server, rigs


def _round(node: Child, rigs: Child) -> tuple[list[float], list[float]]:
    """(latencies by the kernel's receive stamps, latencies by the simulator's reads), sorted."""
    rigs.ask(cmd="arm", timeout=60)
    sent = node.ask(cmd="notify")
    answer = rigs.receive(90)
    if answer["missing"]:
        raise RuntimeError(f"{answer['missing']} rigs never received the new job")
    read = sorted(a - sent["t0"] for a in answer["arrivals"])
    stamps = answer["kernel"]
    if any(k is None for k in stamps):  # (never seen on Linux) no stamps: the reads must do
        return [], read
    return sorted(k - sent["t0_wall"] for k in stamps), read


def _curve(latencies: list[float]) -> list[float]:
    """The latency distribution at CURVE_POINTS evenly spaced quantiles (for the plot)."""
    n = len(latencies)
    return [latencies[min(n - 1, int(i * n / CURVE_POINTS))] for i in range(CURVE_POINTS)] + [latencies[-1]]


def run(
    *, quick: bool = False, sizes: tuple[int, ...] | None = None, rounds: int | None = None
) -> dict[str, Any]:
    sizes = sizes or ((100, 1000) if quick else (100, 1000, 10000))
    cap = max_sockets()
    result: dict[str, Any] = {
        "share_weight": SHARE_WEIGHT,
        "weight_spread": WEIGHT_SPREAD,
        "sizes": {},
        "cap": cap,
        "capped": {},  # size asked -> rigs run, where the machine holds fewer sockets
    }
    measure = "kernel"  # "read" if some round had no kernel stamps
    for size in sizes:
        size_rounds = rounds or (QUICK_ROUNDS if quick else ROUNDS.get(size, 5))
        rigs_run = min(size, cap)
        if rigs_run != size:
            result["capped"][str(size)] = rigs_run
        children: dict[str, tuple[Child, Child, Child]] = {}
        per_round: dict[str, list[list[float]]] = {"baseline": [], "proxy": []}
        read_rounds: dict[str, list[list[float]]] = {"baseline": [], "proxy": []}
        try:
            for kind in per_round:
                children[kind] = _setup(kind, rigs_run)
            for _ in range(size_rounds):
                for kind in per_round:
                    node, _, rigs = children[kind]
                    stamped, read = _round(node, rigs)
                    if not stamped:
                        measure, stamped = "read", read
                    per_round[kind].append(stamped)
                    read_rounds[kind].append(read)
                    time.sleep(0.2 + rigs_run / 20000)  # let the servers settle before the next round
            # The proxy's longest collector pause per generation, connections and rounds included.
            gc_longest = children["proxy"][1].ask(cmd="stats").get("gc_longest", {})
        finally:
            for trio_ in children.values():
                for child in reversed(trio_):
                    child.close()
        summary: dict[str, Any] = {"rounds": size_rounds, "rigs": rigs_run}
        for kind, lats in per_round.items():
            summary[kind] = {
                "p50": median([percentile(r, 50) for r in lats]),
                "p99": median([percentile(r, 99) for r in lats]),
                "max": median([r[-1] for r in lats]),
                "p99_runs": [round(percentile(r, 99) * 1000, 2) for r in lats],
                "p99_read": median([percentile(r, 99) for r in read_rounds[kind]]),
                "curve": _curve(lats[len(lats) // 2]),
            }
        summary["proxy"]["gc_longest_ms"] = {gen: round(took * 1000, 1) for gen, took in gc_longest.items()}
        summary["ratio_p99"] = summary["proxy"]["p99"] / summary["baseline"]["p99"]
        summary["ratio_p50"] = summary["proxy"]["p50"] / summary["baseline"]["p50"]
        result["sizes"][str(size)] = summary
    result["measure"] = measure
    return result


if __name__ == "__main__":
    import json
    import sys

    out = run(quick="--quick" in sys.argv)
    for s in out["sizes"].values():
        for k in ("baseline", "proxy"):
            s[k].pop("curve")
    print(json.dumps(out, indent=1))
