"""StreamSession.receive_batch: several client messages at once are exactly receive() on each in turn."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from miningproxy.events.log import StreamIdentity
from miningproxy.events.requests import Ack, parse_request, plain_ack
from miningproxy.events.stream import Envelope, StreamSession

IDENTITY = StreamIdentity("p" * 64, "privatenet", "s-1")
TEXT = '{"id":%d,"type":"LOAD_STARTED"}'

# Mostly small ids, so ACKs often land exactly on (and next to) what the session has sent.
_numbers = st.one_of(
    st.integers(0, 6), st.integers(0, 6), st.integers(0, 40), st.integers(0, 10**19), st.integers(-3, -1)
)


@st.composite
def _ack_like(draw: Any) -> str | bytes:
    """ACKs in the shapes clients write, and near misses the shortcut must leave to full validation."""
    ack, window = draw(_numbers), draw(_numbers)
    kind = draw(st.sampled_from(["compact", "spaced", "swapped", "node", "odd", "bytes"]))
    if kind == "compact":
        return f'{{"type":"ACK","ack_event_id":{ack},"window_size":{window}}}'
    if kind == "spaced":
        return json.dumps({"type": "ACK", "ack_event_id": ack, "window_size": window})
    if kind == "swapped":
        return json.dumps({"type": "ACK", "window_size": window, "ack_event_id": ack}, separators=(",", ":"))
    if kind == "node":
        return json.dumps({"type": "ACK", "window_size": window, "ack_event_id": ack})
    if kind == "bytes":
        return f'{{"type":"ACK","ack_event_id":{ack},"window_size":{window}}}'.encode()
    # near misses: leading zeros, floats, strings, extra keys, odd spacing, other tags, bad JSON
    return draw(
        st.sampled_from(
            [
                f'{{"type":"ACK","ack_event_id":0{ack},"window_size":{window}}}',
                f'{{"type":"ACK","ack_event_id":{ack}.0,"window_size":{window}}}',
                f'{{"type":"ACK","ack_event_id":"{ack}","window_size":{window}}}',
                f'{{"type":"ACK","ack_event_id":{ack},"window_size":{window},"x":1}}',
                f'{{"type":"ACK" ,"ack_event_id":{ack},"window_size":{window}}}',
                f'{{"type":"ACK",  "ack_event_id":{ack},"window_size":{window}}}',
                f'{{"type":"ACK","ack_event_id":{ack},"window_size":{window}}} ',
                f'{{"type":"ACK","ack_event_id":{ack}}}',
                f'{{"type":"ack","ack_event_id":{ack},"window_size":{window}}}',
                f'{{"type":"ACK","ack_event_id":{ack},"ack_event_id":{window},"window_size":1}}',
                f'{{"type":"ACK","ack_event_id":{ack},"window_size":{window}',
                f'{{"type":"ACK","ack_event_id":true,"window_size":{window}}}',
            ]
        )
    )


@st.composite
def _message(draw: Any) -> str | bytes:
    kind = draw(st.sampled_from(["ack", "ack", "ack", "start", "stop", "junk"]))
    if kind == "ack":
        return draw(_ack_like())
    if kind == "start":
        last = draw(st.one_of(st.none(), st.integers(-1, 6)))
        return json.dumps({"type": "START_STREAM", "last_ack_event_id": last, "window_size": draw(_numbers)})
    if kind == "stop":
        return '{"type":"STOP_STREAM"}'
    return draw(st.text(max_size=20))


def _state(session: StreamSession) -> tuple[Any, ...]:
    return (
        session.active,
        session.next_id,
        session.acked,
        session.window,
        session.sent_count,
        session._ever_acked,
    )


def _send_some(session: StreamSession, count: int) -> list[str]:
    frames = []
    for _ in range(count):
        want = session.wants()
        if want is None:
            break
        frame = session.frame(want.from_id, TEXT % want.from_id, want.from_id + 5)
        assert frame is not None
        frames.append(frame)
    return frames


@settings(max_examples=200)
@given(
    st.booleans(),
    st.one_of(st.none(), st.integers(0, 5)),
    st.lists(st.tuples(st.lists(_message(), max_size=12), st.integers(0, 8)), max_size=10),
)
def test_a_batch_is_each_message_in_turn(quirks: bool, first_id: int | None, steps: list) -> None:
    batched = StreamSession(Envelope(IDENTITY), node_quirks=quirks)
    single = StreamSession(Envelope(IDENTITY), node_quirks=quirks)
    for messages, sends in steps:
        got = batched.receive_batch(messages, first_id=first_id)
        want: list[str] = []
        for message in messages:
            want += single.receive(message, first_id=first_id)
        assert got == want
        assert _state(batched) == _state(single)
        assert _send_some(batched, sends) == _send_some(single, sends)
        assert _state(batched) == _state(single)


@settings(max_examples=500)
@given(_ack_like())
def test_the_common_ack_shape_parses_like_full_validation(message: str | bytes) -> None:
    if not isinstance(message, str):
        return
    plain = plain_ack(message)
    if plain is None:
        return
    assert parse_request(message) == Ack(*plain)


def test_the_common_shapes_take_the_shortcut() -> None:
    """The shapes clients send (so the property tests above compare the shortcut, not only the slow path)."""
    for text in (
        '{"type":"ACK","ack_event_id":12,"window_size":100}',
        '{"type": "ACK", "ack_event_id": 12, "window_size": 100}',
        '{"type":"ACK","window_size":100,"ack_event_id":12}',
        '{"type": "ACK", "window_size": 100, "ack_event_id": 12}',
    ):
        assert plain_ack(text) == (12, 100), text
        assert parse_request(text) == Ack(12, 100)
    for text in (
        '{"type":"ACK","ack_event_id":012,"window_size":100}',
        '{"type":"ACK","ack_event_id":12,"window_size":100,"x":1}',
        '{"type":"ACK","ack_event_id":1234567890123456789,"window_size":1}',
    ):
        assert plain_ack(text) is None, text


def test_a_batch_of_acks_updates_the_window_and_errors_come_in_order() -> None:
    session = StreamSession(Envelope(IDENTITY))
    assert session.receive_batch(['{"type":"START_STREAM","last_ack_event_id":null,"window_size":3}']) == []
    assert len(_send_some(session, 10)) == 3
    frames = session.receive_batch(
        [
            '{"type":"ACK","ack_event_id":0,"window_size":3}',
            '{"type":"ACK","ack_event_id":5,"window_size":3}',  # too large
            '{"type":"ACK","ack_event_id":2,"window_size":7}',
            '{"type":"ACK","ack_event_id":1,"window_size":7}',  # too small
        ]
    )
    assert [json.loads(f)["type"] for f in frames] == ["ACK_TOO_LARGE", "ACK_TOO_SMALL"]
    assert (session.acked, session.window) == (2, 7)
    assert len(_send_some(session, 10)) == 7
