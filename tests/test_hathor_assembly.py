"""Block assembly: real submissions rebuilt byte for byte, the timestamp TRAP, and hathorlib agreement."""

from __future__ import annotations

import copy
import hashlib
import math
import struct
from dataclasses import replace

import pytest
from hathor_vectors import (
    PRIVATENET_ADDRESS,
    Submission,
    hathorlib_block,
    http_block_template,
    stratum_jobs,
    submissions,
    template_dicts,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import miningproxy.hathor.assembly as assembly
from hashing.header import check_pow
from miningproxy.hathor.addresses import decode_address, encode_address
from miningproxy.hathor.assembly import BlockAssembler, choose_parents, clamp_timestamp
from miningproxy.hathor.block import MAX_SCRIPT_SIZE, Block, TxOutput, parse_block
from miningproxy.hathor.networks import TESTNET
from miningproxy.hathor.scripts import p2pkh_script, p2sh_script, parse_output_script
from miningproxy.hathor.template import BlockTemplate

REAL = template_dicts()
BASE = REAL[0]
SUBMISSIONS = submissions()
H = [bytes([i]) * 32 for i in range(1, 7)]


def template(**changes) -> BlockTemplate:
    raw = copy.deepcopy(BASE)
    raw.update(changes)
    return BlockTemplate.from_json(raw)


# -- real vectors -------------------------------------------------------------------------------------


def test_the_transcript_has_every_kind_of_submission() -> None:
    assert [s.note for s in SUBMISSIONS] == [
        "empty reward script",
        "duplicate",
        "P2PKH reward script, positional params",
        "invalid PoW",
        "optimistic=true",
    ]


@pytest.mark.parametrize("sub", SUBMISSIONS, ids=lambda s: f"id{s.request_id}-{s.note.split(',')[0]}")
def test_submitted_blocks_are_rebuilt_byte_for_byte(sub: Submission) -> None:
    t = BlockTemplate.from_json(sub.template)
    # The transcript's client mined `data` as given, i.e. at timestamp_min: build at that timestamp.
    built = BlockAssembler(t, sub.script).build(timestamp=t.timestamp_min)
    assert built.struct(sub.nonce).hex() == sub.hexdata
    assert parse_block(bytes.fromhex(sub.hexdata)) == replace(built.block, nonce=sub.nonce)
    block_hash = built.hash(sub.nonce)
    if sub.mined_hash is not None:
        assert block_hash == sub.mined_hash  # the client's "mined" info frame


@pytest.mark.parametrize("sub", SUBMISSIONS, ids=lambda s: f"id{s.request_id}-{s.note.split(',')[0]}")
def test_node_verdicts_are_reproduced(sub: Submission) -> None:
    t = BlockTemplate.from_json(sub.template)
    block_hash = BlockAssembler(t, sub.script).build(t.timestamp_min).hash(sub.nonce)
    meets = check_pow(block_hash, t.weight)
    assert sub.next_template is not None
    became_tip = sub.next_template["parents"][0] == block_hash.hex()
    if sub.reply.get("result") is True:  # accepted: valid PoW, and the next template builds on it
        assert meets and became_tip
    elif sub.reply.get("result") is False:  # "not the tip": a re-submission of the current tip
        assert sub.note == "duplicate" and meets and became_tip
    elif sub.note == "invalid PoW":  # fatal Internal error, block not stored
        assert sub.reply["error"]["code"] == -32603
        assert not meets and not became_tip
    else:  # optimistic=true: the same fatal reply, yet the block was stored and became the tip
        assert sub.optimistic and sub.reply["error"]["code"] == -32603
        assert meets and became_tip


@pytest.mark.parametrize("raw", REAL, ids=lambda d: f"h{d['height']}-{d['timestamp_now']}")
def test_assembly_reproduces_the_nodes_own_block_data(raw) -> None:
    """With an empty script at timestamp_min our block is exactly the node's `data`."""
    t = BlockTemplate.from_json(raw)
    built = BlockAssembler(t, b"").build(t.timestamp_min)
    assert built.struct_without_nonce == t.data
    assert built.block == t.data_block


def test_the_nodes_get_block_template_is_stamped_with_its_clock() -> None:
    """GET /v1a/get_block_template at the same moment: the node itself uses now, not timestamp_min."""
    body = http_block_template()
    t = BlockTemplate.from_json(BASE)
    assert body["parents"] == BASE["parents"]
    ts = clamp_timestamp(t, body["timestamp"] + 0.5)
    assert ts == body["timestamp"] != t.timestamp_min
    block = BlockAssembler(t, bytes.fromhex(body["outputs"][0]["script"])).build(ts).block
    assert block.timestamp == body["timestamp"]
    assert block.weight == body["weight"]
    assert block.version == body["version"]
    assert block.signal_bits == body["signal_bits"]
    assert [p.hex() for p in block.parents] == body["parents"]
    assert [(o.value, o.token_data) for o in block.outputs] == [
        (o["value"], o["token_data"]) for o in body["outputs"]
    ]
    assert block.data.hex() == body["data"]


def test_funds_hash_matches_the_nodes_stratum_jobs() -> None:
    """The node's stratum server paid PRIVATENET_ADDRESS from the last template: same funds hash."""
    t = BlockTemplate.from_json(REAL[-1])
    script = decode_address(PRIVATENET_ADDRESS, TESTNET).script
    assembler = BlockAssembler(t, script)
    jobs = stratum_jobs()
    assert jobs and jobs[0]["parent_hash"] == t.parent_hash
    for job in jobs:
        assert job["data"][:64] == assembler.funds_hash.hex()


# -- the TRAP: timestamp and weight come from the template fields, not from `data` --------------------


def trap_template() -> BlockTemplate:
    # A decaying-difficulty chain: the node's weight (12.9) is for timestamp_now, its data says 8.0 @ min.
    return template(
        weight=12.9, timestamp_now=BASE["timestamp_min"] + 3000, timestamp_max=BASE["timestamp_min"] + 4500
    )


def test_trap_block_uses_the_clock_and_the_template_weight() -> None:
    t = trap_template()
    assert t.data_block.weight == 8.0 and t.data_block.timestamp == t.timestamp_min
    now = t.timestamp_now + 0.7
    built = BlockAssembler(t, p2pkh_script(b"\7" * 20)).build(clamp_timestamp(t, now))
    block = built.block
    assert block.timestamp == t.timestamp_now != t.data_block.timestamp
    assert block.weight == 12.9
    assert built.graph[:12] == struct.pack("!dI", 12.9, t.timestamp_now)
    assert parse_block(built.struct(0)).weight == 12.9


def test_clamp_timestamp() -> None:
    t = trap_template()
    assert clamp_timestamp(t, t.timestamp_min - 100.0) == t.timestamp_min
    assert clamp_timestamp(t, t.timestamp_max + 1e6) == t.timestamp_max
    assert clamp_timestamp(t, t.timestamp_min + 10.999) == t.timestamp_min + 10
    assert clamp_timestamp(t, t.timestamp_max) == t.timestamp_max
    with pytest.raises(ValueError):
        clamp_timestamp(t, math.nan)


def test_real_template_clock_beyond_max_is_clamped() -> None:
    t = BlockTemplate.from_json(REAL[-1])  # timestamp_now is past timestamp_max on this chain
    assert t.timestamp_now > t.timestamp_max
    assert clamp_timestamp(t, t.timestamp_now) == t.timestamp_max


def test_build_refuses_timestamps_outside_the_template() -> None:
    t = trap_template()
    assembler = BlockAssembler(t, b"")
    for bad in (t.timestamp_min - 1, t.timestamp_max + 1):
        with pytest.raises(ValueError, match="outside the template"):
            assembler.build(bad)


# -- parents, version, signal bits, reward, data ---------------------------------------------------


@pytest.mark.parametrize(
    ("parents", "parents_any", "chosen"),
    [
        ([H[0], H[1], H[2]], [], (H[0], H[1], H[2])),
        ([H[0]], [H[1], H[2], H[3]], (H[0], H[1], H[2])),
        ([H[0], H[1]], [H[2], H[3]], (H[0], H[1], H[2])),
        ([H[0], H[1], H[2]], [H[3]], (H[0], H[1], H[2])),
    ],
)
def test_choose_parents(parents, parents_any, chosen) -> None:
    t = template(parents=[p.hex() for p in parents], parents_any=[p.hex() for p in parents_any])
    assert choose_parents(t) == chosen
    assert BlockAssembler(t, b"").build(t.timestamp_min).block.parents == chosen


@pytest.mark.parametrize(("versions", "version"), [([0, 3], 0), ([3, 0], 0), ([0], 0), ([3], 3)])
def test_version(versions, version) -> None:
    t = template(versions=versions)
    assert BlockAssembler(t, b"").build(t.timestamp_min).block.version == version


def test_signal_bits_reward_and_p2sh_payout() -> None:
    t = template(signal_bits=5, reward=2**31 + 7)
    address = encode_address(TESTNET.p2sh_version, b"\x42" * 20)
    assert address.startswith("w")
    built = BlockAssembler(t, decode_address(address, TESTNET).script).build(t.timestamp_min)
    parsed = parse_block(built.struct(1))
    assert parsed.signal_bits == 5
    assert parsed.outputs == (TxOutput(2**31 + 7, 0, p2sh_script(b"\x42" * 20)),)
    assert parse_output_script(parsed.outputs[0].script) == ("p2sh", b"\x42" * 20)


def test_block_data_up_to_100_bytes() -> None:
    t = template()
    assembler = BlockAssembler(t, b"")
    built = assembler.build(t.timestamp_min, b"x" * 100)
    assert parse_block(built.struct(9)).data == b"x" * 100
    with pytest.raises(ValueError, match="block data is 101 bytes, the maximum is 100"):
        assembler.build(t.timestamp_min, b"x" * 101)
    small = BlockAssembler(t, b"", data_max=10)
    with pytest.raises(ValueError, match="maximum is 10"):
        small.build(t.timestamp_min, b"x" * 11)


def test_build_is_one_graph_hash(monkeypatch) -> None:
    """The funds part is hashed once per (template, script); each build hashes only its graph."""
    t = trap_template()
    assembler = BlockAssembler(t, p2pkh_script(b"\1" * 20))
    assert assembler.funds_hash == hashlib.sha256(assembler.funds).digest()
    calls: list[bytes] = []

    def counting_sha256(data: bytes = b""):
        calls.append(bytes(data))
        return hashlib.sha256(data)

    monkeypatch.setattr(assembly, "_sha256", counting_sha256)
    built = assembler.build(t.timestamp_min + 5, b"job-1")
    assert calls == [built.graph]
    assert built.header[:32] == assembler.funds_hash


# -- agreement with hathorlib on random templates -------------------------------------------------------


@st.composite
def templates(draw):
    n_required = draw(st.integers(1, 3))
    hashes = draw(st.lists(st.binary(min_size=32, max_size=32), min_size=3, max_size=6, unique=True))
    ts_min = draw(st.integers(0, 2**32 - 1))
    ts_max = draw(st.integers(ts_min, 2**32 - 1))
    weight = draw(st.floats(min_value=0.0, max_value=256.0, exclude_min=True))
    reward = draw(st.integers(1, 2**31 - 1) | st.integers(2**31, 2**63))
    versions = tuple(draw(st.lists(st.sampled_from([0, 3]), min_size=1, max_size=2, unique=True)))
    signal_bits = draw(st.integers(0, 255))
    parents, parents_any = tuple(hashes[:n_required]), tuple(hashes[n_required:])
    data = Block(
        signal_bits,
        min(versions),
        (TxOutput(reward, 0, b""),),
        weight,
        ts_min,
        parents + parents_any[: 3 - n_required],
        b"",
    ).struct_without_nonce()
    return BlockTemplate(
        data=data,
        versions=versions,
        reward=reward,
        weight=weight,
        timestamp_now=ts_min,
        timestamp_min=ts_min,
        timestamp_max=ts_max,
        parents=parents,
        parents_any=parents_any,
        height=draw(st.integers(0, 2**40)),
        score=0.0,
        signal_bits=signal_bits,
    )


@settings(max_examples=300, deadline=None)
@given(
    templates(),
    st.binary(min_size=20, max_size=20).map(p2pkh_script)
    | st.binary(min_size=20, max_size=20).map(p2sh_script),
    st.floats(0, 2**33),
    st.binary(max_size=100),
    st.integers(0, 2**128 - 1),
)
def test_assembled_blocks_agree_with_hathorlib(t, script, now, data, nonce) -> None:
    built = BlockAssembler(t, script).build(clamp_timestamp(t, now), data)
    block = replace(built.block, nonce=nonce)
    assert (block.signal_bits, block.weight, block.parents) == (t.signal_bits, t.weight, choose_parents(t))
    assert block.version == (0 if 0 in t.versions else t.versions[0])
    assert block.outputs == (TxOutput(t.reward, 0, script),)
    assert t.timestamp_min <= block.timestamp <= t.timestamp_max
    hb = hathorlib_block(block)
    assert built.header == block.mining_header() == hb.get_mining_header_without_nonce()
    assert built.struct_without_nonce == hb.get_struct_without_nonce()
    assert built.struct(nonce) == hb.get_struct() == block.struct()
    assert built.hash(nonce) == hb.calculate_hash() == block.hash()
    assert parse_block(built.struct(nonce)) == block


@settings(max_examples=200, deadline=None)
@given(
    templates(),
    st.binary(max_size=30),
    st.lists(
        st.binary(min_size=20, max_size=20).map(p2pkh_script) | st.binary(max_size=100),
        min_size=1,
        max_size=4,
    ),
    st.floats(0, 2**33),
    st.binary(max_size=100),
)
def test_an_assembler_made_for_another_script_is_the_one_made_from_the_template(
    t, first, scripts, now, data
) -> None:
    # A solo pool's assemblers: the generation's first from its template, the others from it.
    origin = BlockAssembler(t, first)
    timestamp = clamp_timestamp(t, now)
    origin.build(timestamp, data)  # (its graph head cached: the others must not depend on it)
    for script in scripts:
        made, fresh = origin.for_script(script), BlockAssembler(t, script)
        assert (made.script, made.output, made.funds, made.funds_hash) == (
            fresh.script,
            fresh.output,
            fresh.funds,
            fresh.funds_hash,
        )
        assert (made.template, made.version, made.parents, made.data_max) == (
            fresh.template,
            fresh.version,
            fresh.parents,
            fresh.data_max,
        )
        built, expected = made.build(timestamp, data), fresh.build(timestamp, data)
        assert (built.header, built.graph, built.struct(7)) == (
            expected.header,
            expected.graph,
            expected.struct(7),
        )
        assert built.block == expected.block


def test_an_assembler_for_a_script_too_long_is_refused_like_one_from_the_template() -> None:
    t = template()
    too_long = bytes(MAX_SCRIPT_SIZE + 1)
    with pytest.raises(ValueError, match="output script"):
        BlockAssembler(t, too_long)
    with pytest.raises(ValueError, match="output script"):
        BlockAssembler(t, b"").for_script(too_long)
