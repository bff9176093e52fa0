"""An "ok" waits for the pool record's commit: one commit releases every waiting rig at once, and
a record that never commits closes the rig after send_timeout (it is never told "ok")."""

from __future__ import annotations

import threading
from pathlib import Path

import trio

from miningproxy.events.feed import EventFeed
from miningproxy.events.log import EventLog
from miningproxy.events.pool_events import POOL_SEQ, PoolEvents, open_pool_stream
from tests.test_stratum_server import TIMEOUT, Client, start, wait_for
from tests.test_stratum_support import solve


class GatedLog(EventLog):
    """Commits wait until the gate is open (a slow or stuck disk)."""

    gate: threading.Event

    def append(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def,override]
        self.gate.wait()
        super().append(*args, **kwargs)


async def with_record(nursery: trio.Nursery, tmp_path: Path, **changes):  # type: ignore[no-untyped-def]
    h = await start(nursery, **changes)
    log = GatedLog(tmp_path / "events.sqlite3")
    log.gate = threading.Event()
    log.gate.set()
    open_pool_stream(log, "privatenet")
    events = PoolEvents(EventFeed(log, POOL_SEQ))
    await nursery.start(events.run)
    h.pool.events = events
    return h, log, events


async def share(rig: Client, job: dict, start_nonce: int, msgid: int) -> int:  # type: ignore[type-arg]
    nonce = solve(bytes.fromhex(job["data"]), job["weight"], start_nonce)
    await rig.send(
        {
            "jsonrpc": "2.0",
            "id": msgid,
            "method": "submit",
            "params": {"job_id": job["job_id"], "nonce": f"0x{nonce:x}"},
        }
    )
    return nonce


async def reply(rig: Client, msgid: int, timeout: float = TIMEOUT) -> dict | None:  # type: ignore[type-arg]
    while True:
        message = await rig.line(timeout)
        if message is None or ("method" not in message and message.get("id") == msgid):
            return message


async def test_one_commit_releases_every_rig_and_no_ok_goes_out_before_it(tmp_path):
    async with trio.open_nursery() as nursery:
        h, log, events = await with_record(nursery, tmp_path)
        rigs = [await Client.connect(h.port) for _ in range(3)]
        jobs = [await rig.subscribe() for rig in rigs]
        # One share each while the disk is open: answered.
        for rig, job in zip(rigs, jobs, strict=True):
            await share(rig, job, 0, 1)
            assert (await reply(rig, 1))["result"] == "ok"
        # Each rig's share's own event id. Not events.last_recorded: a share that happens to meet
        # the block weight is followed by its block's events, which its "ok" does not wait for.
        ids: list[int] = []
        share_accepted = events.share_accepted

        def spy(**fields):  # type: ignore[no-untyped-def]
            event_id = share_accepted(**fields)
            ids.append(event_id)
            return event_id

        events.share_accepted = spy  # type: ignore[method-assign]
        log.gate.clear()
        try:
            for n, (rig, job) in enumerate(zip(rigs, jobs, strict=True)):
                await share(rig, job, 10**6, 2)
                await wait_for(lambda n=n: len(ids) > n)
            # The first is in the commit stuck at the gate, the others wait for the next one.
            await wait_for(lambda: len(h.server._awaiting_record) == 3)
            for rig in rigs:
                with trio.move_on_after(0.2) as early:
                    await rig.line(1.0)
                assert early.cancelled_caught, "an ok went out before its record was committed"
            assert events.feed.last_id < ids[0]
        finally:
            log.gate.set()
        for rig, event_id in zip(rigs, ids, strict=True):
            assert (await reply(rig, 2))["result"] == "ok"
            assert events.feed.last_id >= event_id
        assert not h.server._awaiting_record
        for rig in rigs:
            await rig.aclose()
        nursery.cancel_scope.cancel()


async def test_a_record_that_never_commits_closes_the_rig_unanswered(tmp_path):
    async with trio.open_nursery() as nursery:
        h, log, events = await with_record(nursery, tmp_path, send_timeout=0.5)
        rig = await Client.connect(h.port)
        job = await rig.subscribe()
        log.gate.clear()
        try:
            await share(rig, job, 0, 1)
            assert await reply(rig, 1, timeout=5.0) is None  # closed, never told "ok"
            assert h.metric("miningproxy_stratum_limit_hits_total", limit="record_timeout") == 1
            assert not h.server._awaiting_record
        finally:
            log.gate.set()
        await events.flush()
        nursery.cancel_scope.cancel()


async def test_a_rig_gone_while_its_ok_waits_holds_back_nobody(tmp_path):
    async with trio.open_nursery() as nursery:
        h, log, events = await with_record(nursery, tmp_path)
        gone, staying = [await Client.connect(h.port) for _ in range(2)]
        jobs = [await gone.subscribe(), await staying.subscribe()]
        log.gate.clear()
        try:
            await share(gone, jobs[0], 0, 1)  # waits first (its commit is stuck at the gate)
            await wait_for(lambda: len(h.server._awaiting_record) == 1)
            await share(staying, jobs[1], 0, 1)
            await wait_for(lambda: len(h.server._awaiting_record) == 2)
            await gone.aclose()
            await wait_for(lambda: len(h.server._awaiting_record) == 1)
        finally:
            log.gate.set()
        assert (await reply(staying, 1))["result"] == "ok"
        assert not h.server._awaiting_record
        await staying.aclose()
        nursery.cancel_scope.cancel()
