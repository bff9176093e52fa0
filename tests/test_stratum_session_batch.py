"""A read's lines through ``Session.receive_many``: the short way for the usual submit, and
crediting a read's accepted shares together, end exactly where the general way ends.

Two sessions on two identical pools get the same lines: one in reads (``receive_many``, as the
server feeds it), the other one line at a time through the general path (``_line``: decode, then
``_message``, ``_submit``, a credit per share). Whatever the lines -- usual submits, duplicates,
misses, stale and unknown jobs, malformed nonces and ids, other methods, a worker change in the
middle of a read, garbage, framing errors -- the rig reads the same bytes, the server gets the
same events, and the session and the pool's stats hold the same counts.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from miningproxy.stratum.framing import LineTooLong, NotUtf8
from tests.test_stratum_support import FakePool, Rig, jobs, miss, solve

KINDS = [
    "share",  # the usual submit, a fresh valid nonce
    "share-str-id",
    "share-list",  # positional params: the general way only
    "duplicate",
    "miss",
    "unknown-job",
    "upper-unknown-job",
    "bad-job-id",
    "nonce-0x",
    "nonce-not-hex",
    "nonce-too-big",
    "nonce-int",
    "float-id",
    "infinite-id",
    "big-id",  # beyond 64 bits: orjson reads a float, the general way the exact integer
    "negative-big-id",
    "big-number-elsewhere",
    "bool-id",
    "object-id",
    "escaped-job-id",
    "duplicate-keys",
    "padded",
    "trailing",
    "ping",
    "ping-big-id",  # not a submit: decoded again by the general way, never taken from orjson
    "authorize",
    "not-an-object",
    "garbage",
    "deep",
    "method-list",
    "too-long",
    "not-utf8",
]


class Scenario:
    """Turns kinds into lines for one rig; the job and nonces come from the rig's own session."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.ids = iter(range(100, 1_000_000))
        self.next_nonce = 0
        self.used: list[int] = []
        self.workers = iter(range(1000))

    def line(self, kind: str) -> Any:
        session = self.rig.session
        job = session.current_job
        assert job is not None
        msgid = next(self.ids)

        def submit(params: Any, ident: Any = msgid) -> str:
            return json.dumps({"id": ident, "method": "submit", "params": params})

        def fresh() -> int:
            nonce = solve(job.header, job.share_weight, self.next_nonce)
            self.next_nonce = nonce + 1
            self.used.append(nonce)
            return nonce

        if kind == "share":
            return f'{{"id":{msgid},"method":"mining.submit","params":{{"job_id":"{job.job_id}","nonce":"{fresh():032x}"}}}}'
        if kind == "share-str-id":
            return submit({"job_id": job.job_id, "nonce": f"{fresh():032x}"}, f"s{msgid}")
        if kind == "share-list":
            return submit(["rig", job.job_id, f"{fresh():032x}"])
        if kind == "duplicate":
            nonce = self.used[-1] if self.used else fresh()
            return submit({"job_id": job.job_id, "nonce": f"{nonce:032x}"})
        if kind == "miss":
            return submit({"job_id": job.job_id, "nonce": f"{miss(job.header, job.share_weight):032x}"})
        if kind == "unknown-job":
            return submit({"job_id": "ab" * 16, "nonce": "00"})
        if kind == "upper-unknown-job":
            return submit({"job_id": "CD" * 16, "nonce": "01"})
        if kind == "bad-job-id":
            return submit({"job_id": "xyz", "nonce": "01"})
        if kind == "nonce-0x":
            return submit({"job_id": job.job_id, "nonce": f"0x{fresh():x}"})
        if kind == "nonce-not-hex":
            return submit({"job_id": job.job_id, "nonce": "zz"})
        if kind == "nonce-too-big":
            return submit({"job_id": job.job_id, "nonce": "1" * 33})
        if kind == "nonce-int":
            return submit({"job_id": job.job_id, "nonce": fresh()})
        if kind == "float-id":
            return submit({"job_id": job.job_id, "nonce": f"{fresh():032x}"}, 1.5)
        if kind == "infinite-id":
            return (
                f'{{"id":1e999,"method":"submit","params":{{"job_id":"{job.job_id}","nonce":"{fresh():x}"}}}}'
            )
        if kind == "big-id":
            return submit({"job_id": job.job_id, "nonce": f"{fresh():032x}"}, 2**64 + msgid)
        if kind == "negative-big-id":
            return submit({"job_id": job.job_id, "nonce": f"{fresh():032x}"}, -(2**63) - msgid)
        if kind == "big-number-elsewhere":
            return json.dumps(
                {
                    "id": msgid,
                    "method": "submit",
                    "params": {"job_id": job.job_id, "nonce": f"{fresh():032x}", "x": 2**70},
                }
            )
        if kind == "bool-id":
            return submit({"job_id": job.job_id, "nonce": f"{fresh():032x}"}, True)
        if kind == "object-id":
            return submit({"job_id": job.job_id, "nonce": f"{fresh():032x}"}, {"a": [1, 2**65]})
        if kind == "escaped-job-id":
            escaped = "".join(f"\\u{ord(c):04x}" for c in job.job_id)
            return f'{{"id":{msgid},"method":"submit","params":{{"job_id":"{escaped}","nonce":"{fresh():032x}"}}}}'
        if kind == "duplicate-keys":  # the last one counts, for both decoders
            first = json.dumps({"job_id": "bad", "nonce": "zz"})
            last = json.dumps({"job_id": job.job_id, "nonce": f"{fresh():032x}"})
            return f'{{"id":{msgid},"method":"ping","params":{first},"method":"submit","params":{last}}}'
        if kind == "padded":
            return " " + submit({"job_id": job.job_id, "nonce": f"{fresh():032x}"}) + " "
        if kind == "trailing":
            return submit({"job_id": job.job_id, "nonce": f"{fresh():032x}"}) + " x"
        if kind == "ping":
            return json.dumps({"id": msgid, "method": "mining.ping"})
        if kind == "ping-big-id":
            return json.dumps({"id": 2**70 + msgid, "method": "mining.ping"})
        if kind == "authorize":
            return json.dumps({"id": msgid, "method": "authorize", "params": [f"worker{next(self.workers)}"]})
        if kind == "not-an-object":
            return "[1, 2]"
        if kind == "garbage":
            return "{not json"
        if kind == "deep":
            return '{"a":' * 100_000 + "1" + "}" * 100_000
        if kind == "method-list":
            return json.dumps({"id": msgid, "method": ["submit"], "params": {}})
        if kind == "too-long":
            return LineTooLong(20000)
        if kind == "not-utf8":
            return NotUtf8(b"\xff")
        raise AssertionError(kind)


def general_way(rig: Rig, events: list[Any], now: float) -> None:
    """What receive_many does, line by line, through the general path only."""
    session = rig.session
    for event in events:
        if session.close_reason is not None:
            return
        if isinstance(event, str):
            session._line(event, now)
        else:
            session._framing_error(event)


def pair(**changes: Any) -> tuple[Rig, Rig]:
    rigs = []
    for _ in range(2):
        pool = FakePool()
        pool.jobs._prefix = b"\x00\x00\x00\x01"  # the same job ids for both
        pool.set_template()
        rig = Rig(pool, get_version=False, **changes)
        assert jobs(rig.subscribe())
        rig.session.data_to_send()
        rigs.append(rig)
    return rigs[0], rigs[1]


def state(rig: Rig) -> dict[str, Any]:
    session = rig.session
    stats = rig.pool.stats
    return {
        "sent": session.data_to_send(),
        "events": list(session.take_events()),
        "unsynced": session.take_unsynced_accepts(),
        "close": session.close_reason,
        "accepted": session.accepted,
        "rejected": dict(session.rejected),
        "blocks": session.blocks,
        "last_share_at": session.last_share_at,
        "weight": session.vardiff.weight,
        "retargets": session.vardiff.retargets,
        "miner": session.miner,
        "judged": [(str(m), j.job_id, n, r) for m, j, n, r in rig.pool.shares],
        "miners": {
            str(m): (s.accepted, dict(s.rejected), s.last_share_at, pytest.approx(s.meter._total))
            for m, s in stats.miners.items()
        },
        "pool": (stats.pool.accepted, dict(stats.pool.rejected), pytest.approx(stats.pool.meter._total)),
        "meter": pytest.approx(session.meter._total),
    }


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.lists(st.sampled_from(KINDS), max_size=12), min_size=1, max_size=5),
    st.sampled_from([1 << 20, 400]),  # a small outbox: a rig that does not read is closed mid-read
)
def test_reads_through_the_short_way_end_where_the_general_way_ends(
    reads: list[list[str]], max_outbox: int
) -> None:
    fast, slow = pair(max_outbox=max_outbox)
    fast_lines, slow_lines = Scenario(fast), Scenario(slow)
    for number, kinds in enumerate(reads):
        now = 1.0 + number
        fast.now = fast.pool.now = slow.now = slow.pool.now = now
        fast.session.receive_many([fast_lines.line(kind) for kind in kinds], now)
        general_way(slow, [slow_lines.line(kind) for kind in kinds], now)
        assert state(fast) == state(slow), kinds


def test_a_reads_usual_shares_are_credited_together_and_in_full() -> None:
    fast, _ = pair()
    lines = Scenario(fast)
    credits: list[tuple[str, int, float]] = []
    credit = fast.pool.credit_shares

    def spy(miner: Any, count: int, work: float, now: float) -> None:
        credits.append((str(miner), count, work))
        credit(miner, count, work, now)

    fast.pool.credit_shares = spy  # type: ignore[method-assign]
    work = fast.session.current_job.terms.share_work  # (a retarget in the read changes only later jobs)
    fast.session.receive_many([lines.line("share") for _ in range(30)], 5.0)
    assert [(count, work_) for _, count, work_ in credits] == [(30, pytest.approx(30 * work))]
    assert fast.pool.stats.pool.accepted == 30
    assert fast.session.data_to_send().count(b'"result":"ok"') == 30


def test_shares_before_a_worker_change_in_the_same_read_go_to_the_old_worker() -> None:
    fast, _ = pair()
    lines = Scenario(fast)
    read = [lines.line("share"), lines.line("share"), lines.line("authorize"), lines.line("share")]
    fast.session.receive_many(read, 5.0)
    by_worker = {miner.worker: stats.accepted for miner, stats in fast.pool.stats.miners.items()}
    assert by_worker == {"default": 2, "worker0": 1}


def test_a_bug_in_the_middle_of_a_read_still_credits_the_shares_answered_before_it() -> None:
    fast, _ = pair()
    lines = Scenario(fast)
    read = [lines.line("share") for _ in range(3)]
    judge = fast.pool.judge_share
    calls = iter(range(10))

    def flaky(*args: Any) -> Any:
        if next(calls) == 2:
            raise RuntimeError("a bug")
        return judge(*args)

    fast.pool.judge_share = flaky  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        fast.session.receive_many(read, 5.0)
    assert fast.pool.stats.pool.accepted == 2
