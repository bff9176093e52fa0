"""A job handed over by ``take_new_job`` is booked later (``Session.book``: the history,
vardiff's account, the weight event), and nothing can tell: every method that reads the
history books first.

Two sessions on two identical pools go through the same steps: one books every job the moment
its line is taken (as if ``take_new_job`` did it all), the other only where a method books it
by itself (as when a share, the timer or a status read comes between the fan-out's write and
its booking pass). After every step the rig has read the same bytes and every answer is the
same; after every step that reads the history, the two sessions hold the same history,
vardiff state and events.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from miningproxy.stratum.vardiff import Vardiff
from tests.test_stratum_support import TEMPLATES, FakePool, Rig, jobs, miss, solve

STEPS = st.one_of(
    st.tuples(st.just("take"), st.booleans()),
    st.tuples(st.just("share"), st.integers(0, 4)),  # a valid share for the job this many back
    st.tuples(st.just("miss"), st.integers(0, 4)),
    st.tuples(st.just("tick"), st.sampled_from([0.0, 0.5, 3.0, 20.0, 200.0])),
    st.tuples(st.just("deadline"), st.none()),
    st.tuples(st.just("status"), st.none()),
    st.tuples(st.just("current"), st.none()),
    st.tuples(st.just("new_work"), st.booleans()),
    st.tuples(st.just("template"), st.integers(0, len(TEMPLATES) - 1)),
)
# The steps that go through a session method that reads the history (the rest only hand a job
# over, change the pool's template, or read the outbox).
READS_HISTORY = {"share", "miss", "tick", "deadline", "status", "current", "new_work"}


def pair() -> tuple[Rig, Rig]:
    rigs = []
    for _ in range(2):
        pool = FakePool()
        pool.jobs._prefix = b"\x00\x00\x00\x02"  # the same job ids for both
        pool.set_template()
        # A short history, so jobs leave it (and its expired ring) within a few steps.
        rig = Rig(pool, get_version=False, job_history=3, job_interval=30.0)
        assert jobs(rig.subscribe())
        rigs.append(rig)
    return rigs[0], rigs[1]


def held(rig: Rig) -> dict[str, Any]:
    """What a session holds about its jobs (read without booking)."""
    session = rig.session
    return {
        "jobs": {job_id: (job.header, job.created_at, job.clean) for job_id, job in session._jobs.items()},
        "ring": list(session._job_ids),
        "expired": session._expired and list(session._expired),
        "current": session._current and session._current.job_id,
        "last_job_at": session._last_job_at,
        "vardiff": {name: getattr(session.vardiff, name, None) for name in Vardiff.__slots__},
        "events": list(session.take_events()),
        "accepted": session.accepted,
        "rejected": dict(session.rejected),
        "queued": (session.jobs_queued, session.last_job_taken),
    }


def step(rig: Rig, eager: bool, kind: str, arg: Any, now: float, submit: str | None) -> list[Any]:
    """One step on one rig (``eager``: book a handed-over job at once): what it answers, then
    the bytes the rig reads."""
    rig.now = rig.pool.now = now
    session = rig.session
    out: list[Any] = []
    if kind == "take":
        out.append(session.take_new_job(arg, now))
        if eager:
            session.book()
    elif submit is not None:
        session.receive_many([submit], now)
    elif kind == "tick":
        session.tick(now)
    elif kind == "deadline":
        out.append(session.next_deadline())
    elif kind == "status":
        out.append(session.status(now))
    elif kind == "current":
        job = session.current_job
        out.append(job and job.job_id)
    elif kind == "new_work":
        out.append(session.new_work(arg, now))
    elif kind == "template":
        rig.pool.set_template(TEMPLATES[arg])
    out.append(session.data_to_send())
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(STEPS, min_size=1, max_size=24))
def test_a_job_booked_late_is_a_job_booked_at_once(steps: list[tuple[str, Any]]) -> None:
    eager, lazy = pair()
    handed: list[dict[str, Any]] = []  # the jobs' params as the rig read them, oldest first
    now = 1.0
    for number, (kind, arg) in enumerate(steps):
        submit = None
        if kind in ("share", "miss") and handed:
            job = handed[-1 - min(arg, len(handed) - 1)]
            find = solve if kind == "share" else miss
            nonce = find(bytes.fromhex(job["data"]), job["weight"], number << 20)
            params = {"job_id": job["job_id"], "nonce": f"{nonce:032x}"}
            submit = json.dumps({"id": 100 + number, "method": "submit", "params": params})
        out = step(eager, True, kind, arg, now, submit)
        assert step(lazy, False, kind, arg, now, submit) == out, (kind, arg)
        for item in out:  # the rig's jobs: handed over, or queued and read
            if isinstance(item, bytes) and item:
                handed.extend(jobs([json.loads(line) for line in item.splitlines()]))
        if kind in READS_HISTORY and (submit is not None or kind not in ("share", "miss")):
            assert held(eager) == held(lazy), (kind, arg)
        if kind == "tick":
            now += arg
    lazy.session.book()
    assert held(eager) == held(lazy)
