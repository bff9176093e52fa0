"""The event loop's lock-free counter exposes exactly what prometheus_client's Counter would."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, generate_latest

from miningproxy.metrics import LoopCounter

LABELS = st.tuples(
    st.sampled_from(["accepted", "rejected"]), st.sampled_from(["ok", "stale", 'odd "quote"\\'])
)


def total_lines(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode()
    return sorted(line for line in text.splitlines() if "_created" not in line)


@given(st.lists(st.tuples(LABELS, st.integers(min_value=1, max_value=5)), max_size=30))
def test_a_labelled_loop_counter_renders_as_a_prometheus_counter(increments):
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopCounter("x_shares", "Shares by result", ("result", "reason"), registry=ours)
    reference = Counter("x_shares", "Shares by result", ["result", "reason"], registry=theirs)
    loop.labels("accepted", "ok")  # a child made up front is shown at 0, as prometheus_client does
    reference.labels("accepted", "ok")
    for labels, amount in increments:
        loop.labels(*labels).inc(amount)
        reference.labels(*labels).inc(amount)
    assert total_lines(ours) == total_lines(theirs)
    for labels, _ in increments:
        assert ours.get_sample_value(
            "x_shares_total", dict(zip(("result", "reason"), labels, strict=True))
        ) == (theirs.get_sample_value("x_shares_total", dict(zip(("result", "reason"), labels, strict=True))))


def test_an_unlabelled_loop_counter_renders_as_a_prometheus_counter():
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopCounter("x_jobs", "Jobs", registry=ours)
    reference = Counter("x_jobs", "Jobs", registry=theirs)
    for amount in (1, 1, 3):
        loop.inc(amount)
        reference.inc(amount)
    assert total_lines(ours) == total_lines(theirs)


def test_misused_labels_are_refused_with_the_counter_named():
    loop = LoopCounter("x_shares", "Shares", ("result", "reason"), registry=CollectorRegistry())
    with pytest.raises(ValueError, match="x_shares"):
        loop.labels("accepted")
    with pytest.raises(ValueError, match="x_shares"):
        loop.labels("accepted", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="labels"):
        loop.inc()
