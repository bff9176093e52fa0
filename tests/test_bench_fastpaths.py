"""The hot-path encoders the benchmarks led to write exactly what the generic encoder writes."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miningproxy.stratum import messages as m

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
def test_encode_job_is_the_generic_encoding(msgid, data, job_id, nonce_size, weight, clean, parent) -> None:
    params = {
        "data": data,
        "job_id": job_id,
        "nonce_size": nonce_size,
        "weight": weight,
        "clean": clean,
        "parent_hash": parent,
    }
    expected = m.encode(m.request(str(msgid), "job", params))
    assert m.encode_job(msgid, data, job_id, nonce_size, weight, clean, parent) == expected


def test_encode_job_refuses_what_json_cannot_carry() -> None:
    with pytest.raises(ValueError):
        m.encode_job(0, "", "", 16, math.inf, True, "")
