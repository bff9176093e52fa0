"""The node's JSON-RPC dispatch (sans-IO), quirks included."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from miningproxy.devnode.rpc import NoReply, encode, handle_payload, notification

CALLS: list[tuple] = []


def _refresh() -> list:
    return [{"t": 1}]


def _submit(hexdata: str, optimistic: bool = False) -> bool:
    CALLS.append((hexdata, optimistic))
    if hexdata == "boom":
        raise ValueError("invalid block")
    if hexdata == "type":
        raise TypeError("inside the method")
    if hexdata == "quiet":
        raise NoReply()
    return True


METHODS = {"mining_refresh": _refresh, "mining_submit": _submit}


def _run(payload) -> tuple[list[dict], bool]:
    outcome = handle_payload(payload if isinstance(payload, str) else json.dumps(payload), METHODS)
    return list(outcome.messages), outcome.close


def test_success_reply_has_no_jsonrpc_key() -> None:
    messages, close = _run({"jsonrpc": "2.0", "id": 1, "method": "mining.refresh", "params": []})
    assert messages == [{"id": 1, "error": None, "result": [{"t": 1}]}]
    assert list(messages[0]) == ["id", "error", "result"] and not close


def test_params_default_and_named_and_positional() -> None:
    assert _run({"id": "a", "method": "mining.refresh"})[0] == [
        {"id": "a", "error": None, "result": [{"t": 1}]}
    ]
    assert _run({"id": 2, "method": "mining.submit", "params": {"hexdata": "00", "optimistic": True}})[0][0][
        "result"
    ]
    assert CALLS[-1] == ("00", True)
    assert _run({"id": 3, "method": "mining.submit", "params": ["01", False]})[0][0]["result"]
    assert CALLS[-1] == ("01", False)
    # Underscore spelling resolves too (the node maps "." to "_" before the lookup).
    assert _run({"id": 4, "method": "mining_refresh"})[0][0]["id"] == 4


def test_unknown_method_is_not_fatal_and_has_null_id() -> None:
    messages, close = _run({"jsonrpc": "2.0", "id": 4, "method": "mining.subscribe", "params": []})
    assert messages == [
        {"id": None, "error": {"code": -32601, "message": "Method not found"}, "result": None}
    ]
    assert not close


def test_invalid_params_is_not_fatal() -> None:
    for params in ([], ["00", False, "extra"], {"hex": "00"}, None, "text", ["type"]):
        messages, close = _run({"id": 5, "method": "mining.submit", "params": params})
        assert messages == [
            {"id": None, "error": {"code": -32602, "message": "Invalid params"}, "result": None}
        ]
        assert not close


def test_fatal_errors_close() -> None:
    internal = {"id": None, "error": {"code": -32603, "message": "Internal error"}, "result": None}
    assert _run({"id": 8, "method": "mining.submit", "params": {"hexdata": "boom"}}) == ([internal], True)
    assert _run("{not json") == (
        [{"id": None, "error": {"code": -32700, "message": "Parse error"}, "result": None}],
        True,
    )
    assert _run({"id": 1}) == (
        [{"id": None, "error": {"code": -32600, "message": "Invalid Request"}, "result": None}],
        True,
    )
    assert _run([1]) == ([internal], True)
    assert _run({"id": 1, "method": 7}) == ([internal], True)


def test_notifications_get_no_reply_but_run() -> None:
    before = len(CALLS)
    assert _run({"method": "mining.submit", "params": ["02"]}) == ([], False)
    assert _run({"id": None, "method": "mining.submit", "params": ["03"]}) == ([], False)
    assert len(CALLS) == before + 2
    assert _run({"id": 9, "method": "mining.submit", "params": ["quiet"]}) == ([], False)


def test_batch_runs_in_order_and_stops_at_fatal() -> None:
    messages, close = _run(
        [
            {"id": 1, "method": "mining.refresh"},
            {"id": 2, "method": "nope"},
            {"id": 3, "method": "mining.submit", "params": ["boom"]},
            {"id": 4, "method": "mining.refresh"},
        ]
    )
    assert [m["id"] for m in messages] == [1, None, None]
    assert messages[-1]["error"]["code"] == -32603 and close


def test_notification_shape() -> None:
    assert notification("mining.notify", [{"a": 1}]) == {
        "id": None,
        "method": "mining.notify",
        "params": [{"a": 1}],
    }
    assert notification("mining.notify", []) == {
        "id": None,
        "method": "mining.notify",
    }  # the node drops empty params
    assert encode({"id": None, "x": 8}) == '{"id":null,"x":8}'


@given(st.one_of(st.text(), st.binary()))
def test_any_payload_gets_a_well_formed_outcome(payload) -> None:
    outcome = handle_payload(payload, METHODS)
    for message in outcome.messages:
        assert set(message) in ({"id", "error", "result"}, {"id", "method", "params"})
    if outcome.close:
        assert outcome.messages and outcome.messages[-1]["error"]["code"] in (-32700, -32600, -32603)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=10,
    )
)
def test_any_json_value_never_raises(value) -> None:
    handle_payload(json.dumps(value), METHODS)
