"""Sampling profiles of a benchmark's server process, as text (for docs/profiles/).

``python -m bench --only NAME --profile`` records the server process of each measured proxy with
py-spy (``pip install py-spy``; not a dependency) while the figure runs, and writes a summary: the
functions that hold the most samples by themselves ("self") and with their callees ("total").
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

TOP = 40


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return found if Path(found).exists() else None


class Recorder:
    """``with Recorder(pid, out) as r: ...``: samples ``pid`` until the block ends."""

    def __init__(self, pid: int, out: Path, *, rate: int = 250, threads: bool = False) -> None:
        self.pid, self.out, self.rate, self.threads = pid, out, rate, threads
        self.raw = out.with_suffix(".raw")
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Recorder:
        tool = py_spy()
        if tool is None:
            raise RuntimeError("py-spy is not installed: pip install py-spy")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [tool, "record", "--pid", str(self.pid), "-r", str(self.rate), "-f", "raw", "-o", str(self.raw)]
            + (["--threads"] if self.threads else []),  # each stack then starts with its thread
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(2)  # SIGINT: py-spy writes what it has and exits
        self.proc.wait(30)
        if self.raw.exists():
            self.out.write_text(summarize(self.raw.read_text()))
            self.raw.unlink()


def _short(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py:123)"; "thread (123): name" (--threads) as is
    if frame.startswith("thread ("):
        return frame
    name, _, where = frame.partition(" (")
    return f"{name} ({Path(where.rstrip(')').rsplit(':', 1)[0]).name}:{where.rstrip(')').rsplit(':', 1)[-1]})"


def summarize(raw: str, title: str = "") -> str:
    """py-spy's raw (collapsed stacks) output as two top-N tables: self and total samples."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [_short(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    lines = (
        [title, f"{samples} samples", "", "self%   total%  function"]
        if title
        else [
            f"{samples} samples",
            "",
            "self%   total%  function",
        ]
    )
    for frame, n in own.most_common(TOP):
        lines.append(f"{100 * n / samples:5.1f}  {100 * total[frame] / samples:6.1f}   {frame}")
    lines += ["", "total%  function (by samples including callees)"]
    for frame, n in total.most_common(TOP):
        lines.append(f"{100 * n / samples:6.1f}   {frame}")
    return "\n".join(lines) + "\n"


# --- scenarios: the server process of a figure under load, profiled --------------------------------


def profile_share_path(
    out: Path, *, size: int = 100, record: bool = False, seconds: float = 6.0, threads: bool = False
) -> None:
    from bench.common import Child
    from bench.share_path import SHARE_WEIGHT, WINDOWS

    args = ["stratum", "--share-weight", str(SHARE_WEIGHT)] + (["--record"] if record else [])
    with Child("bench.servers", *args) as server:
        port = server.receive()["port"]
        with Child(
            "bench.rigsim", "--port", str(port), "--count", str(size), "--window", str(WINDOWS.get(size, 2))
        ) as rigs:
            rigs.receive(120)
            rigs.send(cmd="shares", seconds=seconds, warmup=0.3, pid=server.pid)
            with Recorder(server.pid, out, threads=threads):
                answer = rigs.receive(seconds + 60)
    _header(
        out,
        f"share path, {size} connection{'' if size == 1 else 's'}{' with the record' if record else ''}: "
        f"{answer['rate']:,.0f} shares/s, {answer['cpu_rate']:,.0f} shares/CPU-s"
        + (
            "; samples per thread (py-spy --threads: a thread waiting in a system call may count)"
            if threads
            else ""
        ),
    )


def profile_fanout(out: Path, *, size: int = 1000, rounds: int = 8) -> None:
    import time

    from bench.fanout import _round, _setup

    node, server, rigs = _setup("proxy", size)
    try:
        with Recorder(server.pid, out):
            p99 = []
            for _ in range(rounds):
                lats, _ = _round(node, rigs)  # by the kernel's receive stamps
                p99.append(lats[int(len(lats) * 0.99) - 1])
                time.sleep(0.2 + size / 20000)  # as bench.fanout: the server settles between rounds
    finally:
        for child in (rigs, server, node):
            child.close()
    _header(
        out,
        f"job fan-out, {size} rigs, {rounds} rounds: p99 per round {[round(x * 1000, 1) for x in p99]} ms",
    )


def profile_submit(out: Path, *, count: int = 400) -> None:
    from bench.common import percentile
    from bench.submit_latency import _batch, _setup

    node, server, rig = _setup("proxy")
    try:
        with Recorder(server.pid, out, rate=1000):
            batch = _batch("proxy", node, rig, count)
    finally:
        for child in (rig, server, node):
            child.close()
    measures = "; ".join(
        f"{name} p50 {percentile(lats, 50) * 1000:.2f} ms, p99 {percentile(lats, 99) * 1000:.2f} ms"
        for name, lats in (("arrival -> written upstream", batch.kernel), ("into the node's app", batch.app))
    )
    _header(out, f"block submit, {count} blocks: {measures}")


def profile_event_replay(out: Path, *, events: int = 20000) -> None:
    """The replay server runs in this process: profile ourselves."""
    import os
    import tempfile

    import trio

    from bench import event_replay

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.sqlite3"
        event_replay._make_log(path, events)
        with Recorder(os.getpid(), out, rate=500):
            rate = trio.run(event_replay._replay, path, events, 1000, 1)
    _header(out, f"event replay, window 1000, ACK per event: {rate:,.0f} events/s")


def _header(out: Path, title: str) -> None:
    import platform
    import time

    text = out.read_text() if out.exists() else "(no samples)\n"
    out.write_text(
        f"# {title}\n# profiled with py-spy ({time.strftime('%Y-%m-%d %H:%M')}, {platform.python_version()}); "
        f"reproduce: python -m bench.profiling {out.stem.split('-')[0]} {out}\n\n{text}"
    )


SCENARIOS = {
    "share_path": profile_share_path,
    "share_path_record": lambda out: profile_share_path(out, record=True),
    "share_path_1": lambda out: profile_share_path(out, size=1),
    "share_path_record_1": lambda out: profile_share_path(out, size=1, record=True, threads=True),
    "share_path_record_1000": lambda out: profile_share_path(out, size=1000, record=True, threads=True),
    "fanout": profile_fanout,
    "fanout_10000": lambda out: profile_fanout(out, size=10000, rounds=10),
    "submit_latency": profile_submit,
    "event_replay": profile_event_replay,
}


if __name__ == "__main__":
    scenario, target = sys.argv[1], Path(sys.argv[2])
    SCENARIOS[scenario](target)
    print(target.read_text())
