"""Block templates from the node: parsing every real template, precise errors, fuzzing."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace

import pytest
from hathor_vectors import template_dicts
from hypothesis import given, settings
from hypothesis import strategies as st

from miningproxy.hathor.block import TxOutput
from miningproxy.hathor.template import FIELDS, BlockTemplate, TemplateError, json_copy, parse_templates

REAL = template_dicts()
BASE = REAL[0]
H = ["11" * 32, "22" * 32, "33" * 32, "44" * 32]


def with_changes(**changes):
    d = copy.deepcopy(BASE)
    d.update(changes)
    return d


def test_transcripts_hold_templates() -> None:
    assert len(REAL) == 8


@pytest.mark.parametrize("raw", REAL, ids=lambda d: f"h{d['height']}-{d['timestamp_now']}")
def test_every_real_template_parses(raw) -> None:
    t = BlockTemplate.from_json(raw)
    assert t.to_json() == raw
    assert json.dumps(t.to_json()) == json.dumps(raw)  # ints stay ints (the node sends weight 8)
    assert t.data == bytes.fromhex(raw["data"])
    assert t.versions == tuple(raw["versions"]) == (0, 3)
    assert t.reward == raw["reward"] == 6400
    assert t.weight == 8.0 and isinstance(t.weight, float)
    assert (t.timestamp_now, t.timestamp_min, t.timestamp_max) == (
        raw["timestamp_now"],
        raw["timestamp_min"],
        raw["timestamp_max"],
    )
    assert [p.hex() for p in t.parents] == raw["parents"]
    assert t.parents_any == ()
    assert t.parent_hash == raw["parents"][0]
    assert (t.height, t.score, t.signal_bits) == (raw["height"], float(raw["score"]), raw["signal_bits"])
    # data is the node's block without nonce: empty reward script, stamped with timestamp_min
    b = t.data_block
    assert b.nonce is None
    assert b.outputs == (TxOutput(t.reward, 0, b""),)
    assert b.timestamp == t.timestamp_min
    assert b.weight == t.weight and b.parents == t.parents and b.data == b""
    assert b.struct_without_nonce() == t.data


def test_parse_templates_reads_the_notify_params() -> None:
    templates = parse_templates(copy.deepcopy(REAL[:2]))
    assert [t.height for t in templates] == [1, 1]


def test_to_json_is_a_copy() -> None:
    raw = copy.deepcopy(BASE)
    t = BlockTemplate.from_json(raw)
    raw["parents"].append("junk")  # the caller's dict changing later does not change the template
    out = t.to_json()
    out["versions"].append(99)
    assert t.to_json() == BASE


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=30,
)


def _containers(value, out):
    if isinstance(value, (dict, list, tuple)):
        out.append(value)
        for item in value.values() if isinstance(value, dict) else value:
            _containers(item, out)
    return out


@given(_JSON | st.tuples(st.lists(st.integers(), max_size=3), _JSON))
def test_json_copy_is_an_equal_copy_that_shares_no_container(value) -> None:
    """The template's raw dict is copied with json_copy, not copy.deepcopy (a notify each time):
    equal to the original, and no list or dict of it shared (a tuple holding one is deep-copied
    as copy.deepcopy does)."""
    copied = json_copy(value)
    assert copied == value == copy.deepcopy(value)
    originals = {id(c) for c in _containers(value, []) if not isinstance(c, tuple)}
    assert not originals & {id(c) for c in _containers(copied, [])}


def test_direct_construction_builds_the_json() -> None:
    t = BlockTemplate.from_json(BASE)
    made = BlockTemplate(
        data=t.data,
        versions=t.versions,
        reward=t.reward,
        weight=t.weight,
        timestamp_now=t.timestamp_now,
        timestamp_min=t.timestamp_min,
        timestamp_max=t.timestamp_max,
        parents=t.parents,
        parents_any=t.parents_any,
        height=t.height,
        score=t.score,
        signal_bits=t.signal_bits,
    )
    assert made == t
    assert made.to_json() == BASE  # 8 == 8.0 in Python; the keys and values are the node's
    assert BlockTemplate.from_json(made.to_json()) == t


def test_to_json_follows_replaced_fields() -> None:
    t = BlockTemplate.from_json(BASE)
    moved = replace(t, timestamp_now=t.timestamp_now + 5, weight=9.5)
    assert moved.to_json() == BASE | {"timestamp_now": BASE["timestamp_now"] + 5, "weight": 9.5}
    assert moved.data_block == t.data_block


def test_extra_fields_are_kept() -> None:
    raw = with_changes(future_field={"x": 1})
    assert BlockTemplate.from_json(raw).to_json() == raw


def test_float_weight_and_parents_any() -> None:
    raw = with_changes(weight=12.9, parents=[BASE["parents"][0]], parents_any=BASE["parents"][1:] + [H[0]])
    t = BlockTemplate.from_json(raw)
    assert t.weight == 12.9 and len(t.parents) == 1 and len(t.parents_any) == 3


# -- precise errors ---------------------------------------------------------------------------------

BAD = [
    ("data", 123, "'data': must be a hex string"),
    ("data", "0g", "'data': must be a hex string"),
    ("data", "000", "'data': must be a hex string of whole bytes"),
    ("data", "00 01", "'data': must be a hex string"),
    ("data", BASE["data"][:-2], "'data': is not a block without nonce: truncated"),
    ("data", BASE["data"] + "00", "'data': is not a block without nonce: 1 trailing bytes"),
    ("versions", [], "'versions': is empty"),
    ("versions", "0,3", "'versions': must be a list of integers"),
    ("versions", [0, "3"], "'versions': every version must be an integer in 0..255, got '3'"),
    ("versions", [0, True], "'versions': every version must be an integer"),
    ("versions", [256], "'versions': every version must be an integer in 0..255, got 256"),
    ("reward", 0, "'reward': must be an integer in 1..2\\*\\*63, got 0"),
    ("reward", -5, "'reward': must be an integer"),
    ("reward", 64.0, "'reward': must be an integer"),
    ("reward", "6400", "'reward': must be an integer"),
    ("reward", True, "'reward': must be an integer"),
    ("reward", 2**63 + 1, "'reward': must be an integer in 1..2\\*\\*63"),
    ("reward", 10**5000, "'reward': must be an integer in 1..2\\*\\*63, got <16610-bit integer>"),
    ("weight", 0, "'weight': must lie in \\(0, 256\\], got 0"),
    ("weight", 257, "'weight': must lie in \\(0, 256\\]"),
    ("weight", 10**400, "'weight': must lie in \\(0, 256\\]"),
    ("weight", -1.5, "'weight': must be a finite number in \\(0, 256\\], got -1.5"),
    ("weight", math.nan, "'weight': must be a finite number"),
    ("weight", math.inf, "'weight': must be a finite number"),
    ("weight", "8", "'weight': must be a number, got '8'"),
    ("weight", None, "'weight': must be a number, got None"),
    ("weight", False, "'weight': must be a number, got False"),
    ("timestamp_now", 1.5, "'timestamp_now': must be an unsigned 32-bit integer, got 1.5"),
    ("timestamp_min", -1, "'timestamp_min': must be an unsigned 32-bit integer"),
    ("timestamp_max", 2**32, "'timestamp_max': must be an unsigned 32-bit integer"),
    ("timestamp_min", BASE["timestamp_max"] + 1, "'timestamp_min': .* is after timestamp_max"),
    ("parents", [], "'parents': is empty"),
    ("parents", "00" * 32, "'parents': must be a list of hashes"),
    ("parents", [BASE["parents"][0][:-2]], "'parents': item 0 must be a 64-digit hex hash"),
    ("parents", [BASE["parents"][0], 7], "'parents': item 1 must be a 64-digit hex hash, got 7"),
    ("parents", H, "'parents': has 4 required parents, a block has 3"),
    ("parents", [H[0], H[1], H[0]], "'parents': duplicate parent 1111"),
    ("parents", [H[0]], "'parents_any': parents \\(1\\) \\+ parents_any \\(0\\) cannot make the 3 parents"),
    ("parents_any", None, "'parents_any': must be a list of hashes"),
    ("parents_any", [H[0].upper()[:-1]], "'parents_any': item 0 must be a 64-digit hex hash"),
    ("parents_any", [BASE["parents"][1]], "'parents_any': duplicate parent"),
    ("height", -1, "'height': must be a non-negative integer, got -1"),
    ("height", 1.0, "'height': must be a non-negative integer"),
    ("score", "512", "'score': must be a number"),
    ("score", math.inf, "'score': must be finite"),
    ("score", 10**400, "'score': is out of range"),
    ("signal_bits", 256, "'signal_bits': must be an integer in 0..255, got 256"),
    ("signal_bits", None, "'signal_bits': must be an integer in 0..255, got None"),
]


@pytest.mark.parametrize(
    ("name", "value", "message"), BAD, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BAD)]
)
def test_malformed_fields_are_named(name: str, value, message: str) -> None:
    with pytest.raises(TemplateError, match=f"^template field {message}"):
        BlockTemplate.from_json(with_changes(**{name: value}))


@pytest.mark.parametrize("name", FIELDS)
def test_missing_fields_are_named(name: str) -> None:
    raw = copy.deepcopy(BASE)
    del raw[name]
    with pytest.raises(TemplateError, match=f"^template is missing field\\(s\\): {name}$"):
        BlockTemplate.from_json(raw)


@pytest.mark.parametrize("junk", [None, [], "template", 3, [BASE]])
def test_non_objects_are_rejected(junk) -> None:
    with pytest.raises(TemplateError, match="template must be a JSON object"):
        BlockTemplate.from_json(junk)


def test_parse_templates_errors() -> None:
    with pytest.raises(TemplateError, match="templates must be a JSON list, got dict"):
        parse_templates(BASE)
    with pytest.raises(TemplateError, match="template list is empty"):
        parse_templates([])
    with pytest.raises(TemplateError, match="^template 1: template field 'weight': must be a number"):
        parse_templates([BASE, with_changes(weight="x")])


# -- fuzzing ----------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
near_values = st.one_of(
    json_values,
    st.sampled_from([0, 1, 255, 256, -1, 2**32, 2**63, 2**64, 8, 8.0, 0.0, 256.0, "", "00", [], [0], [0, 3]]),
    st.lists(st.sampled_from(H + ["", "zz" * 32, H[0][:-1]]), max_size=4),
    st.binary(max_size=80).map(bytes.hex),
)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), near_values), st.lists(st.sampled_from(FIELDS), max_size=2))
def test_fuzzed_templates_only_ever_raise_template_error(changes, dropped) -> None:
    raw = copy.deepcopy(BASE)
    raw.update(changes)
    for name in dropped:
        raw.pop(name, None)
    try:
        t = BlockTemplate.from_json(raw)
    except TemplateError:
        return
    assert t.to_json() == raw


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_junk_only_ever_raises_template_error(junk) -> None:
    with pytest.raises(TemplateError):
        BlockTemplate.from_json(junk)
    with pytest.raises(TemplateError):
        parse_templates(junk if isinstance(junk, list) and junk else [junk])
