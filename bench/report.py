"""docs/BENCHMARKS.md and its plots, from the stored results (``docs/bench/results.json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIGURE_TITLES = {
    "share_path": "1. Share path",
    "fanout": "2. Job fan-out",
    "connections": "3. Connections",
    "event_replay": "4. Event replay",
    "submit_latency": "5. Block submit latency",
    "hashing": "6. Local hashing",
}


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


# The profile in docs/profiles/ of each case with a goal (`python -m bench.profiling NAME OUT`):
# a missed goal's verdict points at it.
PROFILES = {
    ("share_path", "proxy", "1"): "share_path_1.txt",
    ("share_path", "proxy", "100"): "share_path-after.txt",
    ("share_path", "proxy+record", "1"): "share_path_record_1.txt",
    ("share_path", "proxy+record", "100"): "share_path_record.txt",
    ("share_path", "proxy+record", "1000"): "share_path_record_1000.txt",
    ("fanout", "1000"): "fanout-after.txt",
    ("fanout", "10000"): "fanout_10000.txt",
    ("event_replay", "1000"): "event_replay-after.txt",
    ("submit_latency",): "submit_latency.txt",
}


def _verdict(ok: bool, by: str = "", profile: tuple[str, ...] = ()) -> str:
    if ok:
        return "met"
    found = PROFILES.get(profile)
    return f"**missed**{' by ' + by if by else ''}" + (
        f"; profile: [{found}](profiles/{found})" if found else ""
    )


# --- rows of the summary table: (figure, case, value, baseline, ratio, goal, verdict) -------------


def rows(name: str, r: dict[str, Any]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    if name == "share_path":
        from bench.share_path import GOAL_RATE, GOAL_RATIO

        for size, s in r["sizes"].items():
            echo = s["echo"]
            for variant in ("proxy", "proxy+record"):
                p = s[variant]
                rate_ok, ratio_ok = p["cpu_rate"] >= GOAL_RATE, p["cpu_ratio"] <= GOAL_RATIO
                misses = []
                if not rate_ok:
                    misses.append(
                        f"{GOAL_RATE - p['cpu_rate']:,.0f}/s ({GOAL_RATE / p['cpu_rate']:.2f}x short)"
                    )
                if not ratio_ok:
                    misses.append(f"ratio {p['cpu_ratio']:.2f}x > 3x")
                out.append(
                    (
                        "share path",
                        f"{variant}, {size} conn.",
                        f"{p['cpu_rate']:,.0f} shares/CPU-s ({p['rate']:,.0f}/s wall)",
                        f"echo {echo['cpu_rate']:,.0f}/CPU-s ({echo['rate']:,.0f}/s wall)",
                        f"{p['cpu_ratio']:.2f}x slower",
                        ">= 20,000/s on one core, <= 3x echo",
                        _verdict(rate_ok and ratio_ok, "; ".join(misses), (name, variant, size)),
                    )
                )
    elif name == "fanout":
        from bench.fanout import GOALS_P99

        for size, s in r["sizes"].items():
            p, b = s["proxy"], s["baseline"]
            goal = GOALS_P99.get(int(size))
            rigs = r.get("capped", {}).get(size)  # fewer rigs than the goal is for: not judged
            verdict = "-"
            if goal is not None and rigs is None:
                verdict = _verdict(
                    p["p99"] <= goal,
                    f"{_ms(p['p99'] - goal)} ({p['p99'] / goal:.1f}x the goal)",
                    (name, size),
                )
            out.append(
                (
                    "job fan-out",
                    f"{size} rigs" if rigs is None else f"{rigs:,} rigs (of {int(size):,} asked)",
                    f"p99 {_ms(p['p99'])} (p50 {_ms(p['p50'])})",
                    f"p99 {_ms(b['p99'])} (p50 {_ms(b['p50'])})",
                    f"{s['ratio_p99']:.2f}x",
                    _fanout_goal(goal, int(size), rigs),
                    verdict,
                )
            )
    elif name == "connections":
        from bench.connections import GOAL_KIB

        for size, s in r["sizes"].items():
            p, b = s["proxy"], s["baseline"]
            label = f"{s['rigs']:,} rigs" + (f" (of {int(size):,} asked)" if s["rigs"] != int(size) else "")
            out.append(
                (
                    "connections",
                    label,
                    f"{p['per_rig_kib']:.1f} KiB/rig",
                    f"bare server {b['per_rig_kib']:.1f} KiB/conn",
                    f"{s['ratio']:.2f}x",
                    f"<= {GOAL_KIB:g} KiB/rig",
                    _verdict(p["per_rig_kib"] <= GOAL_KIB, f"{p['per_rig_kib'] - GOAL_KIB:.1f} KiB"),
                )
            )
    elif name == "event_replay":
        base = r["sqlite_read_json"]
        for window, rate in r["replay"].items():
            goal = int(window) == 1000
            out.append(
                (
                    "event replay",
                    f"window {window}",
                    f"{rate:,.0f} events/s",
                    f"SQLite read + JSON {base:,.0f}/s",
                    f"{rate / base:.2f}x",
                    ">= 20,000 events/s" if goal else "(no goal)",
                    _verdict(
                        rate >= 20000, f"{20000 - rate:,.0f}/s ({20000 / rate:.1f}x short)", (name, window)
                    )
                    if goal
                    else "-",
                )
            )
    elif name == "submit_latency":
        from bench.submit_latency import GOAL_P99

        for label, m in _submit_measures(r):
            p, b = m["proxy"], m["baseline"]
            goal = label == SUBMIT_GOAL_MEASURE or "measure" not in r
            out.append(
                (
                    "block submit",
                    f"{r['samples']} blocks, {label}",
                    f"p99 {_ms(p['p99'])} (p50 {_ms(p['p50'])})",
                    f"relay p99 {_ms(b['p99'])} (p50 {_ms(b['p50'])})",
                    f"{m['ratio_p99']:.2f}x",
                    "p99 <= 2 ms" if goal else "(context)",
                    _verdict(p["p99"] <= GOAL_P99, f"{_ms(p['p99'] - GOAL_P99)}", (name,)) if goal else "-",
                )
            )
    elif name == "hashing":
        out.append(
            (
                "local hashing",
                f"{r['workers']} workers",
                f"{r['per_worker_hps'] / 1e6:.3f} MH/s per worker",
                f"hashlib loop {r['baseline_hps'] / 1e6:.3f} MH/s",
                f"{r['ratio']:.2f}x faster",
                "> the straightforward loop",
                _verdict(r["ratio"] > 1.0),
            )
        )
    return out


def headline(name: str, result: dict[str, Any]) -> list[str]:
    r = json.loads(json.dumps(result, default=str))
    return [
        f"{case}: {value} vs {base} -> {verdict}" for _, case, value, base, _, _, verdict in rows(name, r)
    ]


# --- the document ----------------------------------------------------------------------------------


def _machine_line(m: dict[str, Any]) -> str:
    return (
        f"{m['cpu']}, {m['cores']} cores, {m['python']}, trio {m['trio']}, {m['os']}; "
        f"load average {m['load_before']:.2f} before, {m.get('load_after', float('nan')):.2f} after"
    )


def table(header: tuple[str, ...], body: list[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return lines


def _section_share_path(r: dict[str, Any]) -> list[str]:
    windows = ", ".join(f"{s['window']} at {n}" for n, s in r["sizes"].items())
    lines = [
        f"Shares in flight per connection: {windows}; "
        f"share weight {r['share_weight']} (a valid nonce every ~1.07 hashes); {r['reps']} runs of "
        f"{r['seconds']:g} s per server, interleaved; medians shown. *CPU-s* = CPU time of the server "
        "process over the counting window (all its threads), *busy* = that over the wall time.",
        "",
    ]
    body = []
    for size, s in r["sizes"].items():
        for variant in ("echo", "proxy", "proxy+record"):
            v = s[variant]
            ratio = "1 (floor)" if variant == "echo" else f"{v['cpu_ratio']:.2f}x / {v['ratio']:.2f}x"
            body.append(
                (
                    size,
                    variant,
                    f"{v['rate']:,.0f}",
                    f"{v['cpu_share'] * 100:.0f}%",
                    f"{v['cpu_rate']:,.0f}",
                    ratio,
                    ", ".join(f"{x:,}" for x in v["runs"]),
                )
            )
    lines += table(
        (
            "connections",
            "server",
            "shares/s (wall)",
            "busy",
            "shares/CPU-s",
            "echo / this (CPU, wall)",
            "runs (wall)",
        ),
        body,
    )
    return lines


def _rounds(r: dict[str, Any]) -> str:
    """'5 rounds per size', or per size where they differ ('9 rounds at 100 rigs, ...')."""
    if "rounds" in r:  # (results written before the rounds were per size)
        return f"{r['rounds']} rounds per size"
    per_size = {size: s["rounds"] for size, s in r["sizes"].items()}
    if len(set(per_size.values())) == 1:
        return f"{next(iter(per_size.values()))} rounds per size"
    return "Rounds per size: " + ", ".join(f"{n} at {int(size):,} rigs" for size, n in per_size.items())


def _fanout_goal(goal: float | None, size: int, rigs: int | None) -> str:
    if goal is None:
        return "(no goal)"
    if rigs is not None:
        return f"p99 <= {_ms(goal)} at {size:,} rigs: not judged at {rigs:,}"
    return f"p99 <= {_ms(goal)}"


def _section_fanout(r: dict[str, Any]) -> list[str]:
    lines = _capped(r, " The goal of a capped size is not judged: it is for the rigs asked.") + [
        f"{_rounds(r)}, baseline and proxy interleaved; medians over rounds. Latency: "
        "from the node's `mining.notify` to the kernel's receive stamp of the job on the rig's socket."
        + (
            f" The rigs hold {r['weight_spread']} share weights ({r['share_weight']:g} and up in "
            "vardiff's steps of 1/16, pinned rig by rig), as a pool's rigs do: each weight's jobs "
            "are on terms of their own."
            if r.get("weight_spread", 1) > 1
            else ""
        ),
        "",
    ]
    body = []
    for size, s in r["sizes"].items():
        rigs = r.get("capped", {}).get(size)
        for kind in ("baseline", "proxy"):
            v = s[kind]
            body.append(
                (
                    size if rigs is None else f"{rigs:,} (of {int(size):,})",
                    kind,
                    _ms(v["p50"]),
                    _ms(v["p99"]),
                    _ms(v["max"]),
                    ", ".join(f"{x:g}" for x in v["p99_runs"]),
                    _ms(v["p99_read"]) if "p99_read" in v else "-",
                )
            )
    lines += table(
        ("rigs", "server", "p50", "p99", "last rig", "p99 per round (ms)", "p99 as the simulator read it"),
        body,
    )
    pauses = [
        f"{int(size):,} rigs: "
        + ", ".join(f"generation {g} {ms:g} ms" for g, ms in s["proxy"]["gc_longest_ms"].items())
        for size, s in r["sizes"].items()
        if s["proxy"].get("gc_longest_ms")
    ]
    if pauses:
        lines += [
            "",
            "The proxy's longest garbage-collector pause, connections and rounds included: "
            + "; ".join(pauses)
            + ".",
        ]
    return lines


def _capped(r: dict[str, Any], consequence: str = "") -> list[str]:
    """The paragraph saying which sizes ran with fewer rigs than asked (none: no lines)."""
    if not r.get("capped"):
        return []
    from bench.common import FD_HEADROOM

    capped = ", ".join(f"{int(k):,} -> {v:,}" for k, v in r["capped"].items())
    return [
        f"**Capped:** the hard RLIMIT_NOFILE here is {r['cap'] + FD_HEADROOM:,} and cannot be raised "
        f"from inside, so one process holds at most {r['cap']:,} sockets: {capped} rigs.{consequence}",
        "",
    ]


def _section_connections(r: dict[str, Any]) -> list[str]:
    lines = _capped(r)
    body = []
    for s in r["sizes"].values():
        for kind in ("baseline", "proxy"):
            v = s[kind]
            body.append(
                (
                    f"{s['rigs']:,}",
                    kind,
                    f"{v['rss_before'] / 2**20:.1f} MiB",
                    f"{v['rss_after'] / 2**20:.1f} MiB",
                    f"{v['per_rig_kib']:.2f} KiB",
                    f"{v['connect_seconds']:.1f} s",
                )
            )
    lines += table(("rigs", "server", "RSS before", "RSS after", "per rig", "connect + subscribe"), body)
    return lines


def _section_event_replay(r: dict[str, Any]) -> list[str]:
    lines = [
        f"{r['events']:,} node-shaped events of ~{r['event_bytes']} bytes; one consumer (its own process: a "
        f"websocket client on a blocking socket, wsproto handshake, frames split by hand, masked ACKs) "
        f"acknowledging every event; {r['reps']} run(s), medians."
        " *consumer busy*: the consumer's CPU time over the replay's wall time (well below 100%: it is not what limits the rate).",
        "",
    ]
    body = [
        ("baseline: SQLite read", f"{r['sqlite_read']:,.0f}", "", ""),
        ("baseline: SQLite read + JSON decode/encode", f"{r['sqlite_read_json']:,.0f}", "1", ""),
    ]
    busy = {str(k): v for k, v in r.get("consumer_cpu_share", {}).items()}
    for window, rate in r["replay"].items():
        runs = ", ".join(f"{x:,}" for x in r.get("replay_runs", {}).get(window, []))
        share = busy.get(str(window))
        body.append(
            (
                f"/event_ws replay, window {window}",
                f"{rate:,.0f}",
                f"{rate / r['sqlite_read_json']:.2f}  ({runs})",
                f"{share:.0%}" if share is not None else "",
            )
        )
    batched = r["replay_window1000_ack_every_100"]
    body.append(
        (
            "same, window 1000, ACK every 100th",
            f"{batched:,.0f}",
            f"{batched / r['sqlite_read_json']:.2f}",
            "",
        )
    )
    lines += table(("what", "events/s", "ratio to read + JSON (runs)", "consumer busy"), body)
    return lines


SUBMIT_GOAL_MEASURE = "arrival -> written upstream"
SUBMIT_APP_MEASURE = "into the node's application"


def _submit_measures(r: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, {"baseline", "proxy", "ratio_p99"}) per measure; results stored before the kernel
    measure existed hold only the end-to-end one, at the top level."""
    if "measure" not in r:
        return [(SUBMIT_APP_MEASURE, r)]
    return [(SUBMIT_GOAL_MEASURE, r), (SUBMIT_APP_MEASURE, r["end_to_end"])]


def _section_submit(r: dict[str, Any]) -> list[str]:
    from bench.submit_latency import GOAL_P99

    chunks = f", in {r['chunks']} interleaved chunks" if "chunks" in r else ""
    lines = [
        f"{r['samples']} winning shares per server, one at a time (the next {r['gap'] * 1000:g} ms after "
        "the previous reply"
        + (" and the node's acknowledgement that it read the previous submit" if "measure" in r else "")
        + f"){chunks}; the relay baseline (every rig line sent as one websocket message to the node) "
        "and the proxy (with its durable record) each between their own rig and fake node.",
        "",
    ]
    if "measure" in r:
        cost = r["proxy"].get("rig_send_cost_p50")
        shared = ", ".join(f"{kind} {r[kind].get('shared_stamps', 0)}" for kind in ("baseline", "proxy"))
        lines += [
            f"- **{SUBMIT_GOAL_MEASURE}** (the goal's figure): the kernel's receive timestamp of the "
            "`mining.submit` frame on the fake node's socket (`SO_TIMESTAMPNS`, read with `recvmsg`; on "
            "loopback the stack stamps a packet inside the sender's `write`) minus the kernel's transmit "
            "timestamp of the share's last byte on the rig's socket (`SO_TIMESTAMPING` with "
            "`SOF_TIMESTAMPING_TX_SOFTWARE`, read from the socket's error queue: the moment the bytes "
            "enter the proxy's socket), both CLOCK_REALTIME (`bench/kstamp.py`). Neither the rig's nor the "
            "node's wake-up or parsing is in it; a few microseconds of loopback stack are. A node stamp "
            "taken on a read that also held a later message would be the later write's (the kernel "
            "merges packets waiting in a receive queue): the pacing above rules that out for "
            f"submits; such upper bounds would be kept, and are counted ({shared}).",
            f"- **{SUBMIT_APP_MEASURE}** (context; this figure's measure before): `time.monotonic()` in "
            "the fake node once trio-websocket delivered the message minus `time.monotonic()` in the rig "
            "right before its `send()`: adds the node's wake-up, its websocket reader task and a "
            "scheduler round trip, and the rig's send call"
            + (
                f" (time.time() before `send()` to the kernel's stamp: {cost * 1e6:.0f} us median)."
                if cost
                else "."
            ),
            "",
        ]
    body = []
    for label, m in _submit_measures(r):
        for kind in ("baseline", "proxy"):
            v = m[kind]
            over = v.get("over_goal", sum(x > GOAL_P99 for x in v.get("sorted", [])))
            body.append((label, kind, _ms(v["p50"]), _ms(v["p90"]), _ms(v["p99"]), _ms(v["max"]), f"{over}"))
    lines += table(("measure", "server", "p50", "p90", "p99", "max", "> 2 ms"), body)
    return lines


def _section_hashing(r: dict[str, Any]) -> list[str]:
    per = ", ".join(f"{x / 1e6:.3f}" for x in r["workers_hps"])
    return [
        f"{r['workers']} worker processes for {r['seconds']:g} s, sha256 implementation `{r['sha256_impl']}`; "
        f"the baseline runs in slices interleaved with the workers' (they are paused meanwhile).",
        "",
        *table(
            ("what", "wall clock", "per CPU second"),
            [
                (
                    "per worker",
                    f"{r['per_worker_hps'] / 1e6:.3f} MH/s ({per})",
                    f"{r['per_worker_cpu_hps'] / 1e6:.3f} MH/s",
                ),
                (
                    "baseline: " + r["baseline"],
                    f"{r['baseline_hps'] / 1e6:.3f} MH/s",
                    f"{r['baseline_cpu_hps'] / 1e6:.3f} MH/s",
                ),
                ("ratio", f"{r['ratio']:.2f}x", f"{r['ratio_cpu']:.2f}x"),
            ],
        ),
    ]


SECTIONS = {
    "share_path": _section_share_path,
    "fanout": _section_fanout,
    "connections": _section_connections,
    "event_replay": _section_event_replay,
    "submit_latency": _section_submit,
    "hashing": _section_hashing,
}

NOTES_FILE = Path(__file__).with_name("NOTES.md")


def render(stored: dict[str, Any], plots: dict[str, str], history: list[str] | None = None) -> str:
    """The document; ``history``: the goals over the recent runs (bench/history.py), under the summary."""
    stored = json.loads(json.dumps(stored, default=str))
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench`; `--quick` for a short run, `--only NAME...` for some",
        "figures: " + ", ".join(f"`{n}`" for n in FIGURE_TITLES) + "). Every figure is a ratio against a",
        "baseline measured in the same run on the same machine; servers, rig simulators and fake nodes",
        "run as separate processes on loopback. The raw numbers are in `docs/bench/results.json`.",
        "",
        "The machine is a shared 2-core VM: other sessions' processes may run during a measurement (see",
        "the load averages). Runs are repeated and interleaved with their baseline, and the share path is",
        "also given per CPU-second of the server, which load on the other core does not change.",
        "",
        "## Summary",
        "",
    ]
    summary = []
    for name in FIGURE_TITLES:
        if name in stored:
            summary += [row[:1] + row[1:] for row in rows(name, stored[name]["result"])]
    lines += table(("figure", "case", "value", "baseline", "ratio", "goal", "verdict"), summary)
    if history:
        lines += ["", *history]
    for name, title in FIGURE_TITLES.items():
        if name not in stored:
            continue
        entry = stored[name]
        r = entry["result"]
        lines += [
            "",
            f"## {title}",
            "",
            f"Command: `{entry['command']}`" + (" (quick run: small sizes)" if entry["quick"] else ""),
            f"({entry['seconds']:.0f} s, {entry['when']})  ",
            f"Machine: {_machine_line(entry['machine'])}",
            "",
            *(SECTIONS[name](r)),
        ]
        if name in plots:
            lines += ["", f"![{title}]({plots[name]})"]
        notes = _notes().get(name)
        if notes:
            lines += ["", notes]
    notes = _notes().get("end")
    if notes:
        lines += ["", notes]
    return "\n".join(lines) + "\n"


def _notes() -> dict[str, str]:
    """Hand-written commentary (bench/NOTES.md, one ``<!-- figure -->`` marker per figure)."""
    if not NOTES_FILE.exists():
        return {}
    out: dict[str, str] = {}
    current = None
    for line in NOTES_FILE.read_text().splitlines():
        if line.startswith("<!-- ") and line.endswith(" -->"):
            current = line[5:-4].strip()
            out[current] = ""
        elif current is not None:
            out[current] += line + "\n"
    return {k: v.strip() for k, v in out.items() if v.strip()}


# --- plots -------------------------------------------------------------------------------------------


def plots(stored: dict[str, Any], folder: Path) -> dict[str, str]:
    """Draw what a curve says better than a number; {} when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    stored = json.loads(json.dumps(stored, default=str))
    folder.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(folder / f"{name}.png", dpi=90)
        plt.close(fig)
        made[name] = f"bench/{name}.png"

    if "fanout" in stored:
        r = stored["fanout"]["result"]
        fig, ax = plt.subplots(figsize=(7, 4))
        for n, (size, s) in enumerate(r["sizes"].items()):
            for kind, style in (("proxy", "-"), ("baseline", ":")):
                curve = [x * 1000 for x in s[kind]["curve"]]
                fractions = [i / (len(curve) - 1) for i in range(len(curve))]
                rigs = s.get("rigs", int(size))  # (fewer than asked where the machine caps sockets)
                ax.plot(curve, fractions, style, color=f"C{n}", label=f"{kind}, {rigs} rigs")
        ax.set_xscale("log")
        ax.set_xlabel("ms from mining.notify to the rig holding its job")
        ax.set_ylabel("fraction of rigs")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "fanout")
    if "share_path" in stored:
        r = stored["share_path"]["result"]
        sizes = list(r["sizes"])
        fig, ax = plt.subplots(figsize=(7, 4))
        width = 0.27
        for i, variant in enumerate(("echo", "proxy", "proxy+record")):
            values = [r["sizes"][s][variant]["cpu_rate"] for s in sizes]
            ax.bar([x + (i - 1) * width for x in range(len(sizes))], values, width, label=variant)
        ax.axhline(20000, color="red", linestyle="--", linewidth=1, label="goal 20,000")
        ax.set_xticks(range(len(sizes)), [f"{s} conn." for s in sizes])
        ax.set_ylabel("shares per CPU-second of the server")
        ax.legend(fontsize=8)
        save(fig, "share_path")
    if "submit_latency" in stored:
        from matplotlib.ticker import NullFormatter

        r = stored["submit_latency"]["result"]
        fig, ax = plt.subplots(figsize=(7, 4))
        for n, (label, m) in enumerate(_submit_measures(r)):
            for kind, style in (("proxy", "-"), ("baseline", ":")):
                lats = [x * 1000 for x in m[kind]["sorted"]]
                fractions = [i / (len(lats) - 1) for i in range(len(lats))]
                ax.plot(lats, fractions, style, color=f"C{n}", label=f"{kind}, {label}")
        ax.axvline(2.0, color="red", linestyle="--", linewidth=1, label="goal p99 2 ms")
        ax.set_xscale("log")
        low, high = ax.get_xlim()
        ticks = [t for t in (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500) if low <= t <= high]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("ms from the share to mining.submit")
        ax.set_ylabel("fraction of blocks")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "submit_latency")
    if "event_replay" in stored:
        r = stored["event_replay"]["result"]
        fig, ax = plt.subplots(figsize=(7, 4))
        labels = ["read", "read+JSON"] + [f"window {w}" for w in r["replay"]] + ["w1000, ACK/100"]
        values = [
            r["sqlite_read"],
            r["sqlite_read_json"],
            *r["replay"].values(),
            r["replay_window1000_ack_every_100"],
        ]
        ax.bar(labels, values, color=["grey", "grey"] + ["C0"] * len(r["replay"]) + ["C1"])
        ax.axhline(20000, color="red", linestyle="--", linewidth=1, label="goal 20,000 at window 1000")
        ax.set_yscale("log")
        ax.set_ylabel("events/s")
        ax.legend(fontsize=8)
        save(fig, "event_replay")
    return made
