"""The found-block journal: every found block is written down before it goes upstream.

The pool record commits in groups (:mod:`miningproxy.events.pool_events`): a block's
``POOL_BLOCK_FOUND`` becomes durable at the record's next commit, a few ms after the block has
left for the node. A proxy killed in between would leave a block in the chain that its record
does not know. So the block is first written here, one JSON line, and only then submitted. The
file is mapped into memory (``mmap``, shared): writing a line is a copy into the page cache, no
system call, so the block is not held up by the disk (a ``write()`` here took 32 µs at the median
and up to 1.4 ms behind the record's fsyncs, a truncation 87 µs). The kernel keeps the page
whatever happens to the process; only the machine losing power before the page is written back
(or before the record's next commit) can still lose the line.

The line has done its job once its ``POOL_BLOCK_FOUND`` is committed; the journal is emptied
(zeroed) whenever the record holds every block it does, so it holds a few lines at most. Its
lines end at the first NUL byte (JSON escapes NUL, so no line holds one).

A restarted proxy reads what the journal holds before it records anything: each block the record
lacks is recorded again, then settled against the node like any block without a fate
(:mod:`miningproxy.pool.recovery`).

The file sits beside the event log's database (``<database>-found-blocks``). Each line carries
the pool stream's id, so lines left by a record that has since been replaced are recognised and
reported instead of being recorded into the wrong one.
"""

from __future__ import annotations

import json
import logging
import math
import mmap
import os
from pathlib import Path
from typing import NamedTuple, get_type_hints

log = logging.getLogger("miningproxy.events.journal")

SUFFIX = "-found-blocks"
CAPACITY = 64 * 1024  # bytes mapped at first: room for ~200 blocks not yet committed


# JSON string encoding as json.dumps(ensure_ascii=False) writes it, quotes included (C code).
_string = json.encoder.encode_basestring  # type: ignore[attr-defined]
_finite = math.isfinite


class JournalError(ValueError):
    """A journal line that is not a found block (a torn last line after a power loss)."""


class JournaledBlock(NamedTuple):
    # A tuple, not a dataclass: one is made just before a block goes upstream.
    stream_id: str  # the pool stream the block belongs to
    timestamp: float  # when it was found (wall clock)
    hash: str
    height: int
    weight: float
    miner: str
    worker: str
    address: str
    job_id: str

    @classmethod
    def decode(cls, line: bytes) -> JournaledBlock:
        try:
            fields = json.loads(line)
        except (ValueError, RecursionError) as exc:  # (UnicodeDecodeError is a ValueError)
            raise JournalError(f"not JSON: {exc}") from None
        if not isinstance(fields, dict) or set(fields) != set(cls._fields):
            raise JournalError(f"not a found block: {line[:120]!r}")
        for name, kind in _TYPES.items():
            value = fields[name]
            if kind is float and type(value) is int:
                fields[name] = value = float(value)
            if type(value) is not kind:
                raise JournalError(f"{name} must be a {kind.__name__}, got {value!r:.60}")
        return cls(**fields)


_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def encode_line(
    stream_id: str,
    timestamp: float,
    hash: str,
    height: int,
    weight: float,
    miner: str,
    worker: str,
    address: str,
    job_id: str,
) -> bytes:
    """A found block's journal line: what ``json.dumps`` writes for :class:`JournaledBlock`'s
    fields as an object, formatted directly (it runs just before a block goes upstream)."""
    if not (_finite(timestamp) and _finite(weight)):  # (never expected) JSON's own way
        fields = JournaledBlock(stream_id, timestamp, hash, height, weight, miner, worker, address, job_id)
        return _dumps(fields._asdict()).encode() + b"\n"
    return (
        f'{{"stream_id":{_string(stream_id)},"timestamp":{timestamp!r},"hash":{_string(hash)},'
        f'"height":{height:d},"weight":{weight!r},"miner":{_string(miner)},"worker":{_string(worker)},'
        f'"address":{_string(address)},"job_id":{_string(job_id)}}}\n'
    ).encode()


_TYPES = get_type_hints(JournaledBlock)  # each field's type, from the class


def journal_path(database: str | os.PathLike[str]) -> Path | None:
    """Where the journal of the event log at ``database`` lives; None for an in-memory log."""
    database = str(database)
    return None if database == ":memory:" else Path(database + SUFFIX)


def read_journal(data: bytes) -> tuple[list[JournaledBlock], list[str]]:
    """The blocks in a journal's bytes (up to the first NUL: the unused rest of the file), and
    why each line that is not one was skipped."""
    blocks: list[JournaledBlock] = []
    problems: list[str] = []
    for number, line in enumerate(data.split(b"\0", 1)[0].split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            blocks.append(JournaledBlock.decode(line))
        except JournalError as exc:
            problems.append(f"line {number}: {exc}")
    return blocks, problems


class BlockJournal:
    """The journal file of one event log: :meth:`open` it once, before anything is recorded."""

    def __init__(self, path: str | os.PathLike[str], *, capacity: int = CAPACITY) -> None:
        self.path = Path(path)
        self.capacity = capacity
        self._fd = -1
        self._map: mmap.mmap | None = None
        self._end = 0  # where the next line goes

    def open(self) -> list[JournaledBlock]:
        """Map the file (made, and filled with zeros, if need be); returns the blocks a previous
        run left in it. Raises OSError when it cannot be read, made or mapped (the caller decides
        whether to run without it)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fd).st_size
            data = _read_all(fd, size).split(b"\0", 1)[0]
            if size < self.capacity:
                _zero_fill(fd, size, self.capacity)
                size = self.capacity
            self._map = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        blocks, problems = read_journal(data)
        for problem in problems:
            log.warning("found-block journal %s: skipped %s", self.path, problem)
        self._end = len(data)
        if data and not data.endswith(b"\n"):  # a torn last line: new lines start on their own
            self._map[self._end : self._end + 1] = b"\n"
            self._end += 1
        return blocks

    @property
    def is_open(self) -> bool:
        return self._map is not None

    def write_line(self, line: bytes, block_hash: str) -> bool:
        """Add a found block's line (:func:`encode_line`); False (logged; PoolEvents counts it)
        when it cannot be: the block still goes upstream, its record is then only the commit's."""
        end = self._end
        try:
            if self._map is None:
                raise OSError("the journal is not open")
            if end + len(line) > len(self._map):
                self._grow(end + len(line))
            self._map[end : end + len(line)] = line
        except (OSError, ValueError) as exc:
            log.error(
                "found-block journal %s: block %s not journaled (%r); it is submitted anyway, and a "
                "crash before the record's next commit would lose its record",
                self.path,
                block_hash,
                exc,
            )
            return False
        self._end = end + len(line)
        return True

    def _grow(self, needed: int) -> None:
        """(Only with more unrecorded blocks than the file holds.) Extend the file with real zeros
        first: a store into a hole of a full disk would kill the process (SIGBUS)."""
        assert self._map is not None
        size = len(self._map)
        while size < needed:
            size *= 2
        _zero_fill(self._fd, len(self._map), size)
        self._map.resize(size)

    def clear(self) -> None:
        """Empty the journal: the record holds every block in it."""
        if self._map is not None and self._end:
            self._map[: self._end] = bytes(self._end)
            self._end = 0

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _read_all(fd: int, size: int) -> bytes:
    chunks = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _zero_fill(fd: int, start: int, end: int) -> None:
    """Write zeros over [start, end): blocks the filesystem has allocated, not a hole."""
    zeros = bytes(min(end - start, 1 << 16))
    while start < end:
        start += os.pwrite(fd, zeros[: end - start], start)
