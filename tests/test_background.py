"""The event log's writer thread: calls in order, results and errors back, a lower CPU priority."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest
import trio

from miningproxy.background import LOG_WRITER, BackgroundThread


async def test_calls_run_in_order_on_one_thread_and_return_their_results():
    worker = BackgroundThread("test worker")
    seen: list[tuple[int, int]] = []

    def call(i: int) -> int:
        seen.append((i, threading.get_ident()))
        return i * i

    async with trio.open_nursery() as nursery:
        results: dict[int, int] = {}

        async def one(i: int) -> None:
            results[i] = await worker.run_sync(call, i)

        for i in range(20):
            nursery.start_soon(one, i)
    assert results == {i: i * i for i in range(20)}
    assert len({ident for _, ident in seen}) == 1
    assert seen[0][1] != threading.get_ident()  # never the event loop's thread


async def test_an_exception_reaches_the_caller_and_the_thread_goes_on():
    worker = BackgroundThread("test worker")

    def fail() -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        await worker.run_sync(fail)
    assert await worker.run_sync(lambda: "still serving") == "still serving"


async def test_a_cancelled_caller_waits_for_its_call_to_finish():
    # A commit that has started is never abandoned half-way from the caller's point of view:
    # the cancellation takes effect once the call has returned.
    worker = BackgroundThread("test worker")
    release = threading.Event()
    done: list[str] = []

    def slow() -> None:
        release.wait(5)
        done.append("committed")

    threading.Timer(0.3, release.set).start()
    started = time.monotonic()
    with trio.move_on_after(0.05) as scope:
        await worker.run_sync(slow)
    assert scope.cancel_called  # the deadline passed during the call...
    assert done == ["committed"]  # ...and the call still ran to its end before run_sync returned
    assert time.monotonic() - started >= 0.29  # it waited past the deadline for the call to end


async def test_the_calls_of_a_cancelled_scope_do_not_start():
    worker = BackgroundThread("test worker")
    ran: list[int] = []
    with trio.CancelScope() as scope:
        scope.cancel()
        await worker.run_sync(ran.append, 1)
    assert ran == [] and scope.cancelled_caught


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
async def test_the_thread_runs_at_a_lower_cpu_priority_than_the_event_loop():
    worker = BackgroundThread("test worker", nice=5)
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    theirs = await worker.run_sync(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
    assert worker.niced is True
    assert theirs == min(19, mine + 5)
    # The event loop's own thread (and so the process's other threads) kept its priority.
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine


async def test_event_feed_appends_go_through_the_writer_thread(tmp_path):
    from miningproxy.events.feed import EventFeed
    from miningproxy.events.log import EventLog, StoredEvent, StreamIdentity

    log = EventLog(tmp_path / "events.sqlite3")
    feed = EventFeed(log, "pool")
    threads: list[str] = []
    append = log.append

    def spy(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return append(*args, **kwargs)

    log.append = spy  # type: ignore[method-assign]
    identity = StreamIdentity("peer", "privatenet", "stream")
    await feed.append([StoredEvent(0, 1.0, '{"id":0}')], identity=identity)
    assert threads == [LOG_WRITER.name]
    assert feed.last_id == 0
    log.close()
