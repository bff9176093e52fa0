"""Hashrate from accepted work over a sliding window."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miningproxy.pool.hashrate import HashrateMeter


def test_steady_rate_is_measured():
    meter = HashrateMeter(window=600, bucket=10)
    # A rig finding one weight-20 share every 2 s does 2**20 / 2 hashes per second.
    for i in range(1000):
        meter.add(i * 2.0, 2.0**20)
    assert meter.rate(2000.0) == pytest.approx(2.0**19, rel=0.03)


def test_idle_rig_decays_to_zero():
    meter = HashrateMeter(window=60, bucket=5)
    for i in range(60):
        meter.add(float(i), 1000.0)
    busy = meter.rate(60.0)
    assert busy == pytest.approx(1000.0)
    later = meter.rate(60.0 + 30)
    assert 0 < later < busy
    assert meter.rate(60.0 + 130) == 0.0


def test_one_early_share_does_not_read_as_a_huge_rate():
    meter = HashrateMeter(window=600, bucket=10)
    meter.add(100.0, 1e6)
    assert meter.rate(100.001) <= 1e6 / 10


def test_bad_shape_rejected():
    with pytest.raises(ValueError):
        HashrateMeter(window=5, bucket=10)


@given(st.lists(st.tuples(st.floats(0, 5), st.floats(0, 1e12)), max_size=200))
def test_rate_is_never_negative_and_bounded_by_total_work(steps):
    meter = HashrateMeter(window=100, bucket=5)
    now = 0.0
    total = 0.0
    for dt, work in steps:
        now += dt
        meter.add(now, work)
        total += work
        rate = meter.rate(now)
        assert rate >= 0
        assert rate <= total / 5 + 1e-6


class _ReferenceMeter:
    """The meter written the plain way (every add scans for expired buckets): the fast path of
    HashrateMeter.add must give exactly its numbers."""

    def __init__(self, window: float, bucket: float) -> None:
        self.window, self.bucket = window, bucket
        self.buckets: list[list[float]] = []
        self.started: float | None = None
        self.total = 0.0

    def add(self, now: float, work: float) -> None:
        if self.started is None:
            self.started = now
        start = now - (now % self.bucket)
        if self.buckets and self.buckets[-1][0] == start:
            self.buckets[-1][1] += work
        else:
            self.buckets.append([start, work])
        self.total += work
        self.expire(now)

    def expire(self, now: float) -> None:
        while self.buckets and self.buckets[0][0] + self.bucket <= now - self.window:
            self.total -= self.buckets.pop(0)[1]
        if not self.buckets:
            self.total = 0.0

    def rate(self, now: float) -> float:
        if self.started is None:
            return 0.0
        self.expire(now)
        return self.total / max(min(self.window, now - self.started), self.bucket)


@given(
    st.sampled_from([(600.0, 10.0), (60.0, 5.0), (7.5, 2.5), (1.0, 0.3)]),
    st.lists(
        # Steps within a bucket (the meter's fast path), across buckets and windows, and back
        # (a local worker's share judged after a rig's later one).
        st.tuples(
            st.one_of(st.floats(0, 20), st.floats(0, 0.5), st.floats(-0.5, 0)),
            st.floats(0, 1e12),
            st.booleans(),
        ),
        max_size=300,
    ),
)
def test_fast_path_gives_exactly_the_plain_meters_rates(shape, steps):
    window, bucket = shape
    meter, reference = HashrateMeter(window=window, bucket=bucket), _ReferenceMeter(window, bucket)
    now = 1000.0
    for dt, work, look in steps:
        now += dt
        meter.add(now, work)
        reference.add(now, work)
        # Expired work leaves the total at the same add, however the meter got there.
        assert meter._total == reference.total and meter._buckets == reference.buckets
        if look:
            assert meter.rate(now) == reference.rate(now)
    latest = max([now] + [b[0] for b in reference.buckets])
    assert meter.rate(latest + window / 2) == reference.rate(latest + window / 2)
    assert meter.rate(latest + 2 * window) == reference.rate(latest + 2 * window) == 0.0


def test_work_expires_at_the_add_that_is_due_even_inside_the_newest_bucket():
    """With a window that is no multiple of the bucket, the oldest bucket may expire while adds
    still go to the newest one: it leaves the total at that add, as the plain meter's does."""
    meter, reference = HashrateMeter(window=1.0, bucket=0.3), _ReferenceMeter(1.0, 0.3)
    for now, work in [(0.0, 5.0), (1.2, 7.0), (1.25, 2.0), (1.35, 1.0), (1.4, 3.0)]:
        meter.add(now, work)
        reference.add(now, work)
        assert meter._total == reference.total
    assert meter._total == 13.0  # the first 5.0 expired at 1.35
    assert meter.rate(1.4) == reference.rate(1.4) == 13.0
