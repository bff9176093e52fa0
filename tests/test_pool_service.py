"""The pool service: template changes become work signals; blocks go upstream at once."""

from __future__ import annotations

import itertools
from contextlib import asynccontextmanager
from types import SimpleNamespace

import trio

from hashing.header import HeaderHasher
from hashing.pow import weight_to_target
from miningproxy.hathor.block import parse_block
from miningproxy.hathor.template import BlockTemplate
from miningproxy.latest import LatestValue
from miningproxy.metrics import Metrics
from miningproxy.pool.service import PoolService
from miningproxy.pool.stats import MinerId
from tests.hathor_vectors import PRIVATENET_ADDRESS, PRIVATENET_SCRIPT, template_dicts

TEMPLATES = [BlockTemplate.from_json(t) for t in template_dicts()]
OTHER_TIP = next(t for t in TEMPLATES if t.parents[0] != TEMPLATES[0].parents[0])
RIG = MinerId(PRIVATENET_ADDRESS, "rig1")


class FakeUpstream:
    def __init__(self, *, status="accepted", delay=0.0):
        self.templates = LatestValue()
        self.submitted: list[tuple[bytes, bytes]] = []
        self.status = status
        self.delay = delay

    def push(self, template, node="node-a"):
        self.templates.publish(
            SimpleNamespace(node=node, templates=[template], received_at=trio.current_time())
        )

    async def submit(self, struct, *, block_hash, on_late_fate=None):
        self.submitted.append((struct, block_hash))
        await trio.sleep(self.delay)
        return SimpleNamespace(
            status=self.status,
            reason="" if self.status == "accepted" else "nope",
            node="node-a",
            latency=self.delay,
        )


def make_pool(upstream, **kw):
    return PoolService(
        upstream=upstream,
        address=PRIVATENET_ADDRESS,
        tag="t",
        job_refresh=kw.pop("job_refresh", 10.0),
        metrics=Metrics(),
        wallclock=lambda: 1795814406,
        **kw,
    )


@asynccontextmanager
async def running_pool(upstream, **kw):
    """A running pool that ``upstream`` (a FakeUpstream) has fed ``TEMPLATES[0]``."""
    pool = make_pool(upstream, **kw)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        upstream.push(TEMPLATES[0])
        await trio.sleep(0.1)
        yield pool
        nursery.cancel_scope.cancel()


def winning_nonce(job, weight):
    hasher, target = HeaderHasher(job.header), weight_to_target(weight)
    return next(n for n in itertools.count() if int.from_bytes(hasher.hash_nonce(n), "big") < target)


async def test_new_tip_is_clean_work_and_refresh_is_not(autojump_clock):
    upstream = FakeUpstream()
    pool = make_pool(upstream, job_refresh=5.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        signals = []

        async def watch():
            async for signal in pool.work.subscribe():
                signals.append(signal)

        nursery.start_soon(watch)
        upstream.push(TEMPLATES[0])
        await trio.sleep(1)
        assert [s.clean for s in signals] == [True]
        await trio.sleep(5)  # job_refresh: a new, non-clean signal for the same template
        assert [s.clean for s in signals] == [True, False]
        assert signals[1].generation is signals[0].generation
        upstream.push(OTHER_TIP)
        await trio.sleep(0.1)
        assert signals[-1].clean and signals[-1].generation.tip == OTHER_TIP.parents[0]
        nursery.cancel_scope.cancel()


async def test_block_share_is_submitted_and_counted(autojump_clock):
    upstream = FakeUpstream()
    async with running_pool(upstream) as pool:
        job = pool.new_job(share_weight=1.0, clean=True)
        nonce = winning_nonce(job, job.block_weight)
        result = pool.submit_share(RIG, job, nonce)
        assert result.accepted and result.is_block
        await trio.sleep(0.1)
        struct, block_hash = upstream.submitted[0]
        assert struct == job.assembled.struct(nonce)
        assert parse_block(struct).outputs[0].script == PRIVATENET_SCRIPT
        assert block_hash == result.hash
        assert [b.status for b in pool.blocks] == ["accepted"]
        assert pool.stats.pool.blocks == 1 and pool.stats.miners[RIG].blocks == 1
        text = pool.metrics.render().decode()
        assert 'miningproxy_blocks_total{result="accepted"} 1.0' in text
        assert 'miningproxy_blocks_total{result="found"} 1.0' in text
        assert "miningproxy_block_submit_roundtrip_seconds_count 1.0" in text


async def test_rejected_shares_are_counted_by_reason(autojump_clock):
    upstream = FakeUpstream()
    async with running_pool(upstream) as pool:
        job = pool.new_job(share_weight=1.0, clean=True)
        upstream.push(OTHER_TIP)
        await trio.sleep(0.1)
        assert pool.submit_share(RIG, job, 0).reason == "stale"
        assert pool.stats.miners[RIG].rejected["stale"] == 1
        assert (
            'miningproxy_shares_total{reason="stale",result="rejected"} 1.0' in pool.metrics.render().decode()
        )


async def test_judged_shares_count_once_credited_and_a_batch_counts_in_full(autojump_clock):
    upstream = FakeUpstream()
    async with running_pool(upstream) as pool:
        job = pool.new_job(share_weight=1.0, clean=True)
        hasher, target = HeaderHasher(job.header), weight_to_target(1.0)
        # Shares that are not blocks too (1 in 128 at the template's weight 8 is): a block is
        # counted for its miner at once, which is not what this test is about.
        block_target = weight_to_target(job.block_weight)
        hashes = ((n, int.from_bytes(hasher.hash_nonce(n), "big")) for n in range(1000))
        nonces = [n for n, h in hashes if block_target <= h < target][:5]
        now = trio.current_time()
        results = [pool.judge_share(RIG, job, nonce, now) for nonce in nonces]
        assert all(r.accepted for r in results)
        assert RIG not in pool.stats.miners  # judged, not yet credited
        pool.credit_shares(RIG, 5, 5 * job.terms.share_work, now)
        assert pool.submit_share(RIG, job, nonces[0]).reason == "duplicate"  # judged at once
        miner = pool.stats.miners[RIG]
        assert (miner.accepted, pool.stats.pool.accepted, dict(miner.rejected)) == (5, 5, {"duplicate": 1})
        assert miner.last_share_at == now
        text = pool.metrics.render().decode()
        assert 'miningproxy_shares_total{reason="ok",result="accepted"} 5.0' in text


async def test_drain_waits_for_in_flight_submissions(autojump_clock):
    upstream = FakeUpstream(delay=2.0)
    async with running_pool(upstream) as pool:
        job = pool.new_job(share_weight=1.0, clean=True)
        pool.submit_share(RIG, job, winning_nonce(job, job.block_weight))
        start = trio.current_time()
        await pool.drain(10.0)
        assert 1.9 <= trio.current_time() - start < 3
        assert pool.blocks[0].status == "accepted"


async def test_broadcast_latency_observed_when_the_last_consumer_has_its_job(autojump_clock):
    upstream = FakeUpstream()
    pool = make_pool(upstream)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        pool.register_consumer()
        pool.register_consumer()
        upstream.push(TEMPLATES[0])
        await trio.sleep(0.1)
        signal = pool.work.current
        pool.job_delivered(signal)
        await trio.sleep(0.5)
        assert "miningproxy_job_broadcast_latency_seconds_count 0.0" in pool.metrics.render().decode()
        pool.unregister_consumer()  # the slow one leaves: nobody left to wait for
        text = pool.metrics.render().decode()
        assert "miningproxy_job_broadcast_latency_seconds_count 1.0" in text
        assert 'miningproxy_job_broadcast_latency_seconds_bucket{le="0.5"} 0.0' in text
        assert 'miningproxy_job_broadcast_latency_seconds_bucket{le="1.0"} 1.0' in text
        nursery.cancel_scope.cancel()


async def test_block_without_an_answer_in_time_is_pending_until_its_late_fate(autojump_clock):
    class SlowUpstream(FakeUpstream):
        async def submit(self, struct, *, block_hash, on_late_fate=None):
            self.late = on_late_fate
            return SimpleNamespace(
                status="error",
                node="node-a",
                reason="no answer within 10s (queued: no node usable); its fate will be logged",
            )

    upstream = SlowUpstream()
    async with running_pool(upstream) as pool:
        job = pool.new_job(share_weight=1.0, clean=True)
        pool.submit_share(RIG, job, winning_nonce(job, job.block_weight))
        await trio.sleep(0.1)
        assert pool.blocks[0].status == "pending"
        assert 'miningproxy_blocks_total{result="rejected"} 0.0' in pool.metrics.render().decode()
        upstream.late(SimpleNamespace(status="accepted", node="node-a", reason="the tip is this block"))
        assert pool.blocks[0].status == "accepted"
        assert 'miningproxy_blocks_total{result="accepted"} 1.0' in pool.metrics.render().decode()


async def test_block_is_in_the_upstream_queue_when_submit_share_returns(autojump_clock, monkeypatch):
    from miningproxy.upstream import mining

    def no_parsing(struct):
        raise AssertionError("parse_block called: the pool knows the parent")

    upstream = mining.MiningUpstream(["http://127.0.0.1:9/v1a/"], submit_timeout=5.0)  # not running
    pool = make_pool(upstream)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        upstream.templates.publish(mining.TemplateUpdate("node-a", (TEMPLATES[0],), trio.current_time()))
        await trio.sleep(0.1)
        job = pool.new_job(share_weight=1.0, clean=True)
        nonce = winning_nonce(job, job.block_weight)
        monkeypatch.setattr(mining, "parse_block", no_parsing)
        result = pool.submit_share(RIG, job, nonce)
        assert result.is_block
        st = upstream.status()  # no checkpoint since the share was judged
        assert st.queued_blocks == 1 and st.counters["blocks_queued"] == 1
        queued = upstream._queue[0]
        assert queued.struct == job.assembled.struct(nonce) and queued.hash == result.hash
        assert queued.parent == job.generation.tip
        await trio.sleep(6)  # no node: submit_timeout passes, the block stays queued
        assert pool.blocks[0].status == "pending"
        nursery.cancel_scope.cancel()
    # The upstream client never ran; a late fate still reaches the pool's record.
    upstream._resolve(queued, "accepted", "the tip is this block", "node-a")
    assert pool.blocks[0].status == "accepted"


async def test_every_job_handed_out_is_counted_in_metrics(autojump_clock):
    upstream = FakeUpstream()
    async with running_pool(upstream) as pool:
        for _ in range(3):
            pool.new_job(share_weight=1.0)
        text = pool.metrics.render().decode()
        assert "# TYPE miningproxy_jobs_sent_total counter" in text
        assert "miningproxy_jobs_sent_total 3.0" in text
        assert pool.metrics.registry.get_sample_value("miningproxy_jobs_sent_total") == 3


async def test_a_block_is_in_the_found_block_journal_before_it_goes_upstream(tmp_path):
    from miningproxy.events.block_journal import BlockJournal, journal_path, read_journal
    from miningproxy.events.feed import EventFeed
    from miningproxy.events.log import EventLog
    from miningproxy.events.pool_events import POOL_SEQ, PoolEvents, open_pool_stream

    database = tmp_path / "events.sqlite3"
    journal_file = journal_path(database)
    assert journal_file is not None
    seen_at_enqueue: list[list[str]] = []

    class JournalCheckingUpstream(FakeUpstream):
        def enqueue(self, struct, *, block_hash, parent, on_late_fate):
            # What a crash right after the node got the block would leave behind.
            blocks, _ = read_journal(journal_file.read_bytes())
            seen_at_enqueue.append([b.hash for b in blocks])
            return SimpleNamespace(queued_at=trio.current_time())

        async def outcome(self, queued):
            return SimpleNamespace(status="accepted", reason="", node="node-a", latency=0.0)

    event_log = EventLog(database)
    open_pool_stream(event_log, "privatenet")
    journal = BlockJournal(journal_file)
    events = PoolEvents(EventFeed(event_log, POOL_SEQ), journal=journal, journaled_before=journal.open())
    async with running_pool(JournalCheckingUpstream()) as pool:
        pool.attach_events(events)
        job = pool.new_job(share_weight=1.0, clean=True)
        result = pool.submit_share(RIG, job, winning_nonce(job, job.block_weight))
        assert result.is_block
        assert seen_at_enqueue == [[result.hash.hex()]]
        (line,) = read_journal(journal_file.read_bytes())[0]
        assert (line.height, line.miner, line.job_id) == (job.template.height, str(RIG), job.job_id)
    journal.close()
    event_log.close()
