"""Variable share weight ("vardiff") for one connection. Pure: time comes in as explicit ``now`` values.

Shares of a rig with hashrate H mining at weight w form a Poisson process of rate H / 2**w. Over a
window in which the rig held jobs of changing weights, the rate's maximum-likelihood estimate is
``n / E`` with ``E = sum(dt / 2**w)`` (the "exposure": time weighted by each job's odds), and the
weight that makes shares arrive every ``target_interval`` seconds is ``log2(H * target_interval)``.

- Right after connecting (``ramp_time``) the controller retargets after every few shares, so a rig
  a billion times faster than the initial weight assumes is tamed within a handful of shares.
- Later it retargets after ``retarget_shares`` shares or ``retarget_time`` seconds.
- With no share at all, the exposure still bounds the hashrate from above (as if one share were just
  about to arrive), so a slow or idle rig is lowered step by step (about one weight unit per
  interval) down to ``min_weight``; it is never disconnected for being idle.
- Shares of jobs sent before the last weight change do not count: they say nothing about the new
  weight, and a fast rig still working through an old easy job would otherwise look even faster.
- A new weight is rounded to a multiple of ``weight_step`` (1/16 by default: 4% in share rate, far
  below ``min_change``), so that a pool's rigs share a few weights: the jobs of one block at one
  weight are made on the same terms, once, where a weight of its own per rig would cost every rig
  its own (measured: the job build per rig about doubled with 1,000 distinct weights).
- The weight never exceeds the block weight (``ceiling``): such shares are blocks already; when
  blocks get heavier again, the next retarget raises the weight.
"""

from __future__ import annotations

import math

from miningproxy.stratum.settings import VardiffSettings

# The controller runs on every few shares of a ramping rig and its deadlines after every read:
# the builtins min() and max() cost ~130 ns a call here (their argument parsing), a conditional
# expression ~20. Where they are replaced, the comment gives the call; the expression returns
# the same operand in every case, ties and NaN included (the first unless the second is
# strictly greater, or smaller).
MIN_SPAN = 1e-3  # seconds: the shortest window an estimate is divided by
RAMP_MIN_CHANGE = 0.25  # while ramping, corrections smaller than this are noise
IDLE_MIN_CHANGE = 0.1
IDLE_STEP = 1.0  # the most one idle check lowers the weight: a long gap in a healthy rig's shares is rare, not damning


class Vardiff:
    __slots__ = (
        "settings", "connected_at", "_ramp_end", "_ceiling", "weight", "retargets", "last_share_at",
        "_weight", "_changed_at", "_start", "_shares", "_total", "_total_at", "_window_mark",
        "_gap_mark", "_last_counted", "_effective", "_next_idle_check",
    )  # fmt: skip

    def __init__(self, settings: VardiffSettings, now: float, *, ceiling: float = math.inf) -> None:
        self.settings = settings
        self.connected_at = now
        self._ramp_end = now + settings.ramp_time  # retargets every ramp_shares shares until then
        self._ceiling = ceiling
        self.retargets = 0
        self.last_share_at: float | None = None
        self._weight = self._clamp(settings.initial_weight)
        # The weight for the next job: _weight capped by the ceiling. An attribute kept up to date
        # wherever either changes, not a property: every rig reads it on every block.
        self.weight = ceiling if ceiling < self._weight else self._weight
        self._changed_at = now  # shares of jobs sent before this do not count
        self._start = now  # the window: shares counted since, and the exposure at its start
        self._shares = 0
        self._total = 0.0  # exposure since the first job, never reset
        self._total_at = now
        self._window_mark = 0.0
        self._gap_mark = 0.0  # the exposure at the last counted share (or the first job)
        self._last_counted = now
        self._effective: float | None = None  # weight of the job the rig holds; None before the first job
        self._next_idle_check = now

    @property
    def ceiling(self) -> float:
        """The block weight: no job's weight goes above it (set by :meth:`job_sent`)."""
        return self._ceiling

    # --- inputs --------------------------------------------------------------------------------

    def job_sent(self, weight: float, now: float, ceiling: float) -> None:
        """The rig was handed a job of ``weight`` (the weight actually sent, after the block cap)
        of a block of weight ``ceiling``, which later jobs' weights stay under."""
        if ceiling != self._ceiling:
            self._ceiling = ceiling
            self.weight = ceiling if ceiling < self._weight else self._weight
        effective = self._effective
        if effective is None:  # nothing to mine before the first job
            self._start = self._total_at = self._last_counted = self._next_idle_check = now
        elif now > self._total_at:  # _integrate(now), inline: every rig gets a job on every block
            self._total += (now - self._total_at) / 2.0**effective
            self._total_at = now
        self._effective = weight

    def share(self, job_weight: float, job_sent_at: float, now: float) -> float | None:
        """An accepted share of a job of ``job_weight`` sent at ``job_sent_at``; returns a new weight
        when this share completes a retarget that changed it."""
        self.last_share_at = now
        if job_sent_at < self._changed_at or self._effective is None:
            return None
        self._shares += 1
        if now > self._total_at:  # the shares of one read share their now: integrated once
            self._integrate(now)
        self._last_counted = now
        self._gap_mark = self._total
        s = self.settings
        if (
            self._shares < (s.ramp_shares if now < self._ramp_end else s.retarget_shares)
            and now < self._start + s.retarget_time
        ):
            # Most shares: no retarget is due (too few shares, too soon), and a rig that has just
            # found one is not idle; only the ceiling clamp of _evaluate applies.
            if self._ceiling < self._weight:
                self._weight = self._ceiling  # (self.weight is the ceiling already)
            return None
        return self._evaluate(now, False)  # (not silent: a share was just counted)

    def tick(self, now: float) -> float | None:
        """Time passed; returns a new weight when the rig turned out slower (or idle)."""
        return self._evaluate(now, now >= self._idle_due())

    def next_check(self) -> float | None:
        """When :meth:`tick` may next have something to do (None before the first job)."""
        if self._effective is None:
            return None
        idle = self._idle_due()
        if self._shares:
            due = self._start + self.settings.retarget_time
            return idle if idle < due else due  # (min(due, idle))
        return idle

    # --- the controller ------------------------------------------------------------------------

    def _integrate(self, now: float) -> None:
        if now > self._total_at:
            if self._effective is not None:
                self._total += (now - self._total_at) / 2.0**self._effective
            self._total_at = now

    def _exposure_since(self, mark: float, now: float) -> float:
        assert self._effective is not None
        scale = 2.0**self._effective
        gap = now - self._total_at
        exposure = self._total - mark + (gap if gap > 0.0 else 0.0) / scale  # (max(0.0, gap))
        least = MIN_SPAN / scale
        return least if least > exposure else exposure  # (max(exposure, least))

    def _idle_due(self) -> float:
        """When silence since the last counted share (or the first job) becomes suspicious:
        ``idle_after`` seconds, or two intervals while the ramp is still on; then every interval."""
        s = self.settings
        ramp_end = self._ramp_end
        idle_after = s.idle_after
        twice = 2 * s.target_interval
        due = self._last_counted + (twice if twice < idle_after else idle_after)  # (min(idle_after, twice))
        if due >= ramp_end:
            late = self._last_counted + idle_after
            due = ramp_end if ramp_end > late else late  # (max(late, ramp_end))
        check = self._next_idle_check
        return check if check > due else due  # (max(due, check))

    def _evaluate(self, now: float, silent: bool) -> float | None:
        """The controller; ``silent``: ``now >= self._idle_due()`` (never right after a share)."""
        if self._effective is None:
            return None
        # A weight above the block's is not kept: the rig mines at the block weight, and idle
        # decay must start from there (a heavier block later is found by the next retarget).
        weight, ceiling = self._weight, self._ceiling
        self._weight = self.weight = ceiling if ceiling < weight else weight  # (min(weight, ceiling))
        s = self.settings
        ramping = now < self._ramp_end
        if self._shares:
            need = s.ramp_shares if ramping else s.retarget_shares
            by_count = self._shares >= need
            if by_count or now >= self._start + s.retarget_time:
                # Stopping at the n-th share overestimates the rate by n / (n - 1): correct for it.
                found = self._shares - 1 if by_count and self._shares > 1 else self._shares
                target = math.log2(found / self._exposure_since(self._window_mark, now) * s.target_interval)
                self._integrate(now)
                self._start = now
                self._window_mark = self._total
                self._shares = 0
                if silent:
                    target = min(target, self._weight)  # old shares of a rig gone quiet never raise it
                return self._set(target, now, RAMP_MIN_CHANGE if ramping else s.min_change)
        if not silent:
            return None
        # Silence: as if a share were found right now, the rate is at most 1 / (exposure since the
        # last share). Idle checks only ever lower the weight, by at most IDLE_STEP, an interval apart.
        self._next_idle_check = now + s.target_interval
        silence = self._exposure_since(self._gap_mark, now)
        target = max(math.log2(s.target_interval / silence), self._weight - IDLE_STEP)
        if target >= self._weight:
            return None
        return self._set(target, now, IDLE_MIN_CHANGE)

    def _set(self, target: float, now: float, min_change: float) -> float | None:
        step = self.settings.weight_step
        target = self._clamp(round(target / step) * step if math.isfinite(target) else target)
        if abs(target - self._weight) < min_change:
            return None
        before = self.weight
        self._weight = target
        self.weight = min(target, self._ceiling)
        if self.weight == before:
            return None  # both above the block weight: nothing changes for the rig
        self._changed_at = now
        self.retargets += 1
        return self.weight

    def _clamp(self, weight: float) -> float:
        s = self.settings
        if math.isnan(weight):
            return self._weight
        highest, lowest = s.max_weight, s.min_weight
        weight = weight if weight < highest else highest  # (min(highest, weight))
        return weight if weight > lowest else lowest  # (max(lowest, weight))
