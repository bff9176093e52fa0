"""The admin websocket protocol, sans-IO: every message rule, subscription and history-stream rule."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from miningproxy.api.admin_session import (
    AddMoreAddresses,
    AdminSession,
    CloseStream,
    OpenStream,
    Output,
    SessionLimits,
    Subscribe,
    Unsubscribe,
)
from miningproxy.api.history_stream import AddressItem, HistoryStream, StreamState, VertexItem
from miningproxy.hathor.networks import MAINNET, TESTNET
from miningproxy.hathor.xpub import derive_addresses, parse_xpub
from tests.hathor_vectors import PRIVATENET_ADDRESS
from tests.test_xpub import V1_M

ADDRESSES = [a for _, a in derive_addresses(parse_xpub(V1_M), TESTNET, 0, 6)]
MAINNET_ADDRESS = derive_addresses(parse_xpub(V1_M), MAINNET, 0, 1)[0][1]


def session(**limits: Any) -> AdminSession:
    return AdminSession(network=TESTNET, limits=SessionLimits(**limits))


def send(s: AdminSession, message: Any) -> Output:
    return s.receive(json.dumps(message))


def only(out: Output) -> dict[str, Any]:
    assert len(out.messages) == 1, out.messages
    return out.messages[0]


def stream_error(stream_id: Any, errmsg: str) -> dict[str, Any]:
    return {"type": "stream:history:error", "id": stream_id, "errmsg": errmsg}


# --- connection basics ---------------------------------------------------------------------------


def test_capabilities_on_open_only_when_history_can_be_served():
    assert only(session().open()) == {"type": "capabilities", "capabilities": ["history-streaming"]}
    off = AdminSession(network=TESTNET, history=False)
    assert only(off.open()) == {"type": "capabilities", "capabilities": []}


@pytest.mark.parametrize("payload", ['{"type": "ping"}', b'{"type": "ping"}', '{"type":"ping","extra":1}'])
def test_ping_is_answered_with_pong(payload):
    assert session().receive(payload).messages == [{"type": "pong"}]


@pytest.mark.parametrize("payload", ["nope", "", "[1, 2]", "3", '"ping"', b"\xff\xfe", "{", "null"])
def test_malformed_commands_get_the_node_error(payload):
    assert only(session().receive(payload)) == {
        "type": "error",
        "success": False,
        "errmsg": "Malformed command",
    }


@pytest.mark.parametrize(
    "message",
    [{"type": "dashboard:metrics"}, {"type": "who knows"}, {}, {"type": 3}, {"type": None}, {"id": "x"}],
)
def test_unknown_or_missing_types_are_ignored(message):
    out = send(session(), message)
    assert out.messages == [] and out.actions == []


# --- subscriptions -------------------------------------------------------------------------------


def test_subscribe_success_shape_and_one_action():
    s = session()
    out = send(s, {"type": "subscribe_address", "address": PRIVATENET_ADDRESS})
    assert only(out) == {"type": "subscribe_address", "address": PRIVATENET_ADDRESS, "success": True}
    assert out.actions == [Subscribe(PRIVATENET_ADDRESS)]
    again = send(s, {"type": "subscribe_address", "address": PRIVATENET_ADDRESS})
    assert only(again)["success"] is True and again.actions == []  # already subscribed


@pytest.mark.parametrize(
    ("address", "errmsg"),
    [
        (None, "Missing or invalid 'address' parameter."),
        (12, "Missing or invalid 'address' parameter."),
        (MAINNET_ADDRESS, f"Invalid address: {MAINNET_ADDRESS}"),  # another network's version byte
        (PRIVATENET_ADDRESS[:-1], f"Invalid address: {PRIVATENET_ADDRESS[:-1]}"),  # 33 characters
        (PRIVATENET_ADDRESS[:-1] + "7", f"Invalid address: {PRIVATENET_ADDRESS[:-1]}7"),  # checksum
        ("0" * 34, "Invalid address: " + "0" * 34),
    ],
)
def test_subscribe_errors_use_the_node_texts(address, errmsg):
    message: dict[str, Any] = {"type": "subscribe_address"}
    if address is not None:
        message["address"] = address
    out = send(session(), message)
    assert only(out) == {"type": "subscribe_address", "address": address, "success": False, "message": errmsg}
    assert out.actions == []


def test_per_connection_subscription_limit():
    s = session(max_subscriptions=2)
    for address in ADDRESSES[:2]:
        assert only(send(s, {"type": "subscribe_address", "address": address}))["success"]
    out = send(s, {"type": "subscribe_address", "address": ADDRESSES[2]})
    assert only(out)["message"] == "Reached maximum number of subscribed addresses (2)."
    assert out.actions == []
    send(s, {"type": "unsubscribe_address", "address": ADDRESSES[0]})
    assert only(send(s, {"type": "subscribe_address", "address": ADDRESSES[2]}))["success"]


def test_unsubscribe_is_answered_only_when_subscribed():
    s = session()
    assert send(s, {"type": "unsubscribe_address", "address": PRIVATENET_ADDRESS}).messages == []
    assert send(s, {"type": "unsubscribe_address"}).messages == []
    send(s, {"type": "subscribe_address", "address": PRIVATENET_ADDRESS})
    out = send(s, {"type": "unsubscribe_address", "address": PRIVATENET_ADDRESS})
    assert only(out) == {"type": "unsubscribe_address", "success": True}
    assert out.actions == [Unsubscribe(PRIVATENET_ADDRESS)]


def test_close_releases_every_subscription_and_the_stream():
    s = session()
    for address in ADDRESSES[:3]:
        send(s, {"type": "subscribe_address", "address": address})
    send(s, {"type": "request:history:manual", "id": "s", "first": True, "addresses": []})
    out = s.close()
    assert out.actions == [CloseStream("s", False)] + [Unsubscribe(a) for a in ADDRESSES[:3]]
    assert s.close().actions == []


# --- opening history streams ---------------------------------------------------------------------


def manual(stream_id: Any = "s1", addresses=None, **extra: Any) -> dict[str, Any]:
    pairs = [[i, a] for i, a in enumerate(ADDRESSES[:2] if addresses is None else addresses)]
    return {"type": "request:history:manual", "id": stream_id, "first": True, "addresses": pairs, **extra}


def xpub(stream_id: Any = "x1", **extra: Any) -> dict[str, Any]:
    return {"type": "request:history:xpub", "id": stream_id, "xpub": V1_M, **extra}


def test_xpub_request_opens_a_stream_with_begin():
    s = session()
    out = send(s, xpub(**{"gap-limit": 5, "first-index": 3, "window-size": 4}))
    assert only(out) == {"type": "stream:history:begin", "id": "x1", "seq": 0, "window_size": 4}
    [action] = out.actions
    assert isinstance(action, OpenStream)
    request = action.request
    assert (
        request.kind == "xpub" and request.gap_limit == 5 and request.first_index == 3 and request.window == 4
    )
    assert request.xpub == parse_xpub(V1_M)


def test_stream_defaults_gap_limit_20_and_no_window():
    out = send(session(), manual())
    assert only(out)["window_size"] is None
    request = out.actions[0].request  # type: ignore[union-attr]
    assert request.gap_limit == 20 and request.window is None and request.kind == "manual"
    assert request.addresses == (AddressItem(0, ADDRESSES[0]), AddressItem(1, ADDRESSES[1]))


@pytest.mark.parametrize(
    ("message", "stream_id", "errmsg"),
    [
        (xpub(xpub="xpub-nope"), "x1", "Invalid XPub: xpub-nope"),
        (xpub(**{"gap-limit": 10_001}), "x1", "GAP limit is too big. Maximum: 10000"),
        (xpub(**{"gap-limit": "20"}), "x1", "Invalid gap-limit."),
        (xpub(**{"first-index": -1}), "x1", "Invalid first-index."),
        (xpub(**{"window-size": 1.5}), "x1", "Invalid window-size."),
        ({"type": "request:history:xpub", "xpub": V1_M}, "", "Missing or invalid 'id' parameter."),
        (manual(first=False), "s1", "Streaming not found. You must send first=true in your first message."),
        (manual(**{"gap-limit": 20_000}), "s1", "GAP limit is too big. Maximum: 10000"),
        (
            manual(addresses=[ADDRESSES[0][:-1]]),
            "s1",
            f"Invalid address: AddressItem(index=0, address='{ADDRESSES[0][:-1]}')",
        ),
        (
            manual(addresses=[MAINNET_ADDRESS]),
            "s1",
            f"Invalid address: AddressItem(index=0, address='{MAINNET_ADDRESS}')",
        ),
        (
            {**manual(), "addresses": [["0", ADDRESSES[0]]]},
            "s1",
            "Invalid address: ['0', '" + ADDRESSES[0] + "']",
        ),
        (
            {**manual(), "addresses": "nope"},
            "s1",
            "Invalid addresses: expected a list of [index, address] pairs.",
        ),
    ],
)
def test_stream_request_errors(message, stream_id, errmsg):
    s = session()
    out = send(s, message)
    assert only(out) == stream_error(stream_id, errmsg)
    assert out.actions == [] and s.stream is None


def test_history_disabled():
    s = AdminSession(network=TESTNET, history=False)
    for message in (xpub(), manual()):
        assert only(send(s, message)) == stream_error("", "Streaming history is disabled.")


def test_only_one_stream_at_a_time():
    s = session()
    send(s, xpub())
    assert only(send(s, manual("s2"))) == stream_error("s2", "Streaming is already opened.")
    assert only(send(s, xpub("x2"))) == stream_error("x2", "Streaming is already opened.")
    assert only(send(s, manual("x1"))) == stream_error(
        "x1", "Streaming is already opened."
    )  # first=true again


def test_manual_stream_takes_more_addresses_and_limits_them():
    s = session(max_pending_addresses=5)
    send(s, manual(addresses=ADDRESSES[:2]))
    more = send(
        s, {"type": "request:history:manual", "id": "s1", "addresses": [[2, ADDRESSES[2]]], "last": True}
    )
    assert more.messages == []
    assert more.actions == [AddMoreAddresses("s1", (AddressItem(2, ADDRESSES[2]),), True)]
    too_many = [[i, ADDRESSES[i % 6]] for i in range(3)]
    out = send(s, {"type": "request:history:manual", "id": "s1", "addresses": too_many})
    assert only(out) == stream_error("s1", "List of addresses is too long.")
    assert only(send(s, manual("s9", addresses=ADDRESSES[:1]) | {"first": False})) == stream_error(
        "s9", "Streaming is already opened."
    )
    big = session(max_pending_addresses=1)
    assert only(send(big, manual())) == stream_error("s1", "List of addresses is too long.")


def test_integer_stream_ids_are_echoed():
    s = session()
    assert only(send(s, manual(7)))["id"] == 7


# --- stop and ack requests ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["request:history:stop", "request:history:ack"])
def test_stop_and_ack_without_a_stream(kind):
    s = session()
    assert only(send(s, {"type": kind, "id": "a", "ack": 1})) == stream_error("a", "No streaming opened.")
    send(s, manual())
    assert only(send(s, {"type": kind, "id": "b", "ack": 1})) == stream_error(
        "b", "Current stream has a different id."
    )


def test_stop_closes_silently_and_frees_the_slot():
    s = session()
    send(s, manual())
    out = send(s, {"type": "request:history:stop", "id": "s1"})
    assert out.messages == [] and out.actions == [CloseStream("s1", False)]
    assert only(send(s, manual("s2")))["type"] == "stream:history:begin"


def test_invalid_ack_and_window_values():
    s = session()
    send(s, manual())
    assert only(send(s, {"type": "request:history:ack", "id": "s1", "ack": "1"})) == stream_error(
        "s1", "Invalid ack."
    )
    assert only(send(s, {"type": "request:history:ack", "id": "s1", "window": [3]})) == stream_error(
        "s1", "Invalid window."
    )
    assert s.stream is not None and s.stream.state is StreamState.ACTIVE


# --- the window and ack rules ---------------------------------------------------------------------


def feed(s: AdminSession, items, *, finish=True) -> None:
    for item in items:
        s.stream_offer(s.stream.id, item)  # type: ignore[union-attr]
    if finish:
        s.stream_finish(s.stream.id)  # type: ignore[union-attr]


def kinds(out: Output) -> list[tuple[str, int]]:
    return [(m["type"].rsplit(":", 1)[1], m["seq"]) for m in out.messages]


ITEMS = [
    AddressItem(0, ADDRESSES[0]),
    VertexItem({"tx_id": "aa"}),
    VertexItem({"tx_id": "bb"}),
    AddressItem(1, ADDRESSES[1]),
]


def test_window_pauses_until_acked():
    s = session()
    send(s, manual(**{"window-size": 2}))  # begin is seq 0 and counts in the window
    feed(s, ITEMS)
    assert kinds(s.pump(100)) == [("address", 1)]
    assert s.pump(100).messages == []
    send(s, {"type": "request:history:ack", "id": "s1", "ack": 1})
    assert kinds(s.pump(100)) == [("vertex", 2), ("vertex", 3)]
    send(s, {"type": "request:history:ack", "id": "s1", "ack": 3})
    assert kinds(s.pump(100)) == [("address", 4), ("end", 5)]
    assert s.stream.state is StreamState.CLOSING
    # The stream stays open until its end is acked; a new request is refused meanwhile.
    assert only(send(s, manual("s2")))["errmsg"] == "Streaming is already opened."
    out = send(s, {"type": "request:history:ack", "id": "s1", "ack": 5})
    assert out.messages == [] and out.actions == [CloseStream("s1", True)]
    assert s.stream is None


def test_streamed_addresses_are_subscribed_once():
    s = session()
    send(s, manual())
    feed(s, ITEMS + [AddressItem(0, ADDRESSES[0])])
    out = s.pump(100)
    assert [a for a in out.actions] == [Subscribe(ADDRESSES[0]), Subscribe(ADDRESSES[1])]
    address = out.messages[0]
    assert address == {
        "type": "stream:history:address",
        "id": "s1",
        "seq": 1,
        "index": 0,
        "address": ADDRESSES[0],
        "subscribed": True,
    }
    assert out.messages[1] == {"type": "stream:history:vertex", "id": "s1", "seq": 2, "data": {"tx_id": "aa"}}


def test_streamed_address_over_the_limit_ends_the_stream():
    s = session(max_subscriptions=1)
    send(s, manual())
    feed(s, ITEMS)
    out = s.pump(100)
    assert out.messages[-1] == stream_error(
        "s1", "Address subscription failed: Reached maximum number of subscribed addresses (1)."
    )
    assert out.actions[-1] == CloseStream("s1", False) and s.stream is None


@pytest.mark.parametrize(
    ("acks", "errmsg"),
    [
        ([2, 1], "Outdated ACK received (ack=1)"),
        ([4], "Received ACK is higher than the last sent message (ack=4)"),
        ([2, 2, 9], "Received ACK is higher than the last sent message (ack=9)"),
    ],
)
def test_bad_acks_end_the_stream(acks, errmsg):
    s = session()
    send(s, manual(**{"window-size": 2}))
    feed(s, ITEMS, finish=False)
    s.pump(100)
    send(s, {"type": "request:history:ack", "id": "s1", "ack": 1})
    assert kinds(s.pump(100)) == [("vertex", 2), ("vertex", 3)]  # next seq is 4
    out = Output()
    for ack in acks:
        out = send(s, {"type": "request:history:ack", "id": "s1", "ack": ack})
    assert out.messages == [stream_error("s1", errmsg)]
    assert out.actions == [CloseStream("s1", False)]
    assert s.stream is None


def test_window_zero_sends_only_begin_and_window_can_be_changed_by_ack():
    s = session()
    assert only(send(s, manual(**{"window-size": 0})))["window_size"] == 0
    feed(s, ITEMS)
    assert s.pump(100).messages == []
    send(s, {"type": "request:history:ack", "id": "s1", "window": -1})  # negative: no flow control
    assert kinds(s.pump(100)) == [("address", 1), ("vertex", 2), ("vertex", 3), ("address", 4), ("end", 5)]


def test_pump_budget_is_respected():
    s = session()
    send(s, manual())
    feed(s, ITEMS)
    assert len(s.pump(2).messages) == 2
    assert s.stream_can_send()
    assert len(s.pump(10).messages) == 3


def test_source_failure_is_sent_and_ends_the_stream():
    s = session()
    send(s, manual())
    out = s.stream_fail("s1", "Upstream node unavailable: gone")
    assert out.messages == [stream_error("s1", "Upstream node unavailable: gone")]
    assert out.actions == [CloseStream("s1", False)]
    assert s.stream_fail("s1", "again").messages == []  # a stale source is ignored


def test_stream_buffer_bounds_what_a_source_may_offer():
    stream = HistoryStream("s", None, buffer=3)
    for i in range(3):
        assert stream.wants_more()
        stream.offer(VertexItem({"i": i}))
    assert not stream.wants_more()


# --- the invariant every client relies on ---------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
commands = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            [
                "ping",
                "subscribe_address",
                "unsubscribe_address",
                "request:history:xpub",
                "request:history:manual",
                "request:history:stop",
                "request:history:ack",
                "bogus",
            ]
        )
    },
    optional={
        "id": st.sampled_from(["s1", "x1", 3, None, ""]),
        "address": st.sampled_from([*ADDRESSES[:2], MAINNET_ADDRESS, "nope", None]),
        "addresses": st.lists(st.tuples(st.integers(-1, 3), st.sampled_from(ADDRESSES[:3])), max_size=3)
        | json_values,
        "first": st.booleans(),
        "last": st.booleans(),
        "xpub": st.sampled_from([V1_M, "xpub"]),
        "gap-limit": st.integers(-2, 30) | json_values,
        "window-size": st.integers(-1, 3) | json_values,
        "ack": st.integers(-1, 6) | json_values,
        "window": st.integers(-1, 3) | json_values,
    },
)


@settings(max_examples=300)
@given(st.lists(commands | json_values.map(json.dumps) | st.text(max_size=5), max_size=12), st.integers(0, 3))
def test_every_message_sent_has_a_string_type(frames, offers):
    s = session(max_subscriptions=2)
    sent = list(s.open().messages)
    for frame in frames:
        sent += s.receive(frame if isinstance(frame, str) else json.dumps(frame)).messages
        if s.stream is not None:
            for item in ITEMS[:offers]:
                s.stream_offer(s.stream.id, item)
            if offers == 3:
                s.stream_finish(s.stream.id)
            sent += s.pump(5).messages
    sent += s.close().messages
    for message in sent:
        assert isinstance(message.get("type"), str), message
        json.dumps(message)  # and it is JSON
