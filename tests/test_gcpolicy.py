"""The collector policy: fewer, shorter pauses with many long-lived objects, and every pause seen."""

from __future__ import annotations

import gc

import pytest

from miningproxy import gcpolicy
from miningproxy.metrics import Metrics


@pytest.fixture
def restore_gc():
    thresholds = gc.get_threshold()
    yield
    gc.set_threshold(*thresholds)


def _collections_while_allocating(count: int) -> list[int]:
    seen: list[int] = []
    timer = gcpolicy.PauseTimer(lambda generation, _: seen.append(generation))
    timer.install()
    try:
        kept = [[i] for i in range(count)]  # containers that stay alive, like jobs in a fan-out
    finally:
        timer.remove()
    del kept
    return seen


def test_a_fan_out_worth_of_new_objects_triggers_no_collection_under_the_policy(restore_gc):
    gc.collect()
    gc.set_threshold(700, 10, 10)  # CPython's default
    assert len(_collections_while_allocating(15_000)) >= 10
    gcpolicy.apply()
    gc.collect()
    assert gc.get_threshold() == (gcpolicy.GEN0, gcpolicy.GEN1, gcpolicy.GEN2)
    assert _collections_while_allocating(15_000) == []


def test_pause_timer_reports_each_collection_with_its_generation_and_duration():
    pauses: list[tuple[int, float]] = []
    timer = gcpolicy.PauseTimer(lambda g, s: pauses.append((g, s)))
    timer.install()
    timer.install()  # idempotent: one report per collection
    try:
        gc.collect(2)
        gc.collect(0)
    finally:
        timer.remove()
    assert [g for g, _ in pauses] == [2, 0]
    assert all(s >= 0 for _, s in pauses)
    gc.collect()
    assert len(pauses) == 2  # removed: nothing more


def test_a_failing_observer_never_breaks_the_collector():
    def broken(generation: int, seconds: float) -> None:
        raise RuntimeError("metrics gone")

    timer = gcpolicy.PauseTimer(broken)
    timer.install()
    try:
        gc.collect()
    finally:
        timer.remove()


def test_pauses_are_exported_by_generation():
    metrics = Metrics()
    timer = gcpolicy.PauseTimer(metrics.observe_gc_pause)
    timer.install()
    try:
        gc.collect(2)
    finally:
        timer.remove()
    text = metrics.render().decode()
    assert 'miningproxy_gc_pause_seconds_count{generation="2"} 1.0' in text
    assert 'miningproxy_gc_pause_seconds_count{generation="0"} 0.0' in text
