"""A miner's identity: the key of every per-miner table, looked up on every share."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from miningproxy.pool.stats import MinerId, PoolStats

NAMES = st.text(max_size=12)


@given(NAMES, NAMES, NAMES, NAMES)
def test_equal_identities_are_one_key_and_different_ones_are_not(a1, w1, a2, w2):
    first, again, other = MinerId(a1, w1), MinerId(a1, w1), MinerId(a2, w2)
    assert first == again and hash(first) == hash(again)
    assert {first: "x"}[again] == "x"
    assert (first == other) == ((a1, w1) == (a2, w2))
    assert repr(first) == f"MinerId(address={a1!r}, worker={w1!r})"


def test_shares_credited_under_fresh_but_equal_identities_add_up():
    stats = PoolStats()
    for now in range(3):
        stats.accepted(MinerId("WXYZ", "rig1"), 2.0, float(now))
    stats.accepted(MinerId("WXYZ", "rig2"), 2.0, 3.0)
    assert stats.miners[MinerId("WXYZ", "rig1")].accepted == 3
    assert stats.miners[MinerId("WXYZ", "rig2")].accepted == 1
    assert stats.pool.accepted == 4
