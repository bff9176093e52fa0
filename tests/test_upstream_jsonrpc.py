"""The sans-IO mining JSON-RPC session, against the real node's frames and against garbage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miningproxy.upstream.jsonrpc import ErrorReply, MiningSession, Notify, ProtocolError, Result

TRANSCRIPT = Path("/work/shared/protocol/transcripts/mining_ws.jsonl")
EVENT_TYPES = (Notify, Result, ErrorReply, ProtocolError)


def load_transcript() -> list[dict]:
    return [json.loads(line) for line in TRANSCRIPT.read_text().splitlines() if line.strip()]


FRAMES = load_transcript()
TEMPLATE = next(f["frame"]["params"][0] for f in FRAMES if f["dir"] == "recv" and "method" in f["frame"])


def test_request_frames():
    s = MiningSession()
    r1 = s.refresh()
    r2 = s.submit("00ff", optimistic=True)
    assert json.loads(r1.text) == {"jsonrpc": "2.0", "id": 1, "method": "mining.refresh", "params": []}
    assert json.loads(r2.text) == {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "mining.submit",
        "params": {"hexdata": "00ff", "optimistic": True},
    }
    assert [r.id for r in s.pending] == [1, 2]
    assert s.abandon_pending() == (r1, r2)
    assert s.pending == ()


def test_replays_the_real_node_transcript():
    """Send what the real client sent, feed what the node answered; every frame is classified."""
    s = MiningSession()  # the client's ids run on across its reconnects, as ours do from 1
    events = []
    for f in FRAMES:
        frame = f["frame"]
        if f["dir"] == "send":
            assert s.request(frame["method"], frame.get("params", [])).id == frame["id"]
        elif f["dir"] == "recv":
            events.append(s.receive(json.dumps(frame)))
    kinds = [type(e).__name__ for e in events]
    assert kinds == [
        "Notify",  # on open
        "Result",  # refresh
        "Result",  # submit true
        "Notify",  # next block
        "Result",  # duplicate: false
        "ErrorReply",  # mining.subscribe: method not found, id null
        "Result",  # refresh
        "Result",  # positional submit: true
        "Notify",
        "Result",  # refresh
        "ErrorReply",  # invalid PoW: fatal
        "Notify",  # session B
        "ErrorReply",  # optimistic=true: fatal
        "Notify",  # session C
    ]
    first = events[0]
    assert isinstance(first, Notify) and first.templates[0].height == 1
    assert [e.value for e in events if isinstance(e, Result) and e.request.method == "mining.submit"] == [
        True,
        False,
        True,
    ]
    not_found = events[5]
    assert isinstance(not_found, ErrorReply)
    assert (not_found.code, not_found.fatal, not_found.request.method) == (-32601, False, "mining.subscribe")
    for fatal in (events[10], events[12]):
        assert isinstance(fatal, ErrorReply) and fatal.fatal and fatal.code == -32603
        assert fatal.request is not None and fatal.request.method == "mining.submit"
    # Session C's template builds on the block submitted optimistically in session B.
    optimistic_submit = events[12].request.params["hexdata"]
    assert optimistic_submit.endswith("40")
    assert (
        events[13].templates[0].parent_hash
        == "0081cd36214976396f2c468000e4229e6c9ccb432a96596e75fb14ed1a57bd39"
    )


def test_fatal_error_is_attributed_to_the_in_flight_submit():
    s = MiningSession()
    refresh = s.refresh()
    submit = s.submit("00", optimistic=False)
    ev = s.receive('{"id":null,"error":{"code":-32603,"message":"Internal error"},"result":null}')
    assert ev == ErrorReply(submit, -32603, "Internal error", True)
    assert s.pending == (refresh,)


def test_id_less_non_fatal_error_answers_the_oldest_request():
    s = MiningSession()
    first = s.request("mining.subscribe", [])
    s.submit("00", optimistic=False)
    ev = s.receive('{"id":null,"error":{"code":-32601,"message":"Method not found"},"result":null}')
    assert ev == ErrorReply(first, -32601, "Method not found", False)


def test_error_with_nothing_pending():
    ev = MiningSession().receive(
        '{"id":null,"error":{"code":-32603,"message":"Internal error"},"result":null}'
    )
    assert ev == ErrorReply(None, -32603, "Internal error", True)


def test_error_matched_by_id():
    s = MiningSession()
    s.refresh()
    sub = s.submit("00", optimistic=False)
    ev = s.receive(json.dumps({"id": sub.id, "error": {"code": -32602, "message": "Invalid params"}}))
    assert ev == ErrorReply(sub, -32602, "Invalid params", False)


def test_notify_without_params_is_an_empty_template_list():
    # The node omits params when it has no templates (syncing).
    assert MiningSession().receive('{"id":null,"method":"mining.notify"}') == Notify(())


def test_refresh_while_syncing_returns_empty_templates():
    s = MiningSession()
    r = s.refresh()
    assert s.receive('{"id":1,"error":null,"result":[]}') == Result(r, [], ())


def test_optimistic_submit_result_carries_the_next_template():
    s = MiningSession()
    r = s.submit("00", optimistic=True)
    ev = s.receive(json.dumps({"id": r.id, "error": None, "result": TEMPLATE}))
    assert isinstance(ev, Result) and ev.templates is not None and ev.templates[0].height == 1
    r2 = s.submit("00", optimistic=True)
    ev2 = s.receive(json.dumps({"id": r2.id, "error": None, "result": [TEMPLATE]}))
    assert isinstance(ev2, Result) and ev2.templates is not None and len(ev2.templates) == 1


def test_truthy_submit_result_without_a_valid_template_is_still_a_result():
    s = MiningSession()
    r = s.submit("00", optimistic=True)
    ev = s.receive(json.dumps({"id": r.id, "error": None, "result": {"something": 1}}))
    assert ev == Result(r, {"something": 1}, None)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("not json", "not JSON"),
        (b"\xff\xfe", "UTF-8"),
        ("[1,2]", "list"),
        ("42", "int"),
        ("null", "NoneType"),
        ('{"foo":1}', "neither"),
        ('{"id":"1","result":true}', "integer"),
        ('{"id":true,"result":true}', "integer"),
        ('{"id":1.5,"result":true}', "integer"),
        ('{"id":7,"result":true}', "unknown request id 7"),
        ('{"id":null,"result":true}', "without an id"),
        ('{"id":null,"error":"boom"}', "integer code"),
        ('{"id":null,"error":{"code":"x"}}', "integer code"),
        ('{"id":null,"error":{"code":1,"message":5}}', "message"),
        ('{"id":null,"method":"mining.other","params":[]}', "unexpected method"),
        ('{"id":null,"method":"mining.notify","params":{"a":1}}', "bad templates"),
        ('{"id":null,"method":"mining.notify","params":[{"data":"zz"}]}', "bad templates"),
        ('{"id":null,"method":"mining.notify","params":[1]}', "bad templates"),
        ("[" * 100000, "not JSON"),
    ],
)
def test_garbage_is_a_protocol_error(frame, reason):
    ev = MiningSession().receive(frame)
    assert isinstance(ev, ProtocolError)
    assert reason in ev.reason
    assert len(ev.excerpt) <= 210


def test_bad_templates_in_a_refresh_result_name_the_request():
    s = MiningSession()
    r = s.refresh()
    bad = dict(TEMPLATE, weight="heavy")
    ev = s.receive(json.dumps({"id": r.id, "error": None, "result": [bad]}))
    assert isinstance(ev, ProtocolError) and ev.request == r and "weight" in ev.reason
    assert s.pending == ()


def test_binary_frames_are_decoded():
    ev = MiningSession().receive(
        json.dumps({"id": None, "method": "mining.notify", "params": [TEMPLATE]}).encode()
    )
    assert isinstance(ev, Notify)


# ---- fuzz -------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def mutated_templates(draw):
    t = dict(TEMPLATE)
    for key in draw(st.lists(st.sampled_from(sorted(t)), max_size=3)):
        if draw(st.booleans()):
            t.pop(key, None)
        else:
            t[key] = draw(json_values)
    return t


@st.composite
def frames(draw):
    kind = draw(st.sampled_from(["notify", "reply", "error", "any"]))
    ids = st.none() | st.integers(-2, 5) | json_values
    if kind == "notify":
        frame = {
            "id": draw(ids),
            "method": "mining.notify",
            "params": draw(st.lists(mutated_templates(), max_size=2)),
        }
    elif kind == "reply":
        result = draw(json_values | mutated_templates() | st.lists(mutated_templates(), max_size=2))
        frame = {"id": draw(ids), "error": None, "result": result}
    elif kind == "error":
        error = draw(json_values | st.fixed_dictionaries({"code": json_values, "message": json_values}))
        frame = {"id": draw(ids), "error": error, "result": None}
    else:
        frame = draw(json_values)
    return json.dumps(frame)


def _session_with_pending() -> MiningSession:
    s = MiningSession()
    s.refresh()
    s.submit("00", optimistic=True)
    s.refresh()
    return s


@given(st.text(max_size=200) | st.binary(max_size=200))
def test_fuzz_arbitrary_text_only_yields_events(frame):
    assert isinstance(_session_with_pending().receive(frame), EVENT_TYPES)


@given(st.lists(frames(), min_size=1, max_size=6))
def test_fuzz_json_frames_only_yield_events(batch):
    s = _session_with_pending()
    for frame in batch:
        ev = s.receive(frame)
        assert isinstance(ev, EVENT_TYPES)
        if isinstance(ev, Notify | Result) and getattr(ev, "templates", None):
            assert all(t.height >= 0 for t in ev.templates)


@given(
    st.one_of(st.text("0123456789abcdef", max_size=600), st.text(max_size=40)),
    st.booleans(),
    st.integers(0, 2**40),
)
def test_submit_frame_is_the_generic_encoding(hexdata, optimistic, first_id):
    session = MiningSession()
    session._next_id = first_id
    req = session.submit(hexdata, optimistic=optimistic)
    expected = {
        "jsonrpc": "2.0",
        "id": first_id,
        "method": "mining.submit",
        "params": {"hexdata": hexdata, "optimistic": optimistic},
    }
    assert req.text == json.dumps(expected, separators=(",", ":"))
    assert (req.id, req.method, req.params) == (first_id, "mining.submit", expected["params"])
    assert session.submit("ab", optimistic=False).id == first_id + 1
