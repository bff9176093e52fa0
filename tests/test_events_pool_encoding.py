"""The share event's template encoder writes exactly what the generic encoder writes."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from miningproxy.events.pool_events import (
    POOL_SHARE_ACCEPTED,
    PoolEvents,
    event_text,
    share_event_text,
    weight_to_work,
)
from miningproxy.events.stream import dumps

texts = st.text()  # any code point, surrogates included: worker names come from rigs
floats = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**70), 2**70)
ints = st.integers(-(2**70), 2**70) | st.booleans()


def generic(event_id, timestamp, miner, worker, address, job_id, share_weight, work, hash, height):  # type: ignore[no-untyped-def]
    data = {
        "miner": miner,
        "worker": worker,
        "address": address,
        "job_id": job_id,
        "share_weight": share_weight,
        "work": work,
        "hash": hash,
        "height": height,
    }
    return event_text(event_id, timestamp, POOL_SHARE_ACCEPTED, data)


@given(
    event_id=st.integers(0, 2**63),
    timestamp=floats,
    miner=texts,
    worker=texts,
    address=texts,
    job_id=texts,
    share_weight=floats,
    work=texts,
    hash=texts,
    height=ints,
)
def test_share_event_text_is_byte_identical_to_the_generic_encoder(**fields: object) -> None:
    assert share_event_text(**fields) == generic(**fields)  # type: ignore[arg-type]


@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), st.floats(0.0, 60.0))
def test_share_event_text_of_ordinary_values(timestamp: float, weight: float) -> None:
    args = (
        7,
        timestamp,
        "m.1",
        'rig-ü"\\\n',
        "HAddr",
        "j1",
        weight,
        str(weight_to_work(weight)),
        "ab" * 32,
        9,
    )
    text = share_event_text(*args)
    assert text == generic(*args)
    assert json.loads(text)["data"]["work"] == str(weight_to_work(weight))


def test_dumps_is_json_dumps_compact_unescaped() -> None:
    obj = {"a": [1, 2.5, None, True], "b": 'ü\u2028"', "c": float("inf")}
    assert dumps(obj) == json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class _Feed:
    identity = object()
    last_id = 0


def test_share_accepted_records_the_generic_text() -> None:
    events = PoolEvents(_Feed(), clock=lambda: 1700000000.25)  # type: ignore[arg-type]
    event_id = events.share_accepted(
        miner="m", worker="w", address="a", job_id="j", share_weight=12.5, hash=b"\x01\xff", height=3
    )
    stored = events._pending[-1]
    assert (stored.id, stored.timestamp) == (event_id, 1700000000.25) == (1, 1700000000.25)
    assert stored.text == event_text(
        1,
        1700000000.25,
        POOL_SHARE_ACCEPTED,
        {
            "miner": "m",
            "worker": "w",
            "address": "a",
            "job_id": "j",
            "share_weight": 12.5,
            "work": str(weight_to_work(12.5)),
            "hash": "01ff",
            "height": 3,
        },
    )


share_fields = st.fixed_dictionaries(
    {
        "miner": st.sampled_from(["m", "HAddr.rig1", 'rig-ü"\\\n']) | texts,
        "worker": st.sampled_from(["w", "rig1"]) | texts,
        "address": st.sampled_from(["a", "HAddr"]),
        "job_id": st.sampled_from(["j1", "j2"]) | texts,
        "share_weight": st.sampled_from([0.1, 12.5]) | st.floats(-100.0, 100.0) | st.integers(0, 60),
        "hash": st.binary(max_size=32) | texts | st.builds(bytearray, st.binary(max_size=8)),
        "height": st.sampled_from([3, 4]) | ints,
    }
)


@given(st.lists(share_fields, min_size=1, max_size=12), st.sampled_from([1700000000.25, 1.0, float("inf")]))
def test_share_accepted_records_the_generic_text_for_every_share_of_a_run(
    shares: list[dict[str, object]], now: float
) -> None:
    # Repeated jobs (the same miner, job and weight) reuse their text around the hash: each event
    # must still be exactly what the generic encoder writes for its own values.
    events = PoolEvents(_Feed(), clock=lambda: now)  # type: ignore[arg-type]
    for fields in shares:
        event_id = events.share_accepted(**fields)  # type: ignore[arg-type]
        stored = events._pending[-1]
        raw = fields["hash"]
        data = dict(fields, work=str(weight_to_work(fields["share_weight"])))  # type: ignore[arg-type]
        data["hash"] = raw.hex() if isinstance(raw, bytes | bytearray) else raw
        data = {
            key: data[key]
            for key in ("miner", "worker", "address", "job_id", "share_weight", "work", "hash", "height")
        }
        assert stored.text == event_text(event_id, now, POOL_SHARE_ACCEPTED, data)


def test_share_accepted_keeps_bounded_caches_and_stays_exact(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from miningproxy.events import pool_events

    monkeypatch.setattr(pool_events, "MINER_PARTS_CACHE", 8)
    monkeypatch.setattr(pool_events, "VALUE_PARTS_CACHE", 4)
    events = PoolEvents(_Feed(), clock=lambda: 5.5)  # type: ignore[arg-type]
    for n in range(60):
        rig, weight, height = f"rig{n % 11}", 1.0 + n % 7, n % 5
        event_id = events.share_accepted(
            miner=f"a.{rig}", worker=rig, address="a", job_id=f"job{n}", share_weight=weight,
            hash=bytes([n]), height=height,
        )  # fmt: skip
        assert len(events._miner_parts) <= 8
        assert len(events._weight_parts) <= 4 and len(events._height_parts) <= 4
        assert json.loads(events._pending[-1].text) == {
            "id": event_id,
            "timestamp": 5.5,
            "type": POOL_SHARE_ACCEPTED,
            "data": {
                "miner": f"a.{rig}",
                "worker": rig,
                "address": "a",
                "job_id": f"job{n}",
                "share_weight": weight,
                "work": str(weight_to_work(weight)),
                "hash": bytes([n]).hex(),
                "height": height,
            },
            "group_id": None,
        }


def test_a_share_weight_or_height_equal_to_a_kept_one_but_of_another_type_is_written_as_itself() -> None:
    # 2 == 2.0 and 1 == True: each finds the other's kept text piece, which must not be used.
    events = PoolEvents(_Feed(), clock=lambda: 5.5)  # type: ignore[arg-type]
    fields = {"miner": "m", "worker": "w", "address": "a", "job_id": "j", "hash": b"\x01"}
    for share_weight, height in ((2.0, 1), (2, True), (2.0, 1)):
        event_id = events.share_accepted(share_weight=share_weight, height=height, **fields)  # type: ignore[arg-type]
        data = dict(fields, share_weight=share_weight, work="4", hash="01", height=height)
        data = {
            key: data[key]
            for key in ("miner", "worker", "address", "job_id", "share_weight", "work", "hash", "height")
        }
        assert events._pending[-1].text == event_text(event_id, 5.5, POOL_SHARE_ACCEPTED, data)
