"""The sans-IO stream session: every window and ack rule, the node's quirks behind a switch."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_events_support import node_dumps, transcript, transcript_events, transcript_identity

from miningproxy.events.log import StreamIdentity
from miningproxy.events.stream import Envelope, StreamSession, error_frame

IDENTITY = StreamIdentity("p" * 64, "privatenet", "s-1")
TEXTS = {
    i: node_dumps({"id": i, "timestamp": 1.5, "type": "LOAD_STARTED", "data": {}, "group_id": None})
    for i in range(200)
}


def start(last: int | None = None, window: int = 5) -> str:
    return json.dumps({"type": "START_STREAM", "last_ack_event_id": last, "window_size": window})


def ack(event_id: int, window: int = 5) -> str:
    return json.dumps({"type": "ACK", "ack_event_id": event_id, "window_size": window})


STOP = json.dumps({"type": "STOP_STREAM"})


def pump(session: StreamSession, available: int = 200, latest: int = 199) -> list[int]:
    """Send what the session allows from events 0..available-1; return the ids sent."""
    sent = []
    while (want := session.wants()) is not None and want.from_id < available:
        for event_id in range(want.from_id, min(available, want.from_id + want.count)):
            frame = session.frame(event_id, TEXTS[event_id], latest)
            assert frame is not None
            sent.append(json.loads(frame)["event"]["id"])
    return sent


def errors(frames: list[str]) -> list[str]:
    return [json.loads(f)["type"] for f in frames]


@pytest.fixture
def session() -> StreamSession:
    return StreamSession(Envelope(IDENTITY))


# --- streaming and windows ------------------------------------------------------------------------------


def test_start_from_scratch_sends_a_window_then_waits_for_acks(session: StreamSession) -> None:
    assert session.receive(start(None, 3)) == []
    assert pump(session) == [0, 1, 2]
    assert session.wants() is None  # window full
    assert session.receive(ack(0, 3)) == []
    assert pump(session) == [3]
    assert session.receive(ack(3, 3)) == []
    assert pump(session) == [4, 5, 6]


def test_start_after_an_id_resumes_after_it(session: StreamSession) -> None:
    session.receive(start(41, 2))
    assert pump(session) == [42, 43]


def test_window_zero_pauses_and_a_repeated_ack_resumes(session: StreamSession) -> None:
    session.receive(start(None, 2))
    assert pump(session) == [0, 1]
    assert session.receive(ack(1, 0)) == []
    assert pump(session) == []  # paused, though the window is empty
    assert session.receive(ack(1, 2)) == []  # same id: only the window changes (the node would refuse)
    assert pump(session) == [2, 3]


def test_start_with_window_zero_sends_nothing(session: StreamSession) -> None:
    session.receive(start(None, 0))
    assert pump(session) == []
    assert session.wants() is None


def test_shrinking_the_window_below_what_is_in_flight_holds_sending(session: StreamSession) -> None:
    session.receive(start(None, 10))
    assert pump(session, available=6) == [0, 1, 2, 3, 4, 5]
    session.receive(ack(1, 2))  # 2..5 in flight > 2
    assert pump(session) == []
    session.receive(ack(4, 2))  # only 5 in flight
    assert pump(session) == [6]


def test_never_more_than_window_beyond_the_last_ack(session: StreamSession) -> None:
    session.receive(start(None, 4))
    pump(session)
    assert session.next_id - 1 - session.acked == 4
    assert session.frame(session.next_id, TEXTS[session.next_id], 199) is None


def test_an_early_ack_never_causes_a_resend(session: StreamSession) -> None:
    session.receive(start(None, 5))
    assert pump(session) == [0, 1, 2, 3, 4]
    for event_id in range(5):
        session.receive(ack(event_id))
    assert pump(session, available=12) == [5, 6, 7, 8, 9]  # 4 acked, window 5


def test_frame_refuses_anything_but_the_next_event(session: StreamSession) -> None:
    session.receive(start(None, 5))
    assert session.frame(1, TEXTS[1], 10) is None
    assert session.frame(0, TEXTS[0], 10) is not None
    assert session.frame(0, TEXTS[0], 10) is None  # never twice


def test_latest_event_id_is_never_below_the_event(session: StreamSession) -> None:
    session.receive(start(None, 5))
    assert json.loads(session.frame(0, TEXTS[0], 0))["latest_event_id"] == 0
    assert json.loads(session.frame(1, TEXTS[1], 0))["latest_event_id"] == 1


# --- the error cases ----------------------------------------------------------------------------------


def test_ack_below_the_last_ack_is_too_small(session: StreamSession) -> None:
    session.receive(start(None, 5))
    pump(session)
    session.receive(ack(3))
    frames = session.receive(ack(2))
    assert errors(frames) == ["ACK_TOO_SMALL"]
    assert json.loads(frames[0]) == {
        "type": "ACK_TOO_SMALL",
        "invalid_request": ack(2),
        "error_message": None,
    }
    assert session.acked == 3 and session.active  # the stream goes on


def test_ack_below_the_start_point_is_too_small(session: StreamSession) -> None:
    session.receive(start(10, 5))
    assert errors(session.receive(ack(9))) == ["ACK_TOO_SMALL"]


def test_ack_beyond_the_last_sent_is_too_large(session: StreamSession) -> None:
    session.receive(start(None, 5))
    pump(session, available=3)
    assert errors(session.receive(ack(3))) == ["ACK_TOO_LARGE"]
    assert session.acked == -1
    assert session.receive(ack(2)) == []


def test_ack_before_anything_was_sent_is_too_large(session: StreamSession) -> None:
    session.receive(start(None, 5))
    assert errors(session.receive(ack(0))) == ["ACK_TOO_LARGE"]


def test_start_while_active_is_refused(session: StreamSession) -> None:
    session.receive(start(None, 5))
    frames = session.receive(start(3, 5))
    assert errors(frames) == ["STREAM_IS_ACTIVE"]
    assert session.next_id == 0  # unchanged


@pytest.mark.parametrize("request_", [ack(0), STOP])
def test_ack_or_stop_without_a_stream_is_refused(session: StreamSession, request_: str) -> None:
    assert errors(session.receive(request_)) == ["STREAM_IS_INACTIVE"]


def test_stop_ends_sending_and_a_second_stop_is_refused(session: StreamSession) -> None:
    session.receive(start(None, 5))
    assert pump(session, available=2) == [0, 1]
    assert session.receive(STOP) == []
    assert pump(session) == []
    assert session.frame(2, TEXTS[2], 9) is None
    assert errors(session.receive(ack(1))) == ["STREAM_IS_INACTIVE"]
    assert errors(session.receive(STOP)) == ["STREAM_IS_INACTIVE"]


def test_a_new_start_after_stop_replays_from_where_the_client_says(session: StreamSession) -> None:
    session.receive(start(None, 3))
    pump(session)
    session.receive(ack(2, 3))
    session.receive(STOP)
    assert session.receive(start(0, 3)) == []  # a new stream: the node would say ACK_TOO_SMALL
    assert pump(session) == [1, 2, 3]


def test_malformed_requests_get_validation_errors_and_change_nothing(session: StreamSession) -> None:
    session.receive(start(None, 5))
    pump(session, available=2)
    for bad in ("nope", '{"type":"ACK","ack_event_id":-1,"window_size":5}', '{"type":"ACK"}', b"\xff\xfe"):
        frames = session.receive(bad)
        body = json.loads(frames[0])
        assert body["type"] == "VALIDATION_ERROR"
        assert body["error_message"].split("\n")[0].endswith("for RequestWrapper")
        assert isinstance(body["invalid_request"], str)
    assert (session.active, session.next_id, session.acked, session.window) == (True, 2, -1, 5)


def test_start_before_the_oldest_retained_event_is_refused_clearly(session: StreamSession) -> None:
    frames = session.receive(start(None, 5), first_id=100)
    body = json.loads(frames[0])
    assert body["type"] == "VALIDATION_ERROR"
    assert (
        "event 0 was pruned" in body["error_message"]
        and "oldest retained event is 100" in body["error_message"]
    )
    assert not session.active
    assert session.receive(start(98, 5), first_id=100) != []
    assert session.receive(start(99, 5), first_id=100) == []
    assert session.next_id == 100


def test_fail_pruned_stops_the_stream(session: StreamSession) -> None:
    session.receive(start(None, 5))
    body = json.loads(session.fail_pruned(50))
    assert body["type"] == "VALIDATION_ERROR" and "oldest retained event is 50" in body["error_message"]
    assert not session.active


# --- the node's quirks ---------------------------------------------------------------------------------


@pytest.fixture
def node() -> StreamSession:
    return StreamSession(Envelope(IDENTITY), node_quirks=True)


def test_quirks_rewind_on_ack_and_resend(node: StreamSession) -> None:
    node.receive(start(None, 5))
    assert pump(node) == [0, 1, 2, 3, 4]
    node.receive(ack(0))
    assert pump(node) == [1, 2, 3, 4, 5]  # what the real node does


def test_quirks_refuse_a_repeated_ack_and_a_restart_at_or_below_the_last_ack(node: StreamSession) -> None:
    node.receive(start(None, 2))
    pump(node)
    node.receive(ack(1, 0))
    assert errors(node.receive(ack(1, 2))) == ["ACK_TOO_SMALL"]
    node.receive(STOP)
    assert errors(node.receive(start(1, 2))) == ["ACK_TOO_SMALL"]
    assert errors(node.receive(start(None, 2))) == ["ACK_TOO_SMALL"]
    assert node.receive(start(2, 2)) == []


# --- against the real node's transcript ------------------------------------------------------------------


@pytest.mark.parametrize("quirks", [False, True])
def test_window1_transcript_frame_for_frame(quirks: bool) -> None:
    """Replaying the client's side of the real window-1 session yields the node's frames exactly."""
    events = transcript_events()
    texts = {e["id"]: node_dumps(e) for e in events}
    ident = transcript_identity()
    session = StreamSession(Envelope(ident), node_quirks=quirks)
    out: list[str] = []
    for entry in transcript("event_ws-window1.jsonl"):
        if entry["dir"] == "send":
            out += session.receive(json.dumps(entry["frame"]))
            while (want := session.wants()) is not None and want.from_id in texts:
                out.append(session.frame(want.from_id, texts[want.from_id], 13))  # type: ignore[arg-type]
    expected = [node_dumps(e["frame"]) for e in transcript("event_ws-window1.jsonl") if e["dir"] == "recv"]
    assert out == expected


def test_envelope_is_the_node_encoding_of_the_frame() -> None:
    ident = transcript_identity()
    envelope = Envelope(ident)
    for event in transcript_events():
        frame = {
            "type": "EVENT",
            "peer_id": ident.peer_id,
            "network": ident.network,
            "event": event,
            "latest_event_id": 13,
            "stream_id": ident.stream_id,
        }
        assert envelope.frame(node_dumps(event), 13) == node_dumps(frame)
    odd = StreamIdentity('pé"\\', "net\u2028", "s\x00")
    frame = Envelope(odd).frame('{"id":0}', 0)
    assert json.loads(frame)["peer_id"] == 'pé"\\' and json.loads(frame)["stream_id"] == "s\x00"


def test_error_frame_matches_the_node() -> None:
    entry = transcript("event_ws-window1.jsonl")[-2]["frame"]
    assert error_frame("ACK_TOO_SMALL", entry["invalid_request"]) == node_dumps(entry)


# --- properties -----------------------------------------------------------------------------------------

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("start"), st.one_of(st.none(), st.integers(0, 30)), st.integers(0, 6)),
        st.tuples(st.just("ack"), st.integers(0, 40), st.integers(0, 6)),
        st.tuples(st.just("stop"), st.none(), st.none()),
        st.tuples(st.just("pump"), st.integers(0, 40), st.none()),
    ),
    max_size=40,
)


@settings(max_examples=400)
@given(_ops)
def test_no_resend_and_the_window_always_holds(ops: list[tuple[str, Any, Any]]) -> None:
    session = StreamSession(Envelope(IDENTITY))
    sent_in_stream: list[int] = []
    for op, a, b in ops:
        if op == "start":
            if not session.receive(start(a, b)):
                sent_in_stream = []
        elif op == "ack":
            before = (session.acked, session.window)
            frames = session.receive(ack(a, b))
            if frames:
                assert (session.acked, session.window) == before
                kind = errors(frames)[0]
                assert kind in ("ACK_TOO_SMALL", "ACK_TOO_LARGE", "STREAM_IS_INACTIVE")
                if kind == "ACK_TOO_LARGE":
                    assert a > session.next_id - 1
                if kind == "ACK_TOO_SMALL":
                    assert a < session.acked
            else:
                assert session.acked == a
        elif op == "stop":
            session.receive(STOP)
        else:
            sent_in_stream += pump(session, available=a)
        assert len(sent_in_stream) == len(set(sent_in_stream))
        assert sent_in_stream == sorted(sent_in_stream)
        if session.active:
            assert 0 <= session.next_id - 1 - session.acked <= max(session.window, session.in_flight)
            assert session.budget() == max(0, session.window - session.in_flight)
