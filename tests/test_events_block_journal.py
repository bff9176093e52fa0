"""The found-block journal: its line codec, the file, and PoolEvents keeping it until the record
has every block in it (miningproxy/events/block_journal.py)."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from miningproxy.events.block_journal import (
    BlockJournal,
    JournaledBlock,
    JournalError,
    encode_line,
    journal_path,
    read_journal,
)
from miningproxy.events.feed import EventFeed
from miningproxy.events.log import EventLog
from miningproxy.events.metrics import EventMetrics
from miningproxy.events.pool_events import POOL_SEQ, PoolEvents, open_pool_stream
from miningproxy.pool.recovery import read_record, rerecord_journaled, unsettled_blocks

ROOT = Path(__file__).resolve().parent.parent

texts = st.text(max_size=40)  # any Unicode: quotes, newlines and surrogate-free astral characters
blocks = st.builds(
    JournaledBlock,
    stream_id=texts,
    timestamp=st.floats(allow_nan=False, allow_infinity=False),
    hash=texts,
    height=st.integers(min_value=-(2**70), max_value=2**70),
    weight=st.floats(allow_nan=False, allow_infinity=False),
    miner=texts,
    worker=texts,
    address=texts,
    job_id=texts,
)


def write(journal: BlockJournal, block: JournaledBlock) -> bool:
    return journal.write_line(encode_line(*block), block.hash)


def a_block(n: int = 1, stream_id: str = "s") -> JournaledBlock:
    return JournaledBlock(
        stream_id, 1.5e9 + n, f"{n:064x}", n, 60.25, f"W{n}.rig", "rig", f"W{n}", f"{n:016x}"
    )


@given(st.lists(blocks, max_size=5))
def test_journal_lines_read_back_as_the_blocks_written(written):
    data = b"".join(encode_line(*block) for block in written)
    assert data.count(b"\n") == len(written)  # one line each, whatever the text holds
    assert read_journal(data) == (written, [])


@given(blocks)
def test_a_line_is_what_the_json_encoder_writes(block):
    generic = json.dumps(block._asdict(), ensure_ascii=False, separators=(",", ":")) + "\n"
    assert encode_line(*block) == generic.encode()


def test_a_non_finite_number_still_reads_back():
    block = a_block()._replace(timestamp=math.inf, weight=-math.inf)
    assert JournaledBlock.decode(encode_line(*block)) == block


@given(st.lists(blocks, min_size=1, max_size=4), st.data())
def test_a_torn_last_line_is_skipped_and_reported(written, data):
    whole = b"".join(encode_line(*block) for block in written)
    last = encode_line(*written[-1])
    cut = data.draw(st.integers(min_value=1, max_value=len(last) - 2))  # a line cut short
    got, problems = read_journal(whole[: len(whole) - len(last)] + last[:cut])
    assert got == written[:-1]
    assert len(problems) == 1 and problems[0].startswith(f"line {len(written)}:")


@pytest.mark.parametrize(
    "line",
    [
        b"[]",
        b'{"hash": "aa"}',
        encode_line(*a_block()).replace(b'"height":1', b'"height":"1"'),
        encode_line(*a_block()).replace(b'"height":1', b'"height":true'),
        encode_line(*a_block()).replace(b'"height":1', b'"height":1,"extra":2'),
        b"\xff\xfe",
    ],
)
def test_a_line_that_is_not_a_found_block_is_refused(line):
    with pytest.raises(JournalError):
        JournaledBlock.decode(line)


def test_an_integral_weight_or_timestamp_reads_as_a_float():
    line = encode_line(*a_block()).replace(b'"weight":60.25', b'"weight":60')
    assert JournaledBlock.decode(line).weight == 60.0


def test_the_journal_sits_beside_the_database_and_not_at_all_for_memory():
    assert journal_path("data/pool.sqlite3") == Path("data/pool.sqlite3-found-blocks")
    assert journal_path(":memory:") is None


def test_the_file_keeps_blocks_across_opens_until_cleared(tmp_path):
    path = tmp_path / "j"
    journal = BlockJournal(path)
    assert journal.open() == []  # no file yet
    assert write(journal, a_block(1)) and write(journal, a_block(2))
    journal.close()
    again = BlockJournal(path)
    assert again.open() == [a_block(1), a_block(2)]
    again.clear()
    assert write(again, a_block(3))  # after a clear, lines start at the beginning again
    again.close()
    assert BlockJournal(path).open() == [a_block(3)]


@given(
    st.lists(
        st.one_of(
            st.builds(lambda n: ("write", a_block(n)), st.integers(0, 999)),
            st.sampled_from(["clear", "reopen"]),
        ),
        max_size=30,
    )
)
def test_the_file_holds_what_was_written_since_the_last_clear(steps):
    # Against a list: lines written, cleared, and read back by a new open (as after a restart),
    # in a file small enough to grow a few times.
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "j"
        journal = BlockJournal(path, capacity=256)
        assert journal.open() == []
        model: list[JournaledBlock] = []
        for step in steps:
            if step == "clear":
                journal.clear()
                model = []
            elif step == "reopen":
                journal.close()
                journal = BlockJournal(path, capacity=256)
                assert journal.open() == model
            else:
                assert write(journal, step[1])
                model.append(step[1])
        journal.close()
        assert BlockJournal(path).open() == model


def test_lines_written_after_a_torn_one_are_read_whole(tmp_path):
    path = tmp_path / "j"
    path.write_bytes(encode_line(*a_block(1)) + encode_line(*a_block(2))[:40])  # cut short by a power loss
    journal = BlockJournal(path)
    assert journal.open() == [a_block(1)]
    assert write(journal, a_block(3))
    journal.close()
    blocks, problems = read_journal(path.read_bytes())
    assert blocks == [a_block(1), a_block(3)] and len(problems) == 1


# --- PoolEvents and the journal --------------------------------------------------------------------


def open_record(directory: Path) -> tuple[EventLog, EventFeed]:
    event_log = EventLog(directory / "events.sqlite3")
    open_pool_stream(event_log, "privatenet")
    return event_log, EventFeed(event_log, POOL_SEQ)


def journal_lines(directory: Path) -> list[JournaledBlock]:
    blocks, problems = read_journal((directory / "events.sqlite3-found-blocks").read_bytes())
    assert not problems
    return blocks


FIELDS = {"miner": "W.rig", "worker": "rig", "address": "W", "job_id": "00aa"}


async def test_a_journaled_block_stays_in_the_journal_until_its_record_is_committed(tmp_path):
    event_log, feed = open_record(tmp_path)
    journal = BlockJournal(journal_path(event_log.path))
    events = PoolEvents(feed, journal=journal, journaled_before=journal.open())
    events.journal_block(b"\xab" * 32, 5, 60.0, *FIELDS.values())
    assert [b.hash for b in journal_lines(tmp_path)] == ["ab" * 32]  # before any await: on disk
    found = events.block_found(hash="ab" * 32, height=5, weight=60.0, **FIELDS)
    assert [b.hash for b in journal_lines(tmp_path)] == ["ab" * 32]  # recorded, not committed
    async with trio.open_nursery() as nursery:
        await nursery.start(events.run)
        await events.wait_durable(found)
        await trio.testing.wait_all_tasks_blocked()
        assert journal_lines(tmp_path) == []
        nursery.cancel_scope.cancel()
    event_log.close()


async def test_a_journaled_block_without_its_record_is_never_dropped_by_a_commit(tmp_path):
    event_log, feed = open_record(tmp_path)
    journal = BlockJournal(journal_path(event_log.path))
    events = PoolEvents(feed, journal=journal, journaled_before=journal.open())
    events.journal_block(b"\xcd" * 32, 5, 60.0, *FIELDS.values())
    other = events.template_changed(
        height=6, parent_hash="00", weight=60.0, reward=6400, clean=True, node="n"
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(events.run)
        await events.wait_durable(other)
        await trio.testing.wait_all_tasks_blocked()
        assert [b.hash for b in journal_lines(tmp_path)] == ["cd" * 32]  # its POOL_BLOCK_FOUND never came
        nursery.cancel_scope.cancel()
    event_log.close()


async def test_what_a_previous_run_left_is_kept_until_recovery_has_recorded_it(tmp_path):
    event_log, feed = open_record(tmp_path)
    identity = feed.identity
    assert identity is not None
    left = [a_block(1, identity.stream_id), a_block(2, identity.stream_id), a_block(3, "another record")]
    journal = BlockJournal(journal_path(event_log.path))
    journal.open()
    for block in left:
        write(journal, block)
    journal.close()
    journal = BlockJournal(journal_path(event_log.path))
    events = PoolEvents(feed, journal=journal, journaled_before=journal.open())
    # Block 1 made it into the record before the kill; block 2 did not.
    events.block_found(hash=left[0].hash, height=1, weight=60.25, **FIELDS)
    async with trio.open_nursery() as nursery:
        await nursery.start(events.run)
        await events.flush()
        await trio.testing.wait_all_tasks_blocked()
        assert journal_lines(tmp_path) == left  # a commit alone does not empty it
        # This run finds a block meanwhile: journaled after the previous run's lines, and its
        # commit does not empty the journal either (recovery has not run yet).
        events.journal_block(b"\xee" * 32, 9, 60.0, *FIELDS.values())
        events.block_found(hash="ee" * 32, height=9, weight=60.0, **FIELDS)
        await events.flush()
        await trio.testing.wait_all_tasks_blocked()
        assert [b.hash for b in journal_lines(tmp_path)] == [b.hash for b in left] + ["ee" * 32]
        upto = feed.last_id
        assert upto is not None
        rerecorded = rerecord_journaled(events, await read_record(events, upto))
        assert [b.hash for b in rerecorded] == [left[1].hash]  # not 1 (recorded), not 3 (foreign)
        assert rerecorded[0].miner == left[1].miner and rerecorded[0].timestamp == left[1].timestamp
        await events.flush()
        await trio.testing.wait_all_tasks_blocked()
        assert journal_lines(tmp_path) == []
        rows = await read_record(events, feed.last_id or 0)
        assert [b.hash for b in unsettled_blocks(rows)] == [left[0].hash, "ee" * 32, left[1].hash]
        nursery.cancel_scope.cancel()
    event_log.close()


def test_a_line_that_cannot_be_written_is_logged_and_counted(tmp_path, caplog):
    event_log, feed = open_record(tmp_path)
    registry = CollectorRegistry()
    journal = BlockJournal(journal_path(event_log.path))
    events = PoolEvents(
        feed, metrics=EventMetrics(registry), journal=journal, journaled_before=journal.open()
    )
    journal.close()  # unmapped under the record's feet: every line fails
    with caplog.at_level(logging.ERROR):
        events.journal_block(b"\xab" * 32, 5, 60.0, *FIELDS.values())
    assert "ab" * 32 in caplog.text and "submitted anyway" in caplog.text
    errors = registry.get_sample_value("miningproxy_events_write_errors_total", {"stream": "found-blocks"})
    assert errors == 1
    event_log.close()


def test_no_journal_for_a_pool_record_without_one(tmp_path):
    event_log, feed = open_record(tmp_path)
    events = PoolEvents(feed)
    events.journal_block(b"\xab" * 32, 5, 60.0, *FIELDS.values())  # nothing to write to
    assert events.block_found(hash="ab" * 32, height=5, weight=60.0, **FIELDS) == 1
    assert not list(tmp_path.glob("*found-blocks"))
    event_log.close()


KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys, trio
    from pathlib import Path
    from miningproxy.events.block_journal import BlockJournal, journal_path
    from miningproxy.events.feed import EventFeed
    from miningproxy.events.log import EventLog
    from miningproxy.events.pool_events import POOL_SEQ, PoolEvents, open_pool_stream

    async def main(path):
        event_log = EventLog(path)
        open_pool_stream(event_log, "privatenet")
        journal = BlockJournal(journal_path(path))
        events = PoolEvents(EventFeed(event_log, POOL_SEQ), journal=journal, journaled_before=journal.open())
        fields = dict(miner="W.rig", worker="rig", address="W", job_id="00aa")
        async with trio.open_nursery() as nursery:
            await nursery.start(events.run)
            events.share_accepted(share_weight=20.0, hash=b"\\x01" * 32, height=7, **fields)
            await events.flush()
            # A share that is a block, as PoolService.judge_share takes it: the journal, the block
            # upstream, the share's event and POOL_BLOCK_FOUND; then the kill, before the commit.
            events.journal_block(b"\\xbb" * 32, 7, 60.5, *fields.values())
            events.share_accepted(share_weight=20.0, hash=b"\\xbb" * 32, height=7, **fields)
            events.block_found(hash=b"\\xbb" * 32, height=7, weight=60.5, **fields)
            os.kill(os.getpid(), signal.SIGKILL)

    trio.run(main, sys.argv[1])
    """
)


async def test_a_block_whose_record_a_sigkill_cut_off_is_recorded_again_after_the_restart(tmp_path):
    database = tmp_path / "events.sqlite3"
    child = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(database)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=60,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    event_log, feed = open_record(tmp_path)
    upto = feed.last_id
    assert upto is not None
    journal = BlockJournal(journal_path(database))
    events = PoolEvents(feed, journal=journal, journaled_before=journal.open())
    rows = await read_record(events, upto)
    assert unsettled_blocks(rows) == []  # the record alone has no trace of the block
    async with trio.open_nursery() as nursery:
        await nursery.start(events.run)
        (block,) = rerecord_journaled(events, rows)
        await events.flush()
        nursery.cancel_scope.cancel()
    stored = [e for e in event_log.read(POOL_SEQ, 0, 100) if "POOL_BLOCK_FOUND" in e[1]]
    assert len(stored) == 1 and block.event_id == stored[0][0]
    assert '"hash":"' + "bb" * 32 + '"' in stored[0][1] and '"weight":60.5' in stored[0][1]
    assert (block.height, block.miner, block.job_id) == (7, "W.rig", "00aa")
    assert journal_lines(tmp_path) == []
    event_log.close()
