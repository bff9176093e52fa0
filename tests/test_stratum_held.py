"""HeldOutputs (the rigs whose "ok" waits for the pool record) against a plain model: an
insertion-ordered dict, which is what the server used before (correct, but quadratic to empty)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from miningproxy.stratum.held import HeldOutputs

OWNERS = st.integers(0, 7)
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("hold"), OWNERS, st.integers(0, 3)),  # need grows by 0..3
        st.tuples(st.just("drop"), OWNERS, st.just(0)),
        st.tuples(st.just("release"), st.just(0), st.integers(-2, 3)),  # durable: need + -2..3
        st.tuples(st.just("oldest"), st.just(0), st.just(0)),
    ),
    max_size=200,
)


@given(STEPS)
def test_held_outputs_behave_like_an_ordered_dict(steps):
    held: HeldOutputs[int] = HeldOutputs()
    model: dict[int, tuple[int, float]] = {}  # owner -> (need, deadline), oldest hold first
    need = 0
    for op, owner, n in steps:
        if op == "hold":
            need += n
            held.hold(owner, need, need + 0.5)
            model.pop(owner, None)
            model[owner] = (need, need + 0.5)
        elif op == "drop":
            held.drop(owner)
            model.pop(owner, None)
        elif op == "release":
            durable = need + n
            expected = []
            for waiting, (wanted, _) in model.items():
                if wanted > durable:
                    break
                expected.append(waiting)
            for waiting in expected:
                del model[waiting]
            assert held.release(durable) == expected
        else:
            first = next(iter(model.items()), None)
            assert held.oldest() == (None if first is None else (first[0], first[1][1]))
        assert len(held) == len(model)
        assert set(held._live) == set(model)
        # Holds that stopped waiting do not pile up.
        assert len(held._queue) <= 2 * len(model) + 65


def test_many_holds_released_at_once_come_out_in_order_and_leave_nothing_behind():
    held: HeldOutputs[int] = HeldOutputs()
    for owner in range(20_000):
        held.hold(owner, owner // 100, 30.0)
    for owner in range(0, 20_000, 7):  # some closed meanwhile
        held.drop(owner)
    released = held.release(149)  # ids up to 149: owners 0..14,999 wanted them
    assert released == [o for o in range(15_000) if o % 7]
    assert held.oldest() == (next(o for o in range(15_000, 20_000) if o % 7), 30.0)
    assert held.release(10**9) == [o for o in range(15_000, 20_000) if o % 7]
    assert len(held) == 0 and held.oldest() is None and not held._queue


def test_holds_that_stopped_waiting_do_not_pile_up_while_nothing_commits():
    # A stuck disk: nothing is released, rigs come and go (each hold then dropped: the rig closed).
    held: HeldOutputs[int] = HeldOutputs()
    held.hold(-1, 0, 30.0)  # one rig waits all along
    for owner in range(10_000):
        held.hold(owner, 1, 30.0)
        held.drop(owner)
    assert len(held) == 1
    assert len(held._queue) <= 2 * len(held) + 65
    assert held.oldest() == (-1, 30.0)
