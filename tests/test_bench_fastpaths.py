"""The hot-path encoders the benchmarks led to write exactly what the generic encoder writes."""

from __future__ import annotations

import json
import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miningproxy.stratum import messages as m
from miningproxy.stratum.session import _decoder, _fast_loads, decode_line, parse_nonce

HEX = st.text("0123456789abcdef", min_size=0, max_size=130)


@given(st.one_of(st.integers(), st.text(), st.none(), st.floats(allow_nan=False, allow_infinity=False)))
def test_encode_ok_is_the_generic_encoding(msgid) -> None:
    assert m.encode_ok(msgid) == m.encode(m.result(msgid, "ok"))


@given(
    st.integers(min_value=0, max_value=2**63),
    HEX,
    HEX,
    st.integers(min_value=0, max_value=64),
    st.floats(min_value=1e-9, max_value=256, allow_nan=False),
    st.booleans(),
    HEX,
)
def test_job_parts_make_the_generic_encoding(msgid, data, job_id, nonce_size, weight, clean, parent) -> None:
    params = {
        "data": data,
        "job_id": job_id,
        "nonce_size": nonce_size,
        "weight": weight,
        "clean": clean,
        "parent_hash": parent,
    }
    expected = m.encode(m.request(str(msgid), "job", params))
    # joined as job_parts documents it (and as the session writes every job line)
    head, after_data, after_id, tail = m.job_parts(nonce_size, weight, clean, parent)
    line = f"{head}{data}{after_data}{job_id}{after_id}{msgid:d}{tail}".encode("ascii")
    assert line == expected


def test_job_parts_refuse_what_json_cannot_carry() -> None:
    with pytest.raises(ValueError):
        m.job_parts(16, math.inf, True, "")


# --- the share path's parsers: fast paths that must decide exactly as the plain code ----------

_HEX_RE = re.compile(r"[0-9a-fA-F]+")


def _plain_parse_nonce(raw):
    """parse_nonce as first written: strip, drop one 0x, hex digits only."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw if raw >= 0 else None
    if not isinstance(raw, str):
        return None
    text = raw.strip()
    if text[:2] in ("0x", "0X"):
        text = text[2:]
    return int(text, 16) if _HEX_RE.fullmatch(text) else None


NONCE_LIKE = st.one_of(
    st.text("0123456789abcdefABCDEFxX_+- g\u0660\u00b2\uff11", max_size=40),
    st.from_regex(r"\A(0[xX])?[0-9a-fA-F]{1,40}\Z"),
    st.text(max_size=40),
    st.integers(),
    st.booleans(),
    st.none(),
)


@given(NONCE_LIKE)
def test_parse_nonce_fast_path_decides_as_the_plain_parser(raw) -> None:
    assert parse_nonce(raw) == _plain_parse_nonce(raw)


def _plain_decode(text):
    try:
        return ("ok", _decoder.decode(text))
    except ValueError:
        return ("error", None)


def _fast_decode(text):
    try:
        return ("ok", decode_line(text))
    except ValueError:
        return ("error", None)


JSONISH = st.one_of(
    st.text('{}[]":,0123456789.eE+- truefalsnNaIiy\\u', max_size=60).map(lambda t: "{" + t),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=10,
    ).map(lambda v: json.dumps({"v": v}, separators=(",", ":"))),
    st.text(max_size=60),
)


@given(JSONISH, st.sampled_from(["", " ", "\t", "x", "}", ",1"]))
def test_decode_line_agrees_with_the_json_decoder(text, suffix) -> None:
    assert _fast_decode(text + suffix) == _plain_decode(text + suffix)


def test_decode_line_refuses_nan_and_extra_data_like_the_decoder() -> None:
    for text in ('{"a":NaN}', '{"a":1}{"b":2}', '{"a":Infinity}', "{"):
        with pytest.raises(ValueError):
            decode_line(text)
    assert decode_line('{"id":1,"method":"submit"}') == {"id": 1, "method": "submit"}


_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@given(
    msgid=_VALUES,
    job_id=st.text(max_size=40),
    nonce=st.one_of(st.text(max_size=40), _VALUES),
    extra=st.dictionaries(st.text(max_size=6), _VALUES, max_size=3),
    ensure_ascii=st.booleans(),
    separators=st.sampled_from([(",", ":"), (", ", ": ")]),
)
def test_the_short_ways_decoder_reads_the_fields_it_uses_as_the_standard_decoder(
    msgid, job_id, nonce, extra, ensure_ascii, separators
) -> None:
    """Session.receive_many decodes a line with orjson and uses only method, params' job_id and
    nonce, and an id that is an int, a str or null; for those, orjson must read what the standard
    library's decoder (the general way's) reads, whatever else the line holds."""
    line = {**extra, "id": msgid, "method": "submit", "params": {**extra, "job_id": job_id, "nonce": nonce}}
    text = json.dumps(line, ensure_ascii=ensure_ascii, separators=separators)
    fast, plain = _fast_loads(text), _decoder.decode(text)
    assert fast["method"] == plain["method"]
    for key in ("job_id", "nonce"):
        if type(fast["params"][key]) is str:
            assert fast["params"][key] == plain["params"][key]
    if type(fast["id"]) is int or type(fast["id"]) is str or fast["id"] is None:
        assert fast["id"] == plain["id"] and type(fast["id"]) is type(plain["id"])
