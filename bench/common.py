"""What every benchmark module shares: the machine's description, statistics, child processes.

Each figure runs its servers and rig simulators as separate processes (so the proxy has a core to
itself and its RSS is its own) and talks to them with JSON lines over stdin/stdout. The parent only
orchestrates: it is idle while a measurement runs.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PRIVATENET_ADDRESS = "WY1URKUnqCTyiixW1Dw29vmeG99hNN4EW6"  # the privatenet genesis wallet
FD_HEADROOM = 64  # descriptors a process needs besides its sockets (stdio, epoll, trio's wakeup pipe...)


# --- the machine ---------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import trio

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "trio": trio.__version__,
        "os": f"{platform.system()} {platform.release()}",
        "nofile_hard": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        "load_before": os.getloadavg()[0],
    }


def raise_nofile(want: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``want`` (never above the hard limit); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def max_sockets() -> int:
    """The most sockets one process can hold here (the hard RLIMIT_NOFILE less some headroom)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return (1 << 20) if hard == resource.RLIM_INFINITY else hard - FD_HEADROOM


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# --- statistics ----------------------------------------------------------------------------------


def json_object(line: bytes | str) -> dict[str, Any] | None:
    """A line's JSON object; None when the line is not JSON or holds something else."""
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest-rank on the sorted values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --- child processes -----------------------------------------------------------------------------


class ChildError(RuntimeError):
    pass


class Child:
    """A benchmark process speaking JSON lines: commands on its stdin, one JSON object per answer."""

    def __init__(self, module: str, *args: str, name: str | None = None) -> None:
        self.name = name or module
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        # stderr goes to a file: a chatty child must never block on a full pipe mid-measurement.
        self._errors = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
            cwd=ROOT,
            env=env,
        )
        self._buffer = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(command).encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise ChildError(f"{self.name} exited: {self._stderr()}") from None

    def receive(self, timeout: float = 60.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChildError(f"{self.name}: no answer within {timeout:g}s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise ChildError(f"{self.name} exited ({self.proc.wait()}): {self._stderr()}")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        answer = json.loads(line)
        if "error" in answer:
            raise ChildError(f"{self.name}: {answer['error']}")
        return answer

    def ask(self, timeout: float = 60.0, **command: Any) -> dict[str, Any]:
        self.send(**command)
        return self.receive(timeout)

    def _stderr(self) -> str:
        self._errors.seek(0)
        return self._errors.read().decode(errors="replace")[-3000:]

    def close(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            try:
                self.send(cmd="quit")
                self.proc.wait(timeout)
            except (ChildError, subprocess.TimeoutExpired, OSError):
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._errors.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def command_line(figure: str, quick: bool) -> str:
    return f"python -m bench --only {figure}" + (" --quick" if quick else "")
