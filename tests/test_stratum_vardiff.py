"""Vardiff on simulated rigs: pure, seeded, simulated time (shares are a Poisson process)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from miningproxy.stratum.settings import SettingsError, VardiffSettings
from miningproxy.stratum.vardiff import Vardiff

INTERVAL = 10.0


@dataclass
class SimRig:
    """A rig of ``hashrate`` hashes/s: gets each job ``latency`` s after it is sent, finds shares of a
    job at weight w at exponential intervals of mean 2**w / hashrate (memoryless, so a new job just
    restarts the clock), submits them at once. The server side refreshes jobs every 30 s."""

    hashrate: float
    seed: int
    latency: float = 0.05
    settings: VardiffSettings = field(default_factory=VardiffSettings)
    stop_at: float = math.inf  # the rig goes idle then
    block_weight: float = math.inf  # of the template the jobs are made from: no job goes above it

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.vardiff = Vardiff(self.settings, 0.0)
        self.now = 0.0
        self.in_flight: list[tuple[float, float, float]] = []  # (arrives, weight, sent at)
        self.held: tuple[float, float] | None = None
        self.next_share = math.inf
        self.last_sent = 0.0
        self.weights: list[tuple[float, float]] = []  # (time, weight sent)
        self.shares: list[float] = []
        self._send()

    def _send(self) -> None:
        weight = min(self.vardiff.weight, self.block_weight)  # as the job factory caps it
        self.vardiff.job_sent(weight, self.now, self.block_weight)
        self.in_flight.append((self.now + self.latency, weight, self.now))
        self.last_sent = self.now
        self.weights.append((self.now, weight))

    def _draw(self, weight: float) -> float:
        if self.now >= self.stop_at:
            return math.inf
        return self.now + self.rng.expovariate(self.hashrate / 2**weight)

    def run_until(self, end: float) -> None:
        while self.now < end:
            arrival = self.in_flight[0][0] if self.in_flight else math.inf
            check = self.vardiff.next_check() or math.inf
            refresh = self.last_sent + 30.0
            self.now = min(self.next_share, arrival, check, refresh, end)
            if self.now == arrival:
                _, weight, sent = self.in_flight.pop(0)
                self.held = (weight, sent)
                self.next_share = self._draw(weight)
            elif self.now == self.next_share:
                weight, sent = self.held
                self.shares.append(self.now)
                self.next_share = self._draw(weight)
                if self.vardiff.share(weight, sent, self.now) is not None:
                    self._send()
            elif self.now == check:
                if self.vardiff.tick(self.now) is not None:
                    self._send()
                assert (self.vardiff.next_check() or math.inf) > self.now, (
                    "the controller asked for a tick it ignores"
                )
            elif self.now == refresh:
                self._send()

    def weight_at(self, t: float) -> float:
        return [w for when, w in self.weights if when <= t][-1]

    def time_near(self, target: float, tolerance: float, start: float, end: float) -> float:
        """The fraction of [start, end) during which the weight sent was within tolerance of target."""
        near = 0.0
        for (t0, w), (t1, _) in zip(self.weights, [*self.weights[1:], (end, 0.0)], strict=True):
            lo, hi = max(t0, start), min(t1, end)
            if hi > lo and abs(w - target) < tolerance:
                near += hi - lo
        return near / (end - start)


def ideal(hashrate: float) -> float:
    return math.log2(hashrate * INTERVAL)


@pytest.mark.parametrize("hashrate", [1e3, 1e6, 1e9, 1e12], ids=["1kH", "1MH", "1GH", "1TH"])
@pytest.mark.parametrize("seed", range(4))
def test_converges_within_a_few_minutes_from_1kHs_to_1THs(hashrate, seed):
    rig = SimRig(hashrate, seed)
    rig.run_until(180.0)
    assert abs(rig.vardiff.weight - ideal(hashrate)) < 1.5, rig.weights
    rig.run_until(1800.0)
    after = [t for t in rig.shares if t >= 180.0]
    mean_interval = (1800.0 - 180.0) / len(after)
    assert 5.0 < mean_interval < 20.0, (mean_interval, rig.weights)
    # and it stays there: at least 90% of the time within 1.5 of the ideal weight (a rare long gap
    # between shares lowers the weight for a while, by design)
    assert rig.time_near(ideal(hashrate), 1.5, 180.0, 1800.0) >= 0.9, rig.weights


def test_a_very_fast_rig_is_tamed_within_a_few_shares():
    rig = SimRig(1e12, seed=7)
    rig.run_until(5.0)
    assert abs(rig.vardiff.weight - ideal(1e12)) < 2.0
    assert len(rig.weights) <= 4  # two or three retargets from weight 20 to ~43
    # the flood of shares of the easy first job, still arriving after the jump, does not count
    assert all(w > 25.0 for _, w in rig.weights[1:])


def test_a_slow_rig_is_lowered_about_one_weight_unit_per_interval_before_its_first_share():
    rig = SimRig(1e3, seed=1)
    rig.run_until(60.0)
    drops = [w for t, w in rig.weights if 0 < t <= 60.0]
    assert drops and drops == sorted(drops, reverse=True)
    assert rig.vardiff.weight <= 17.0


def test_an_idle_rig_decays_to_the_minimum_and_keeps_its_state():
    settings = VardiffSettings(min_weight=12.0)
    rig = SimRig(1e6, seed=3, settings=settings, stop_at=600.0)
    rig.run_until(600.0)
    busy = rig.vardiff.weight
    assert abs(busy - ideal(1e6)) < 1.5
    rig.run_until(700.0)
    assert rig.vardiff.weight < busy - 2.0  # lowered within ~100 s of silence
    rig.run_until(1200.0)
    assert rig.vardiff.weight == 12.0  # down to the floor, and no lower


def test_weight_never_exceeds_the_block_weight_ceiling():
    rig = SimRig(1e9, seed=2, block_weight=28.0)
    rig.run_until(300.0)
    assert max(w for t, w in rig.weights if t > 0) <= 28.0
    assert rig.vardiff.weight == 28.0
    rig.block_weight = 60.0  # a heavier block: the next retargets give the rig its own weight
    rig.run_until(600.0)
    assert abs(rig.vardiff.weight - ideal(1e9)) < 1.5


def test_an_idle_rig_above_the_block_weight_decays_from_the_block_weight():
    rig = SimRig(1e7, seed=4, stop_at=300.0, block_weight=20.0)
    rig.run_until(300.0)
    assert rig.vardiff.weight == 20.0
    rig.run_until(450.0)
    assert rig.vardiff.weight <= 17.0


def test_min_and_max_weight_bound_the_weight():
    settings = VardiffSettings(min_weight=15.0, max_weight=25.0, initial_weight=20.0)
    fast = SimRig(1e9, seed=0, settings=settings)
    fast.run_until(120.0)
    assert fast.vardiff.weight == 25.0
    slow = SimRig(1e2, seed=0, settings=settings)
    slow.run_until(600.0)
    assert slow.vardiff.weight == 15.0


def test_shares_of_jobs_sent_before_a_weight_change_do_not_count():
    v = Vardiff(VardiffSettings(initial_weight=20.0, ramp_shares=2), 0.0)
    v.job_sent(20.0, 0.0, math.inf)
    assert v.share(20.0, 0.0, 1.0) is None
    new = v.share(20.0, 0.0, 2.0)
    assert new is not None
    v.job_sent(new, 2.0, math.inf)
    for t in (2.01, 2.02, 2.03):  # the rig still works on its old job: ignored
        assert v.share(20.0, 0.0, t) is None
    assert v.weight == new


def test_nothing_happens_before_the_first_job():
    v = Vardiff(VardiffSettings(), 0.0)
    assert v.next_check() is None and v.tick(1000.0) is None
    assert v.share(20.0, 0.0, 1.0) is None


def test_settings_are_checked():
    VardiffSettings().check()
    with pytest.raises(SettingsError, match="stratum.vardiff.initial_weight"):
        VardiffSettings(min_weight=10, initial_weight=5).check()
    with pytest.raises(SettingsError, match="stratum.vardiff.max_weight"):
        VardiffSettings(min_weight=10, max_weight=5, initial_weight=10).check()
    with pytest.raises(SettingsError, match="stratum.vardiff.min_weight"):
        VardiffSettings(min_weight=0).check()
    for bad in (0.0, -0.5, 2.0, math.nan):
        with pytest.raises(SettingsError, match="stratum.vardiff.weight_step"):
            VardiffSettings(weight_step=bad).check()


@given(
    hashrate=st.floats(1e2, 1e9),  # (faster rigs flood the simulation with their first easy shares)
    seed=st.integers(0, 2**32),
    step=st.sampled_from([0.0625, 0.1, 0.25, 1.0]),
    idle_at=st.floats(60, 900),
)
@settings(max_examples=60, deadline=None)
def test_every_retarget_lands_on_the_weight_grid(hashrate, seed, step, idle_at):
    # Rigs of any speed, ramping, converging and going idle: every weight they are sent is a
    # multiple of weight_step, or a bound (min/max weight, which an operator may set off the grid).
    settings = VardiffSettings(weight_step=step, min_weight=10.3, max_weight=60.7)
    rig = SimRig(hashrate, seed, settings=settings, stop_at=idle_at)
    rig.run_until(1200.0)
    sent = {w for _, w in rig.weights}
    assert len(sent) > 1, "no retarget: the test saw nothing"
    for weight in sent:
        assert weight in (10.3, 60.7) or math.isclose(weight / step, round(weight / step), abs_tol=1e-9), (
            weight,
            sorted(sent),
        )


def test_rigs_of_one_kind_share_a_few_weights():
    # Sixty rigs of about the same speed (within 10%) end up on far fewer weights than sixty (the
    # estimates scatter, but over a grid of 1/16): what lets the fan-out build each weight's job
    # terms once per block rather than once per rig.
    rigs = [SimRig(5e9 * (1 + 0.0017 * i), seed=i) for i in range(60)]
    for rig in rigs:
        rig.run_until(600.0)
    final = {rig.vardiff.weight for rig in rigs}
    assert len(final) <= 24, sorted(final)
    assert all(abs(w - ideal(5e9)) < 1.5 for w in final)


class _AlwaysEvaluating(Vardiff):
    """Vardiff.share as first written: every share runs the whole controller. The shortcut in
    Vardiff.share (skip it while no retarget can be due) must change nothing."""

    def share(self, job_weight: float, job_sent_at: float, now: float) -> float | None:
        self.last_share_at = now
        if job_sent_at < self._changed_at or self._effective is None:
            return None
        self._shares += 1
        self._integrate(now)
        self._last_counted = now
        self._gap_mark = self._total
        return self._evaluate(now, now >= self._idle_due())


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["job", "block", "share", "tick"]),
            st.floats(0, 30),  # seconds since the previous step
            st.floats(1, 60),  # a weight (jobs, ceilings)
        ),
        max_size=400,
    ),
    st.sampled_from(
        [
            VardiffSettings(),
            VardiffSettings(ramp_time=0, retarget_shares=3, retarget_time=20, idle_after=15),
            VardiffSettings(ramp_shares=1, retarget_shares=1, min_change=0),
        ]
    ),
)
@settings(max_examples=600)
def test_the_share_shortcut_decides_exactly_as_the_full_controller(steps, vardiff_settings):
    fast, full = Vardiff(vardiff_settings, 0.0), _AlwaysEvaluating(vardiff_settings, 0.0)
    now = 0.0
    sent: list[float] = []
    for kind, dt, weight in steps:
        now += dt
        if kind == "job":
            for v in (fast, full):
                v.job_sent(min(v.weight, weight), now, v.ceiling)
            sent.append(now)
        elif kind == "block":  # a job of a new block, of weight ``weight``: the new ceiling
            for v in (fast, full):
                v.job_sent(min(v.weight, weight), now, weight)
            sent.append(now)
        elif kind == "share" and sent:
            job_sent_at = sent[-1] if dt > 5 else sent[0]
            assert fast.share(fast.weight, job_sent_at, now) == full.share(full.weight, job_sent_at, now)
        elif kind == "tick":
            assert fast.tick(now) == full.tick(now)
        assert fast.weight == full.weight
        assert fast.next_check() == full.next_check()
        # The weight is an attribute kept up to date, not computed when read: it must always be
        # the controller's weight under the ceiling.
        assert fast.weight == min(fast._weight, fast.ceiling)
