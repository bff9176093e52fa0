"""Jittered exponential backoff shared by the node clients."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miningproxy.upstream.backoff import Backoff


@given(st.integers(min_value=-5, max_value=10_000), st.floats(0, 0.99))
def test_delay_stays_between_half_step_and_step_and_never_exceeds_the_cap(failures, jitter):
    backoff = Backoff(0.5, 30.0, jitter, random.Random(1))
    step = min(30.0, 0.5 * 2.0 ** min(max(failures, 1) - 1, 64))
    delay = backoff.delay(failures)
    assert step * (1 - jitter) - 1e-9 <= delay <= step <= 30.0


def test_doubles_until_the_cap_without_jitter():
    backoff = Backoff(1.0, 8.0, 0.0)
    assert [backoff.delay(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


@pytest.mark.parametrize("args", [(0, 1, 0.5), (2, 1, 0.5), (1, 2, 1.0), (1, 2, -0.1)])
def test_bad_shapes_are_refused(args):
    with pytest.raises(ValueError):
        Backoff(*args)
