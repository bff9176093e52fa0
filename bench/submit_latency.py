"""Figure 5, block submit latency: from the winning share leaving the rig to ``mining.submit``
arriving at the node.

Three processes: a fake node (``bench/fakenode.py``) that stamps each ``mining.submit`` as it
arrives; the proxy (the real MiningUpstream connected to that node, PoolService with its durable
record on, StratumServer), serving jobs whose share weight equals the block weight (1.0), so every
valid share is a block; and one simulated rig that stamps each share right before writing it, one
at a time, a few milliseconds apart. Latency = node arrival - rig send (CLOCK_MONOTONIC is shared
by all processes), matched by nonce: it covers two loopback hops, the share check, the block's
assembly and the upstream write.

Baseline, interleaved in the same run: a bare trio relay that writes every line from the rig as
one websocket message to the node (the same two hops and the same websocket stack, no work).
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import Child, percentile

GOAL_P99 = 0.002
WEIGHT = 1.0
GAP = 0.004  # seconds between a reply and the next share


def _setup(kind: str) -> tuple[Child, Child, Child]:
    node = Child("bench.fakenode", "--block-weight", str(WEIGHT), name=f"fake node ({kind})")
    node_port = node.receive()["port"]
    if kind == "proxy":
        args = (
            "stratum",
            *("--node", f"http://127.0.0.1:{node_port}/v1a/", "--share-weight", str(WEIGHT), "--record"),
        )
    else:
        args = ("relay", "--node", f"ws://127.0.0.1:{node_port}/v1a/mining_ws")
    server = Child("bench.servers", *args, name=f"{kind} server")
    port = server.receive(60)["port"]
    deadline = time.monotonic() + 30
    while node.ask(cmd="clients")["clients"] < 1:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{kind}: the server never connected to the fake node")
        time.sleep(0.05)
    mode = "stratum" if kind == "proxy" else "relay"
    rig = Child("bench.rigsim", "--port", str(port), "--count", "1", "--mode", mode, name=f"rig ({kind})")
    if rig.receive(60)["ready"] != 1:
        raise RuntimeError(f"{kind}: the rig is not ready")
    return node, server, rig


def _batch(kind: str, node: Child, rig: Child, count: int) -> list[float]:
    sends = rig.ask(60 + count * 0.1, cmd="submit", count=count, gap=GAP)["sends"]
    time.sleep(0.05)
    arrivals = dict(node.ask(cmd="submits")["submits"])
    missing = [n for n, _ in sends if n not in arrivals]
    if missing:
        raise RuntimeError(f"{kind}: {len(missing)} of {len(sends)} shares never reached the node")
    return [arrivals[nonce] - sent for nonce, sent in sends]


def run(*, quick: bool = False, count: int | None = None, chunks: int | None = None) -> dict[str, Any]:
    count = count or (150 if quick else 600)
    chunks = chunks or (1 if quick else 3)
    children: dict[str, tuple[Child, Child, Child]] = {}
    latencies: dict[str, list[float]] = {"baseline": [], "proxy": []}
    try:
        for kind in latencies:
            children[kind] = _setup(kind)
        for _ in range(chunks):
            for kind in latencies:
                node, _, rig = children[kind]
                latencies[kind] += _batch(kind, node, rig, count // chunks)
    finally:
        for trio_ in children.values():
            for child in reversed(trio_):
                child.close()
    result: dict[str, Any] = {"samples": len(latencies["proxy"]), "gap": GAP}
    for kind, lats in latencies.items():
        result[kind] = {
            "p50": percentile(lats, 50),
            "p90": percentile(lats, 90),
            "p99": percentile(lats, 99),
            "max": max(lats),
            "sorted": sorted(lats),
        }
    result["ratio_p99"] = result["proxy"]["p99"] / result["baseline"]["p99"]
    result["ratio_p50"] = result["proxy"]["p50"] / result["baseline"]["p50"]
    return result


if __name__ == "__main__":
    import json
    import sys

    out = run(quick="--quick" in sys.argv)
    for k in ("baseline", "proxy"):
        out[k].pop("sorted")
    print(json.dumps(out, indent=1))
