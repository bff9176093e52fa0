"""event_ws request parsing: the node's acceptance rules and error texts, and no exceptions ever.

The oracle is a pydantic model set up like the node's request models (hathor-core
``hathor/event/websocket/request.py``: extra fields forbidden, lax ``NonNegativeInt``, a union
discriminated by ``type``); pydantic is only a test dependency (it comes with hathorlib).
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, Optional, Union

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from miningproxy.events.requests import Ack, InvalidRequest, StartStream, StopStream, parse_request

pydantic = pytest.importorskip("pydantic")


class _Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class _Start(_Model):
    type: Literal["START_STREAM"]
    last_ack_event_id: Optional[pydantic.NonNegativeInt] = None  # noqa: UP045 (the node's spelling)
    window_size: pydantic.NonNegativeInt


class _Ack(_Model):
    type: Literal["ACK"]
    ack_event_id: pydantic.NonNegativeInt
    window_size: pydantic.NonNegativeInt


class _Stop(_Model):
    type: Literal["STOP_STREAM"]


_Request = Annotated[
    Union[  # noqa: UP007
        Annotated[_Start, pydantic.Tag("START_STREAM")],
        Annotated[_Ack, pydantic.Tag("ACK")],
        Annotated[_Stop, pydantic.Tag("STOP_STREAM")],
    ],
    pydantic.Discriminator("type"),
]


class RequestWrapper(pydantic.RootModel[_Request]):
    pass


_LINK = re.compile(r"\n    For further information visit \S+")


def oracle(payload: bytes) -> Any:
    """What the node makes of ``payload``: our request type, or the error text without links."""
    try:
        parsed = RequestWrapper.model_validate_json(payload).root
    except pydantic.ValidationError as exc:
        return _LINK.sub("", str(exc))
    if isinstance(parsed, _Start):
        return StartStream(parsed.last_ack_event_id, parsed.window_size)
    if isinstance(parsed, _Ack):
        return Ack(parsed.ack_event_id, parsed.window_size)
    return StopStream()


def ours(payload: bytes) -> Any:
    result = parse_request(payload)
    return result.message if isinstance(result, InvalidRequest) else result


# --- examples ----------------------------------------------------------------------------------------

GOOD = [
    (b'{"type":"START_STREAM","last_ack_event_id":null,"window_size":5}', StartStream(None, 5)),
    (b'{"type":"START_STREAM","window_size":1}', StartStream(None, 1)),
    (b'{"type": "START_STREAM", "last_ack_event_id": 12, "window_size": 0}', StartStream(12, 0)),
    (b'{"type":"ACK","ack_event_id":3,"window_size":5}', Ack(3, 5)),
    (b'{"type":"STOP_STREAM"}', StopStream()),
    # pydantic's lax ints, which the node therefore accepts:
    (b'{"type":"ACK","ack_event_id":"5","window_size":5.0}', Ack(5, 5)),
    (b'{"type":"ACK","ack_event_id":true,"window_size":" +1_0 "}', Ack(1, 10)),
    (b'{"type":"ACK","ack_event_id":"\\t7\\n","window_size":"5.000"}', Ack(7, 5)),
]

BAD = [
    b"",
    b"not json",
    b"[]",
    b"null",
    b"{}",
    b'{"type":"FOO"}',
    b'{"type":null}',
    b'{"type":["ACK"]}',
    b'{"type":"ACK"}',
    b'{"type":"START_STREAM"}',
    b'{"type":"START_STREAM","window_size":-1}',
    b'{"type":"START_STREAM","window_size":1.5}',
    b'{"type":"START_STREAM","window_size":NaN}',
    b'{"type":"START_STREAM","window_size":1e20}',
    b'{"type":"ACK","ack_event_id":null,"window_size":"x","extra":1}',
    b'{"type":"STOP_STREAM","x":1}',
    b'{"type":"ACK","ack_event_id":"1e3","window_size":"5."}',
    b'{"type":"ACK","ack_event_id":"\\u001c5","window_size":"_5"}',
    b'{"type":"START_STREAM","window_size":1,"last_ack_event_id":"' + b"a" * 80 + b'"}',
    b'{"type":"START_STREAM","window_size":1,"last_ack_event_id":{"a":"' + b"x" * 100 + b'"}}',
]


@pytest.mark.parametrize(("payload", "expected"), GOOD)
def test_accepts_what_the_node_accepts(payload: bytes, expected: Any) -> None:
    assert parse_request(payload) == expected
    assert oracle(payload) == expected
    assert parse_request(payload.decode()) == expected  # text frames too


@pytest.mark.parametrize("payload", BAD)
def test_refuses_what_the_node_refuses_with_its_error_text(payload: bytes) -> None:
    result = parse_request(payload)
    assert isinstance(result, InvalidRequest)
    expected = oracle(payload)
    assert isinstance(expected, str)
    if b"json" in payload or not payload or payload.startswith(b"not"):
        # Invalid JSON: the parser's own words differ (Python's json vs jiter); the frame does not.
        assert result.message.startswith("1 validation error for RequestWrapper\n  Invalid JSON: ")
        assert result.message.endswith("input_type=bytes]")
    else:
        assert result.message == expected


def test_invalid_json_names_the_problem() -> None:
    result = parse_request(b'{"type":"STOP_STREAM"} x')
    assert isinstance(result, InvalidRequest)
    assert "Invalid JSON: trailing characters at line 1 column 24 [type=json_invalid" in result.message


# --- against the oracle, generated -------------------------------------------------------------------

_int_text = st.text(alphabet="0123456789+-_. e\t\u00a0\x1cx", max_size=8)
_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.sampled_from([0.0, -0.0, 5.0, 1e19, -1e19, 9.2e18, 2.0**63, float("inf"), float("nan")]),
    _int_text,
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.sampled_from("ab"), st.integers(), max_size=1),
)
_keys = ["type", "last_ack_event_id", "ack_event_id", "window_size", "extra", "TYPE"]


@st.composite
def _requests(draw: st.DrawFn) -> bytes:
    obj: dict[str, Any] = {}
    if draw(st.integers(0, 9)) > 0:
        obj["type"] = draw(
            st.one_of(st.sampled_from(["START_STREAM", "ACK", "STOP_STREAM", "ack", ""]), _values)
        )
    for key in draw(st.lists(st.sampled_from(_keys[1:]), max_size=4, unique=True)):
        obj[key] = draw(_values)
    return json.dumps(obj).encode()


@settings(max_examples=600)
@given(_requests())
def test_matches_the_node_on_generated_requests(payload: bytes) -> None:
    assert ours(payload) == oracle(payload)


@settings(max_examples=300)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=10),
            lambda children: (
                st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
            ),
            max_leaves=10,
        ).map(json.dumps),
    )
)
def test_any_input_is_a_request_or_a_validation_error(payload: Any) -> None:
    result = parse_request(payload)
    assert isinstance(result, StartStream | Ack | StopStream | InvalidRequest)
    if isinstance(result, InvalidRequest):
        assert result.message.startswith(
            ("1 validation error for RequestWrapper", "2 validation errors")
        ) or (re.match(r"\d+ validation errors for RequestWrapper", result.message))


def test_deeply_nested_input_is_a_validation_error() -> None:
    result = parse_request("[" * 100_000)
    assert isinstance(result, InvalidRequest)


@given(st.integers(0, 10**19), st.integers(0, 10**19), st.booleans())
def test_the_plain_ack_shortcut_agrees_with_the_full_parser(ack_id: int, window: int, compact: bool) -> None:
    from miningproxy.events import requests

    obj = {"type": "ACK", "ack_event_id": ack_id, "window_size": window}
    text = json.dumps(obj, separators=(",", ":")) if compact else json.dumps(obj)
    assert requests._PLAIN_ACK.fullmatch(text) is not None or ack_id >= 10**18 or window >= 10**18
    assert parse_request(text) == parse_request(text.encode()) == oracle(text.encode()) == Ack(ack_id, window)
    for variant in (
        text.replace("ACK", "ACk"),
        text.replace('"window_size"', '"window"'),
        text[:-1] + ',"x":1}',
    ):
        assert ours(variant.encode()) == oracle(variant.encode())
        assert isinstance(parse_request(variant), InvalidRequest)
    assert parse_request(" " + text) == Ack(ack_id, window)  # other spellings take the full path
