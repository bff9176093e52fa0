"""The durable event log: two id sequences in one SQLite file.

``node`` holds the upstream node's events exactly as received (the node's ids, the event object's
JSON text byte for byte, the node's peer_id, network and stream_id); ``pool`` holds the pool's own
events (ids from 0, the proxy's peer_id). Both are replayed to event_ws clients from here.

Guarantees, checked by the code rather than hoped for:

- **No gaps, no reuse.** An append must continue its sequence exactly (the first id is 0, every
  next one is last + 1) or it is refused whole. Retention only removes a prefix and always keeps
  the newest event, so ids never restart. Opening a log verifies each sequence is contiguous.
- **Durable when append() returns.** Every append is one transaction (all or nothing, even when the
  process is killed mid-write). The database runs in WAL mode with ``synchronous=FULL`` by
  default, so a returned append survives power loss, not only a crash; ``synchronous="normal"``
  is faster and still survives a process crash (WAL commits reach the OS before returning) but
  may lose the last commits on power loss.
- **One identity per sequence.** A sequence remembers (peer_id, network, stream_id) from its first
  append; appending under another identity raises :class:`IdentityMismatch`, so two streams can
  never be mixed in one id space.

The API is synchronous and small: the trio side (``feed.py``) calls it through
``trio.to_thread.run_sync``. Each connection is guarded by a lock, so it is safe to call from
worker threads; reads use their own connection so they never wait behind a commit (WAL).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

SEQUENCES = ("node", "pool")
SCHEMA_VERSION = "1"
SYNCHRONOUS_MODES = ("full", "normal")
PRUNE_CHUNK = 10_000  # rows per delete transaction, so a big first prune never holds the lock long

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq  TEXT    NOT NULL,
    id   INTEGER NOT NULL,
    ts   REAL    NOT NULL,  -- the event's own timestamp (unix seconds); used by age retention
    body TEXT    NOT NULL,  -- the event object's JSON text, exactly as it is served
    PRIMARY KEY (seq, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"""


class EventLogError(Exception):
    """Base class of the log's refusals."""


class GapError(EventLogError):
    """An append would leave a gap or reuse an id; nothing was written."""


class IdentityMismatch(EventLogError):
    """A sequence is bound to another (peer_id, network, stream_id); nothing was written."""

    def __init__(self, seq: str, stored: StreamIdentity, offered: StreamIdentity) -> None:
        super().__init__(
            f"the {seq!r} event sequence belongs to peer_id={stored.peer_id} network={stored.network} "
            f"stream_id={stored.stream_id}; refusing events from peer_id={offered.peer_id} "
            f"network={offered.network} stream_id={offered.stream_id} (two event streams are never mixed)"
        )
        self.seq = seq
        self.stored = stored
        self.offered = offered


class PrunedError(EventLogError):
    """The requested event was removed by retention."""

    def __init__(self, requested: int, first_id: int) -> None:
        super().__init__(
            f"event {requested} was pruned by the retention policy; the oldest retained event is {first_id}"
        )
        self.requested = requested
        self.first_id = first_id


class CorruptLog(EventLogError):
    """The database does not hold what this log writes (a gap, a foreign schema)."""


@dataclass(frozen=True, slots=True)
class StreamIdentity:
    """Who produced a sequence: fixed for its whole life."""

    peer_id: str
    network: str
    stream_id: str


class StoredEvent(NamedTuple):
    """One event to store. A tuple: the pool record makes one per share, and building a frozen
    dataclass took 619 ns here against 304 for this (171 by ``tuple.__new__``, as the share
    event does)."""

    id: int
    timestamp: float
    text: str  # the event object ({"id":..,"timestamp":..,"type":..,"data":..,"group_id":..}) as JSON text


@dataclass(frozen=True, slots=True)
class Bounds:
    first_id: int
    last_id: int


# Rows go in by multi-row INSERTs of these sizes (at most 128 * 4 = 512 parameters: under every
# SQLite's limit), not one executemany step per row: the sqlite3 module releases and retakes the
# GIL around every step, and each retake waits for the (busy) event loop's thread.
_INSERT_CHUNKS = (128, 32, 8, 2, 1)
_INSERT_SQL = {
    n: "INSERT INTO events (seq, id, ts, body) VALUES " + ", ".join(["(?, ?, ?, ?)"] * n)
    for n in _INSERT_CHUNKS
}


def _insert(db: sqlite3.Connection, seq: str, events: Sequence[StoredEvent]) -> None:
    start, total = 0, len(events)
    for size in _INSERT_CHUNKS:
        while total - start >= size:
            params: list[object] = []
            for event in events[start : start + size]:
                params += (seq, event.id, event.timestamp, event.text)
            db.execute(_INSERT_SQL[size], params)
            start += size


def _check_seq(seq: str) -> None:
    if seq not in SEQUENCES:
        raise ValueError(f"unknown event sequence {seq!r}; expected one of {', '.join(SEQUENCES)}")


class EventLog:
    """Both event sequences in one SQLite database file (``":memory:"`` works for tests and the devnode)."""

    def __init__(
        self, path: str | os.PathLike[str], *, synchronous: str = "full", verify: bool = True
    ) -> None:
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}, got {synchronous!r}")
        self.path = str(path)
        memory = self.path == ":memory:"
        if not memory:
            parent = Path(self.path).parent
            if not parent.is_dir():
                raise EventLogError(f"cannot open event log {self.path}: directory {parent} does not exist")
        try:
            self._write = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=30.0
            )
        except sqlite3.Error as exc:  # e.g. a read-only or full disk
            raise EventLogError(f"cannot open event log {self.path}: {exc}") from exc
        self._write_lock = threading.Lock()
        # What the last append of each sequence left: (PRAGMA data_version then, the identity, the
        # last id). data_version changes only when another connection commits to the file; while it
        # holds, the next append skips its two SELECTs (identity and last id: ~5% of the record
        # path's samples at 100 rigs). The other writers on this connection clear it.
        self._tails: dict[str, tuple[int, StreamIdentity | None, int | None]] = {}
        # An in-memory database is private to its connection: reads share it (and its lock).
        self._read = self._write
        self._read_lock = self._write_lock
        try:
            self._setup(synchronous, memory)
            if not memory:
                self._read = sqlite3.connect(
                    self.path, check_same_thread=False, isolation_level=None, timeout=30.0
                )
                self._read.execute("PRAGMA query_only=ON")
                self._read_lock = threading.Lock()
            if verify:
                for seq in SEQUENCES:
                    self.verify(seq)
        except sqlite3.DatabaseError as exc:
            self._write.close()
            raise CorruptLog(f"cannot open event log {self.path}: {exc}") from exc

    def _setup(self, synchronous: str, memory: bool) -> None:
        db = self._write
        if not memory:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise EventLogError(f"event log {self.path}: cannot enable WAL mode (got {mode!r})")
        db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        db.executescript(_SCHEMA)
        stored = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if stored is None:
            db.execute("INSERT INTO meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
        elif stored[0] != SCHEMA_VERSION:
            raise CorruptLog(
                f"event log {self.path} has schema version {stored[0]}, this program writes {SCHEMA_VERSION}"
            )

    # --- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        with self._write_lock:
            if self._read is not self._write:
                with self._read_lock:
                    self._read.close()
            self._write.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def synchronous(self) -> str:
        """The write connection's ``PRAGMA synchronous`` as it is in force ("full", "normal", ...):
        what every commit's durability actually is, read back rather than remembered."""
        with self._write_lock:
            level = self._write.execute("PRAGMA synchronous").fetchone()[0]
        return {0: "off", 1: "normal", 2: "full", 3: "extra"}.get(level, str(level))

    # --- identity and metadata -------------------------------------------------------------------

    def identity(self, seq: str) -> StreamIdentity | None:
        _check_seq(seq)
        with self._read_lock:
            return self._identity(self._read, seq)

    @staticmethod
    def _identity(db: sqlite3.Connection, seq: str) -> StreamIdentity | None:
        rows = dict(
            db.execute(
                "SELECT key, value FROM meta WHERE key IN (?, ?, ?)",
                (f"{seq}.peer_id", f"{seq}.network", f"{seq}.stream_id"),
            ).fetchall()
        )
        if len(rows) != 3:
            return None
        return StreamIdentity(rows[f"{seq}.peer_id"], rows[f"{seq}.network"], rows[f"{seq}.stream_id"])

    def get_meta(self, key: str) -> str | None:
        with self._read_lock:
            row = self._read.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta_once(self, key: str, value: str) -> str:
        """Store ``value`` under ``key`` unless the key exists; return what is stored (made-once ids)."""
        with self._write_lock:
            self._tails.clear()  # (meta is where identities live)
            db = self._write
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
                if row is None:
                    db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
                    stored = value
                else:
                    stored = row[0]
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # SQLite may have rolled back already (disk full)
                    db.execute("ROLLBACK")
                raise
        return stored

    # --- writing ---------------------------------------------------------------------------------

    def append(
        self, seq: str, events: Sequence[StoredEvent], *, identity: StreamIdentity | None = None
    ) -> None:
        """Append ``events`` (contiguous ids continuing the sequence) in one durable transaction.

        ``identity`` binds an empty sequence to its producer, or is checked against the stored one.
        Raises GapError or IdentityMismatch and writes nothing when the append is not exact.
        """
        _check_seq(seq)
        if not events and identity is None:
            return
        with self._write_lock:
            db = self._write
            db.execute("BEGIN IMMEDIATE")
            try:
                version = db.execute("PRAGMA data_version").fetchone()[0]
                tail = self._tails.get(seq)
                if tail is not None and tail[0] == version:
                    _, stored, last = tail
                else:
                    stored = self._identity(db, seq)
                    last = db.execute("SELECT MAX(id) FROM events WHERE seq=?", (seq,)).fetchone()[0]
                if identity is not None:
                    if stored is None:
                        db.executemany(
                            "INSERT INTO meta (key, value) VALUES (?, ?)",
                            [
                                (f"{seq}.peer_id", identity.peer_id),
                                (f"{seq}.network", identity.network),
                                (f"{seq}.stream_id", identity.stream_id),
                            ],
                        )
                        stored = identity
                    elif stored != identity:
                        raise IdentityMismatch(seq, stored, identity)
                elif events and stored is None:
                    raise EventLogError(
                        f"the {seq!r} sequence has no identity yet: pass identity= with its first events"
                    )
                if events:
                    expected = 0 if last is None else last + 1
                    for offset, event in enumerate(events):
                        if event.id != expected + offset:
                            raise GapError(
                                f"{seq} event id {event.id} at position {offset} of an append does not continue "
                                f"the sequence (expected {expected + offset})"
                            )
                    _insert(db, seq, events)
                    last = events[-1].id
                db.execute("COMMIT")
                self._tails[seq] = (version, stored, last)
            except BaseException:
                self._tails.pop(seq, None)
                if db.in_transaction:  # SQLite may have rolled back already (disk full)
                    db.execute("ROLLBACK")
                raise

    def forget(self, seq: str) -> int:
        """Delete a whole sequence, events and identity, in one transaction; returns the number of
        events deleted. For a stream whose source is gone for good (the embedded dev node's
        in-memory chain): the next append starts a new sequence instead of being refused."""
        _check_seq(seq)
        with self._write_lock:
            self._tails.pop(seq, None)
            db = self._write
            db.execute("BEGIN IMMEDIATE")
            try:
                deleted = db.execute("DELETE FROM events WHERE seq = ?", (seq,)).rowcount
                db.execute(
                    "DELETE FROM meta WHERE key IN (?, ?, ?)",
                    (f"{seq}.peer_id", f"{seq}.network", f"{seq}.stream_id"),
                )
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        return deleted

    def prune(
        self,
        seq: str,
        *,
        keep_count: int | None = None,
        max_age: float | None = None,
        now: float | None = None,
    ) -> int:
        """Remove the oldest events beyond ``keep_count`` or older than ``max_age`` seconds.

        Only a prefix is ever removed (event timestamps need not be monotonic: pruning stops at the
        first young event) and the newest event always stays, so the next id is never forgotten.
        Returns how many events were removed.
        """
        _check_seq(seq)
        if keep_count is not None and keep_count < 1:
            raise ValueError("keep_count must be at least 1 (the newest event is always kept)")
        bounds = self.bounds(seq)
        if bounds is None:
            return 0
        cut = bounds.first_id  # every id < cut goes
        if keep_count is not None:
            cut = max(cut, bounds.last_id - keep_count + 1)
        if max_age is not None:
            cutoff = (time.time() if now is None else now) - max_age
            with self._read_lock:
                row = self._read.execute(
                    "SELECT id FROM events WHERE seq=? AND ts>=? ORDER BY id LIMIT 1", (seq, cutoff)
                ).fetchone()
            cut = max(cut, bounds.last_id if row is None else row[0])
        cut = min(cut, bounds.last_id)
        removed = 0
        start = bounds.first_id
        while start < cut:
            stop = min(cut, start + PRUNE_CHUNK)
            with self._write_lock:  # (the newest event stays: the last id append knows holds)
                removed += self._write.execute(
                    "DELETE FROM events WHERE seq=? AND id<?", (seq, stop)
                ).rowcount
            start = stop
        return removed

    # --- reading ---------------------------------------------------------------------------------

    def bounds(self, seq: str) -> Bounds | None:
        """The first and last stored ids, or None for an empty sequence."""
        _check_seq(seq)
        with self._read_lock:
            first, last = self._read.execute(
                "SELECT MIN(id), MAX(id) FROM events WHERE seq=?", (seq,)
            ).fetchone()
        return None if first is None else Bounds(first, last)

    def read(self, seq: str, from_id: int, limit: int) -> list[tuple[int, str]]:
        """Up to ``limit`` events with id >= ``from_id`` in id order, as (id, JSON text).

        Raises PrunedError when ``from_id`` is below the oldest retained event.
        """
        _check_seq(seq)
        with self._read_lock:
            db = self._read
            first = db.execute("SELECT MIN(id) FROM events WHERE seq=?", (seq,)).fetchone()[0]
            if first is not None and from_id < first:
                raise PrunedError(from_id, first)
            return db.execute(
                "SELECT id, body FROM events WHERE seq=? AND id>=? ORDER BY id LIMIT ?", (seq, from_id, limit)
            ).fetchall()

    def verify(self, seq: str) -> Bounds | None:
        """Check that the sequence is contiguous; raises CorruptLog naming the problem."""
        _check_seq(seq)
        with self._read_lock:
            first, last, count = self._read.execute(
                "SELECT MIN(id), MAX(id), COUNT(*) FROM events WHERE seq=?", (seq,)
            ).fetchone()
        if first is None:
            return None
        if count != last - first + 1:
            raise CorruptLog(
                f"event log {self.path}: the {seq!r} sequence has {count} events between ids {first} and {last} "
                f"({last - first + 1 - count} missing)"
            )
        return Bounds(first, last)
