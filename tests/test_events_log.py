"""The SQLite event log: exact appends, identities, retention, and durability across a SIGKILL."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from miningproxy.events.log import (
    CorruptLog,
    EventLog,
    EventLogError,
    GapError,
    IdentityMismatch,
    PrunedError,
    StoredEvent,
    StreamIdentity,
)

NODE = StreamIdentity("a" * 64, "privatenet", "stream-1")
OTHER = StreamIdentity("b" * 64, "privatenet", "stream-1")


def ev(event_id: int, ts: float = 1000.0, text: str | None = None) -> StoredEvent:
    return StoredEvent(event_id, ts, text if text is not None else f'{{"id":{event_id},"data":{{}}}}')


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "events.sqlite3"


def test_append_reopen_and_replay_the_same_text(path: Path) -> None:
    odd = [
        '{"id":0,"timestamp":1795814404.5515604,"type":"LOAD_STARTED","data":{},"group_id":null}',
        '{ "id" : 1, "x": "é\\u00e9 \u2028 \U0001f600", "f": 1.0e5 }',  # kept as is, never re-encoded
        '{"id":2,"big":' + "9" * 400 + "}",
    ]
    with EventLog(path) as log:
        log.append("node", [ev(i, text=t) for i, t in enumerate(odd)], identity=NODE)
    with EventLog(path) as log:
        assert log.identity("node") == NODE
        assert log.read("node", 0, 10) == list(enumerate(odd))
        assert log.bounds("node").first_id == 0 and log.bounds("node").last_id == 2
        assert log.identity("pool") is None and log.bounds("pool") is None


@pytest.mark.parametrize("count", [1, 2, 7, 128, 129, 300 + 32 + 8 + 3])
def test_a_big_append_stores_every_row_in_order(path: Path, count: int) -> None:
    # Rows go in by multi-row INSERTs of several sizes: every size and remainder lands exactly.
    with EventLog(path) as log:
        log.append("pool", [ev(0)], identity=NODE)
        events = [
            ev(i, ts=1000.0 + i / 7, text=f'{{"id":{i},"n":"{"x" * (i % 5)}"}}') for i in range(1, count + 1)
        ]
        log.append("pool", events)
        assert log.read("pool", 1, count + 10) == [(e.id, e.text) for e in events]
        stored = log._read.execute(
            "SELECT id, ts FROM events WHERE seq='pool' AND id>0 ORDER BY id"
        ).fetchall()
        assert stored == [(e.id, e.timestamp) for e in events]
        assert log.read("node", 0, 10) == []


def test_the_database_runs_in_wal_mode(path: Path) -> None:
    EventLog(path).close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize(
    ("first", "batch"),
    [
        ([], [1]),  # a sequence starts at 0
        ([0, 1], [3]),  # a gap
        ([0, 1], [1]),  # a repeat
        ([0, 1], [2, 3, 5]),  # a gap inside a batch
        ([0, 1], [2, 2]),
    ],
)
def test_appends_that_are_not_exact_are_refused_whole(path: Path, first: list[int], batch: list[int]) -> None:
    with EventLog(path) as log:
        log.append("pool", [ev(i) for i in first], identity=NODE)
        with pytest.raises(GapError):
            log.append("pool", [ev(i) for i in batch])
        bounds = log.bounds("pool")
        assert (bounds.last_id if bounds else None) == (first[-1] if first else None)


def test_first_events_need_an_identity_and_other_identities_are_refused(path: Path) -> None:
    with EventLog(path) as log:
        with pytest.raises(EventLogError, match="no identity"):
            log.append("node", [ev(0)])
        log.append("node", [ev(0)], identity=NODE)
        log.append("node", [ev(1)], identity=NODE)
        with pytest.raises(IdentityMismatch, match="refusing events from peer_id=bbbb"):
            log.append("node", [ev(2)], identity=OTHER)
        assert log.bounds("node").last_id == 1
        log.append("pool", [ev(0)], identity=OTHER)  # sequences are independent


def test_a_commit_by_another_connection_between_appends_is_seen(path: Path) -> None:
    # append() keeps what it knows of a sequence between commits; another writer of the file
    # (another process, a repair by hand) must not be overlooked.
    with EventLog(path) as log:
        log.append("pool", [ev(0), ev(1)], identity=NODE)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("INSERT INTO events (seq, id, ts, body) VALUES ('pool', 2, 1000.0, '{}')")
        with pytest.raises(GapError, match="expected 3"):
            log.append("pool", [ev(2)])
        log.append("pool", [ev(3)])
        other.execute("DELETE FROM meta WHERE key LIKE 'pool.%'")
        with pytest.raises(EventLogError, match="no identity"):
            log.append("pool", [ev(4)])
        log.append("pool", [ev(4)], identity=OTHER)  # bound again, to whoever comes first
        with pytest.raises(IdentityMismatch):
            log.append("pool", [ev(5)], identity=NODE)
        other.close()


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["append", "gap", "bind node", "bind other", "forget", "prune", "external append"]),
        st.integers(1, 3),
    ),
    max_size=25,
)


@settings(max_examples=40, deadline=None)
@given(_OPS)
def test_appends_decide_as_if_they_read_the_file_every_time(ops: list[tuple[str, int]]) -> None:
    """Whatever mix of appends, refusals, forgets, prunes and commits by another connection: each
    append accepts or refuses exactly as a model of the file says."""
    with tempfile.TemporaryDirectory() as tmp, EventLog(Path(tmp) / "e.sqlite3", synchronous="normal") as log:
        other = sqlite3.connect(Path(tmp) / "e.sqlite3", isolation_level=None)
        bound: StreamIdentity | None = None  # the model: the sequence's identity and its next id
        next_id = 0
        for op, count in ops:
            outcome = "ok"
            if op == "external append":
                if bound is None:
                    continue
                other.execute(
                    "INSERT INTO events (seq, id, ts, body) VALUES ('pool', ?, 1.0, '{}')", (next_id,)
                )
                next_id += 1
                continue
            if op == "forget":
                log.forget("pool")
                bound, next_id = None, 0
                continue
            if op == "prune":
                log.prune("pool", keep_count=1)
                continue
            identity = {"bind node": NODE, "bind other": OTHER}.get(op)
            start = next_id + (1 if op == "gap" else 0)
            batch = [ev(start + i) for i in range(count)]
            if identity is not None and bound is not None and identity != bound:
                expected = IdentityMismatch
            elif identity is None and bound is None:
                expected = EventLogError
            elif op == "gap":
                expected = GapError
            else:
                expected = None
            try:
                log.append("pool", batch, identity=identity)
            except EventLogError as exc:
                outcome = type(exc)
            assert outcome == ("ok" if expected is None else expected), (op, bound, next_id, outcome)
            if expected is None:
                bound = bound or identity
                next_id += count
        other.close()


def test_set_meta_once_keeps_the_first_value(path: Path) -> None:
    with EventLog(path) as log:
        assert log.set_meta_once("proxy.peer_id", "first") == "first"
        assert log.set_meta_once("proxy.peer_id", "second") == "first"
    with EventLog(path) as log:
        assert log.get_meta("proxy.peer_id") == "first"


def test_prune_by_count_keeps_the_newest_and_reports_pruned_ids(path: Path) -> None:
    with EventLog(path) as log:
        log.append("node", [ev(i) for i in range(100)], identity=NODE)
        assert log.prune("node", keep_count=10) == 90
        assert (log.bounds("node").first_id, log.bounds("node").last_id) == (90, 99)
        with pytest.raises(PrunedError, match="event 89 was pruned .* the oldest retained event is 90"):
            log.read("node", 89, 5)
        assert [i for i, _ in log.read("node", 90, 5)] == [90, 91, 92, 93, 94]
        log.append("node", [ev(100)])  # ids go on
        assert log.prune("node", keep_count=1) == 10
        assert log.read("node", 100, 5)[0][0] == 100


def test_prune_by_age_removes_only_a_prefix_and_never_the_last(path: Path) -> None:
    with EventLog(path) as log:
        # Timestamps need not be monotonic: event 3 is "young" but 4 is old again.
        stamps = [10, 20, 30, 500, 40, 600, 700]
        log.append("node", [ev(i, ts) for i, ts in enumerate(stamps)], identity=NODE)
        assert log.prune("node", max_age=200, now=700) == 3  # 0..2 are older than 500; 4 stays
        assert log.bounds("node").first_id == 3
        assert log.prune("node", max_age=1, now=10_000) == 3  # everything is old: the last stays
        assert (log.bounds("node").first_id, log.bounds("node").last_id) == (6, 6)
    with EventLog(path) as log:  # and it is still contiguous after reopening
        assert log.verify("node").first_id == 6


def test_prune_refuses_to_keep_nothing(path: Path) -> None:
    with EventLog(path) as log, pytest.raises(ValueError):
        log.prune("node", keep_count=0)


def test_a_gap_in_the_file_is_detected_on_open(path: Path) -> None:
    with EventLog(path) as log:
        log.append("pool", [ev(i) for i in range(5)], identity=NODE)
    db = sqlite3.connect(path)
    db.execute("DELETE FROM events WHERE seq='pool' AND id=2")
    db.commit()
    db.close()
    with pytest.raises(CorruptLog, match="1 missing"):
        EventLog(path)


def test_in_memory_log_works_for_the_devnode() -> None:
    with EventLog(":memory:") as log:
        log.append("node", [ev(0), ev(1)], identity=NODE)
        assert log.read("node", 1, 5) == [(1, ev(1).text)]


def test_unknown_sequence_and_bad_options(path: Path) -> None:
    with EventLog(path) as log, pytest.raises(ValueError):
        log.read("other", 0, 1)
    with pytest.raises(ValueError):
        EventLog(path, synchronous="off")
    with pytest.raises(EventLogError, match="does not exist"):
        EventLog(path.parent / "missing" / "x.sqlite3")


# --- crash safety -----------------------------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import sys
    from miningproxy.events.log import EventLog, StoredEvent, StreamIdentity
    log = EventLog(sys.argv[1], synchronous=sys.argv[2])
    ident = StreamIdentity("a" * 64, "privatenet", "s")
    bounds = log.bounds("pool")
    next_id = 0 if bounds is None else bounds.last_id + 1
    size = 1
    while True:
        batch = [StoredEvent(i, 1.0, '{"id":%d,"pad":"%s"}' % (i, "x" * 300)) for i in range(next_id, next_id + size)]
        log.append("pool", batch, identity=ident)
        next_id += size
        size = size % 50 + 1
        print(next_id - 1, flush=True)  # acknowledged: durable
    """
)


@pytest.mark.parametrize("synchronous", ["full", "normal"])
def test_the_log_says_which_synchronous_setting_is_in_force(tmp_path: Path, synchronous: str) -> None:
    with EventLog(tmp_path / "e.sqlite3", synchronous=synchronous) as log:
        assert log.synchronous() == synchronous


@pytest.mark.parametrize("synchronous", ["full", "normal"])
def test_sigkill_mid_append_loses_nothing_acknowledged_and_leaves_no_gap(
    path: Path, synchronous: str
) -> None:
    acknowledged = -1
    for round_ in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), synchronous],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        )
        assert child.stdout is not None
        lines = 0
        for line in child.stdout:
            acknowledged = max(acknowledged, int(line))
            lines += 1
            if lines >= 40 + 37 * round_:  # kill at a different point each round, mid-stream
                break
        child.send_signal(signal.SIGKILL)
        child.wait()
        for line in child.stdout:  # anything acknowledged before the kill landed
            acknowledged = max(acknowledged, int(line))
        with EventLog(path) as log:
            bounds = log.verify("pool")  # contiguous, or this raises
            assert bounds is not None and bounds.first_id == 0
            assert bounds.last_id >= acknowledged
            rows = log.read("pool", 0, bounds.last_id + 1)
            assert [i for i, _ in rows] == list(range(bounds.last_id + 1))
            assert all(text.startswith(f'{{"id":{i},') for i, text in rows)
