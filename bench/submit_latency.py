"""Figure 5, block submit latency: from the winning share's arrival at the proxy to
``mining.submit`` written upstream (the goal's definition), and end to end into the node.

Three processes: a fake node (``bench/fakenode.py``) that stamps each ``mining.submit`` as it
arrives; the proxy (the real MiningUpstream connected to that node, PoolService with its durable
record on, StratumServer), serving jobs whose share weight equals the block weight (1.0), so every
valid share is a block; and one simulated rig that stamps each share as it writes it, one at a
time: the next one ``GAP`` after the proxy's reply and the node's acknowledgement that it read the
submit (a UDP datagram to the rig, sent once the node stamped it: a node that fell behind would
otherwise stamp a submit with the next one's time, see :class:`bench.kstamp.WsMessageStamps`).
Shares and submits are matched by nonce. Two measures:

``kernel`` (the goal's figure): the node socket's receive stamp of the read that completed the
    submit's websocket frame minus the rig socket's transmit stamp of the share's last byte, both
    taken by the kernel (CLOCK_REALTIME, see :mod:`bench.kstamp`). On loopback both are taken
    inside the sender's ``write``: the rig's when the share reaches the proxy's socket, the node's
    when the proxy's write reaches the node's socket. So this is "arrival at the proxy -> written
    upstream" plus a few microseconds of loopback stack, with no wake-up or parsing of the rig
    or the node in it.
``app`` (context, the figure's former measure): ``time.monotonic()`` in the node once its
    websocket library delivered the message minus ``time.monotonic()`` in the rig right before
    its ``send``: adds the node's wake-up, trio-websocket's reader task and a scheduler round trip.

Baseline, interleaved in the same run and measured both ways: a bare trio relay that writes every
line from the rig as one websocket message to the node (the same two hops and the same websocket
stack, no work).
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import Child, median, percentile

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
    node.ask(cmd="ack_to", port=rig.ask(cmd="acks")["port"])
    return node, server, rig


class Batch:
    """The latencies of one batch, both measures, in the order the shares were sent."""

    def __init__(self) -> None:
        self.kernel: list[float] = []
        self.app: list[float] = []
        self.send_cost: list[float] = []  # rig: time.time() before send() -> the kernel's stamp
        self.shared = 0  # node stamps taken on a read that held a later message too

    def __iadd__(self, other: Batch) -> Batch:
        self.kernel += other.kernel
        self.app += other.app
        self.send_cost += other.send_cost
        self.shared += other.shared
        return self


def _batch(kind: str, node: Child, rig: Child, count: int) -> Batch:
    sends = rig.ask(60 + count * 0.1, cmd="submit", count=count, gap=GAP)["sends"]
    time.sleep(0.05)
    answer = node.ask(cmd="submits")
    arrivals = {nonce: rest for nonce, *rest in answer["submits"]}
    missing = [s[0] for s in sends if s[0] not in arrivals]
    if missing:
        raise RuntimeError(f"{kind}: {len(missing)} of {len(sends)} shares never reached the node")
    batch = Batch()
    for nonce, sent, wall, tx in sends:
        arrived, rx, shared = arrivals[nonce]
        if tx is None or rx is None:
            raise RuntimeError(
                f"{kind}: no kernel timestamp for a share (rig {tx}, node {rx}; "
                f"{answer.get('unmatched')} node messages unmatched)"
            )
        batch.kernel.append(rx - tx)
        batch.app.append(arrived - sent)
        batch.send_cost.append(tx - wall)
        batch.shared += bool(shared)
    return batch


def _stats(lats: list[float]) -> dict[str, Any]:
    return {
        "p50": percentile(lats, 50),
        "p90": percentile(lats, 90),
        "p99": percentile(lats, 99),
        "max": max(lats),
        "over_goal": sum(x > GOAL_P99 for x in lats),
        "sorted": sorted(lats),
    }


def run(*, quick: bool = False, count: int | None = None, chunks: int | None = None) -> dict[str, Any]:
    count = count or (150 if quick else 600)
    chunks = chunks or (1 if quick else 3)
    children: dict[str, tuple[Child, Child, Child]] = {}
    batches: dict[str, Batch] = {"baseline": Batch(), "proxy": Batch()}
    try:
        for kind in batches:
            children[kind] = _setup(kind)
        for _ in range(chunks):
            for kind in batches:
                node, _, rig = children[kind]
                batches[kind] += _batch(kind, node, rig, count // chunks)
    finally:
        for trio_ in children.values():
            for child in reversed(trio_):
                child.close()
    # "baseline" and "proxy" hold the goal's measure (the kernel one); "end_to_end" the former one.
    result: dict[str, Any] = {
        "samples": len(batches["proxy"].kernel),
        "gap": GAP,
        "chunks": chunks,
        "measure": "kernel",
    }
    end_to_end: dict[str, Any] = {}
    for kind, batch in batches.items():
        result[kind] = _stats(batch.kernel)
        result[kind]["shared_stamps"] = batch.shared
        result[kind]["rig_send_cost_p50"] = median(batch.send_cost)
        end_to_end[kind] = _stats(batch.app)
    for r in (result, end_to_end):
        r["ratio_p99"] = r["proxy"]["p99"] / r["baseline"]["p99"]
        r["ratio_p50"] = r["proxy"]["p50"] / r["baseline"]["p50"]
    result["end_to_end"] = end_to_end
    return result


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The result without its sorted samples (for printing)."""
    out = {k: v for k, v in result.items() if k not in ("baseline", "proxy", "end_to_end")}
    for k in ("baseline", "proxy"):
        out[k] = {n: v for n, v in result[k].items() if n != "sorted"}
    out["end_to_end"] = {k: v for k, v in result["end_to_end"].items() if k not in ("baseline", "proxy")}
    for k in ("baseline", "proxy"):
        out["end_to_end"][k] = {n: v for n, v in result["end_to_end"][k].items() if n != "sorted"}
    return out


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(summary(run(quick="--quick" in sys.argv)), indent=1))
