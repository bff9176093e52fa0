"""Every parser of outside input, fuzzed: nothing raises, every bad input gets the protocol's error.

Inputs: Stratum lines from rigs, JSON-RPC frames and templates from the node, websocket requests
from clients (/ws, /event_ws, /mining), the node's /v1a/version and event_ws frames, config files.
The generators mix plain junk with what attackers actually send: deep nesting (RecursionError in
``json``/``tomllib``), invalid UTF-8, huge numbers, wrong types in the right places.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from miningproxy.api.admin_session import AdminSession
from miningproxy.api.http import HttpRequest, HttpResponse, Router, serve_http
from miningproxy.api.mining_ws import handle_payload
from miningproxy.config import ConfigError, load_config
from miningproxy.events.requests import InvalidRequest, parse_request
from miningproxy.events.upstream import FrameError, _ack_id, parse_upstream_frame
from miningproxy.hathor.networks import network_for_name
from miningproxy.hathor.template import TemplateError, parse_templates
from miningproxy.stratum.framing import LineFramer
from miningproxy.stratum.session import Session
from miningproxy.upstream import jsonrpc
from miningproxy.upstream.node_info import NodeInfoError, fetch_network_name
from tests.hathor_vectors import template_dicts
from tests.test_stratum_support import PRIVATENET, FakePool
from tests.test_stratum_support import settings as stratum_settings

DEEP = 100_000  # far past Python's recursion limit

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def nested(depth: int, opener: str = "[", closer: str = "]") -> str:
    return opener * depth + closer * depth


@st.composite
def hostile_text(draw, fields: tuple[str, ...] = ()) -> str:
    """JSON-ish text: junk, deep nesting, real JSON objects with junk in the known fields."""
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(st.text(max_size=200))
    if kind == 1:
        depth = draw(st.integers(1000, 50_000))
        opener = draw(st.sampled_from(["[", '{"a":', '{"params":', '{"method":"submit","params":']))
        return opener * depth + draw(st.sampled_from(["", "1", "]", "}"]))
    if kind == 2:
        return draw(st.sampled_from(["1" * 5000, "1e999", "-1e999", "NaN", "Infinity", '"\\ud800"', "[1,]"]))
    obj = draw(st.dictionaries(st.sampled_from(fields or ("id",)), json_values, max_size=len(fields) or 1))
    if kind == 3 and fields:
        obj[draw(st.sampled_from(fields))] = json.loads(nested(50))
    return json.dumps(obj)


# --- Stratum ---------------------------------------------------------------------------------------

STRATUM_FIELDS = ("id", "method", "params", "result", "error", "jsonrpc")
METHODS = ("subscribe", "mining.subscribe", "login", "authorize", "submit", "mining.submit", "configure", "x")


def stratum_session() -> Session:
    pool = FakePool()
    pool.set_template()
    return Session(pool, stratum_settings(), PRIVATENET, peer="198.51.100.7:1")


def check_replies(session: Session) -> list[dict]:
    """Every reply is one JSON object per line; errors carry an integer code."""
    out = []
    for raw in session.data_to_send().splitlines():
        message = json.loads(raw)
        assert isinstance(message, dict)
        if message.get("error") is not None:
            assert isinstance(message["error"]["code"], int) and message["error"]["message"]
        out.append(message)
    return out


@given(
    st.lists(
        st.one_of(
            hostile_text(STRATUM_FIELDS),
            st.builds(
                lambda method, params, msgid: json.dumps({"id": msgid, "method": method, "params": params}),
                st.sampled_from(METHODS),
                json_values,
                json_values,
            ),
        ),
        max_size=6,
    )
)
@settings(max_examples=100)
def test_stratum_lines_never_raise_and_bad_ones_get_an_error(lines):
    session = stratum_session()
    for now, line in enumerate(lines):
        session.receive_line(line, float(now))
        replies = check_replies(session)
        if session.close_reason is not None:
            break
        try:
            parsed = json.loads(line)
        except (ValueError, RecursionError):
            assert replies and replies[0]["error"]["code"] == -32700  # Parse error, then close
            assert session.close_reason is not None
            break
        if not isinstance(parsed, dict):
            assert replies[0]["error"]["code"] == -32600


@given(st.binary(max_size=4000), st.integers(min_value=1, max_value=512))
def test_raw_bytes_through_the_framer_into_a_session_never_raise(data, chunk):
    session = stratum_session()
    framer = LineFramer(256)
    for start in range(0, len(data), chunk):
        for event in framer.feed(data[start : start + chunk]):
            session.receive(event, 1.0)
        check_replies(session)


def test_a_deeply_nested_stratum_line_is_a_parse_error_and_a_close():
    session = stratum_session()
    session.receive_line(nested(DEEP), 0.0)
    (reply,) = check_replies(session)
    assert reply["error"]["code"] == -32700 and session.close_reason is not None


# --- the node's JSON-RPC frames and templates ------------------------------------------------------

TEMPLATE = template_dicts()[0]


@st.composite
def hostile_templates(draw) -> list:
    broken = dict(TEMPLATE)
    for name in draw(st.lists(st.sampled_from(sorted(TEMPLATE)), max_size=3)):
        broken[name] = draw(json_values | st.just([]) | st.just(json.loads(nested(60))))
    return draw(st.sampled_from([[broken], [TEMPLATE, broken], broken, [[broken]]]))


@given(
    st.one_of(
        hostile_text(("id", "method", "params", "result", "error")),
        hostile_templates().map(lambda t: json.dumps({"id": None, "method": "mining.notify", "params": t})),
        hostile_templates().map(lambda t: json.dumps({"id": 1, "error": None, "result": t})),
        st.binary(max_size=100),
    )
)
@settings(max_examples=100)
def test_node_frames_only_ever_yield_events(frame):
    session = jsonrpc.MiningSession()
    session.refresh()
    event = session.receive(frame)
    assert isinstance(event, jsonrpc.Notify | jsonrpc.Result | jsonrpc.ErrorReply | jsonrpc.ProtocolError)
    if isinstance(event, jsonrpc.Notify):
        assert all(t.parents for t in event.templates)  # a template the pool can build on


@pytest.mark.parametrize(
    "frame",
    [
        nested(DEEP),
        '{"id":null,"method":"mining.notify","params":' + nested(DEEP) + "}",
        json.dumps({"id": None, "method": "mining.notify", "params": [dict(TEMPLATE, parents=[])]}),
        json.dumps({"id": None, "method": "mining.notify", "params": [dict(TEMPLATE, parents=None)]}),
        b"\xff\xfe\x00garbage",
    ],
    ids=["nested", "nested-params", "no-parents", "null-parents", "not-utf8"],
)
def test_garbage_and_parentless_templates_from_the_node_are_protocol_errors(frame):
    event = jsonrpc.MiningSession().receive(frame)
    assert isinstance(event, jsonrpc.ProtocolError), event


@given(hostile_templates())
def test_templates_only_raise_template_error(params):
    try:
        templates = parse_templates(params)
    except TemplateError as exc:
        assert "template" in str(exc) or "params" in str(exc) or str(exc)
    else:
        assert all(t.parents for t in templates)


# --- websocket requests: /ws, /event_ws, /mining -------------------------------------------------

ws_payloads = st.one_of(
    hostile_text(("type", "address", "id", "xpub", "addresses", "window-size", "ack")),
    hostile_text(("type", "last_ack_event_id", "window_size", "ack_event_id")),
    hostile_text(("id", "method", "params", "jsonrpc")),
    st.binary(max_size=200),
    st.text(alphabet=string.printable, max_size=50).map(lambda t: t.encode("latin-1")),
)


@given(ws_payloads)
@settings(max_examples=100)
def test_admin_ws_requests_never_raise(payload):
    session = AdminSession(network=network_for_name("testnet"))
    out = session.receive(payload)
    for message in out.messages:
        assert isinstance(message.get("type"), str)


@given(ws_payloads)
@settings(max_examples=100)
def test_event_ws_requests_are_a_request_or_the_nodes_validation_error(payload):
    request = parse_request(payload)
    if isinstance(request, InvalidRequest):
        assert request.message


@given(ws_payloads)
@settings(max_examples=100)
def test_mining_relay_requests_get_json_rpc_errors(payload):
    for out in handle_payload(payload, [TEMPLATE]):
        if isinstance(out, dict) and out.get("error"):
            assert out["error"]["code"] in (-32700, -32600, -32601, -32602, -32603)
            json.dumps(out)


@pytest.mark.parametrize("payload", [nested(DEEP), nested(DEEP, '{"a":', "}"), b"\xc3\x28", "\ud800"])
def test_deep_nesting_and_bad_text_on_every_websocket_parser(payload):
    assert AdminSession(network=network_for_name("testnet")).receive(payload).messages
    assert isinstance(parse_request(payload), InvalidRequest)
    replies = handle_payload(payload, [TEMPLATE])
    assert replies and replies[0]["error"]["code"] == -32700


# --- the node's event_ws frames and /v1a/version ---------------------------------------------------


@given(
    hostile_text(("type", "peer_id", "network", "event", "latest_event_id", "stream_id", "invalid_request"))
)
def test_node_event_frames_only_raise_frame_error(frame):
    try:
        parse_upstream_frame(frame)
    except FrameError:
        pass


def test_a_nested_invalid_request_in_a_node_error_frame_is_no_ack_id():
    # Bug fixed: json.loads raised RecursionError out of the consumer's error handling.
    assert _ack_id(nested(DEEP)) is None
    assert _ack_id('{"ack_event_id": 7}') == 7


@pytest.mark.parametrize("body", [nested(DEEP).encode(), b"\xff\xfe", b"[]", b'{"network": 5}', b"1" * 5000])
async def test_a_hostile_version_answer_is_a_node_info_error(body):
    # Bug fixed: a deeply nested /v1a/version body raised RecursionError out of learn_network,
    # which ended the app's nursery (the proxy died on one bad answer from a node).
    router = Router()

    async def version(request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, body)

    router.http("/v1a/version", version)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(serve_http, router, "127.0.0.1", 0)
        port = listeners[0].socket.getsockname()[1]
        with pytest.raises(NodeInfoError):
            await fetch_network_name(f"http://127.0.0.1:{port}/v1a/")
        nursery.cancel_scope.cancel()


# --- config files ---------------------------------------------------------------------------------

toml_junk = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300),
    st.integers(500, 20_000).map(lambda d: "x = " + nested(d)),
    st.integers(500, 20_000).map(lambda d: "x = " + nested(d, "{a=", "}")),
    st.builds(
        lambda section, key, value: f"[{section}]\n{key} = {value}\n",
        st.sampled_from(["upstream", "pool", "stratum", "stratum.ban", "events", "http", "x"]),
        st.sampled_from(["nodes", "address", "listen", "max_line", "database", "threshold", "y"]),
        st.sampled_from(['"x"', "-1", "1e999", "inf", "nan", "[]", "{}", "true", '"\\u0000"', "9" * 40]),
    ),
)


@given(toml_junk)
@settings(max_examples=100)
def test_config_files_only_raise_config_error(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("cfg") / "proxy.toml"
    if isinstance(content, str):
        content = content.encode("utf-8", "surrogatepass")
    path.write_bytes(content)
    try:
        load_config(path)
    except ConfigError as exc:
        assert exc.key and str(exc).startswith(exc.key)


@pytest.mark.parametrize(
    "content, words",
    [
        (b"\xff\xfe[upstream]", "not UTF-8"),  # bug fixed: UnicodeDecodeError traceback
        (("x = " + nested(5000)).encode(), "nested too deeply"),  # bug fixed: RecursionError traceback
    ],
)
def test_config_file_that_is_not_text_or_too_deep_is_a_config_error(tmp_path: Path, content, words):
    path = tmp_path / "proxy.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=words):
        load_config(path)
