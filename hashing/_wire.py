"""The line protocol between :class:`hashing.workers.WorkerPool` and its worker processes.

One JSON array per line, both ways. Every message is written with a single ``write`` of at most
PIPE_BUF bytes, which POSIX makes atomic on a pipe: many workers can share one results pipe and the
parent never sees interleaved lines, and a non-blocking control write is all-or-nothing.

parent -> worker (the worker's stdin):
  ["job", job_id, header_hex, weight, start, count]   mine this job in [start, start+count)
  ["pause"]                                            stop hashing, stay alive
  ["stop"]                                             report the last hash count and exit
worker -> parent (the shared results pipe):
  ["ready", worker, pid, sha256_impl_name]
  ["found", worker, job_id, nonce_hex, hash_hex]
  ["hashes", worker, hashes, seconds, cpu_seconds]
"""

from __future__ import annotations

import json
import select

PIPE_BUF = select.PIPE_BUF if hasattr(select, "PIPE_BUF") else 512


def encode(message: list[object]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def pack_lines(lines: list[bytes], limit: int = PIPE_BUF) -> list[bytes]:
    """Group encoded lines into writes of at most ``limit`` bytes, never splitting a line."""
    writes: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for line in lines:
        if size + len(line) > limit and current:
            writes.append(b"".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line)
    if current:
        writes.append(b"".join(current))
    return writes


class LineBuffer:
    """Accumulates bytes read from a pipe and yields complete decoded lines."""

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, data: bytes) -> list[list[object]]:
        data = self._tail + data
        *lines, self._tail = data.split(b"\n")
        out: list[list[object]] = []
        for line in lines:
            if not line:
                continue
            try:
                message = json.loads(line)
            except ValueError:
                continue  # a torn or foreign line must not kill either side
            if isinstance(message, list) and message and isinstance(message[0], str):
                out.append(message)
        return out
