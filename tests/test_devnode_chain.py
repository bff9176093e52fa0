"""The dev node's chain (pure): genesis, templates shaped as a real node's, and block validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hashing.header import HeaderHasher, check_pow
from miningproxy.devnode.chain import ChainRules, DevChain, SubmitStatus, json_number, weight_to_work
from miningproxy.devnode.genesis import make_genesis
from miningproxy.devnode.miner import build_block, find_bad_nonce, find_nonce, mine, mine_template
from miningproxy.hathor.block import Block, TxOutput, parse_block
from miningproxy.hathor.template import BlockTemplate

TRANSCRIPTS = Path(__file__).resolve().parents[2] / "shared" / "protocol" / "transcripts"
NOW = 1795814406  # the wall clock of the real node when the transcript was taken
P2PKH = bytes.fromhex("76a91466665b27f7dbc4c8c089d2f686c170c74d66f0b588ac")


def _frames() -> list[dict]:
    return [json.loads(line) for line in (TRANSCRIPTS / "mining_ws.jsonl").read_text().splitlines() if line]


def _sent(note: str) -> bytes:
    """The block struct the client submitted in the transcript frame with this note."""
    (frame,) = [f["frame"] for f in _frames() if f.get("note") == note]
    params = frame["params"]
    return bytes.fromhex(params[0] if isinstance(params, list) else params["hexdata"])


def _chain(**rules) -> DevChain:
    rules.setdefault("block_weight", 8)
    return DevChain(make_genesis(), ChainRules(**rules))


def _with_nonce(block: Block, nonce: int) -> Block:
    return Block(
        block.signal_bits,
        block.version,
        block.outputs,
        block.weight,
        block.timestamp,
        block.parents,
        block.data,
        nonce,
    )


def test_genesis_is_the_real_privatenet_fastmine_genesis() -> None:
    version = json.loads((TRANSCRIPTS / "http-version.txt").read_text().split("\n\n", 1)[1])
    genesis = make_genesis()
    assert genesis.block_hash.hex() == version["genesis_block_hash"]
    assert genesis.tx1.hash.hex() == version["genesis_tx1_hash"]
    assert genesis.tx2.hash.hex() == version["genesis_tx2_hash"]
    assert genesis.block.timestamp == 1643902665
    assert (genesis.tx1.timestamp, genesis.tx2.timestamp) == (1643902666, 1643902667)


def test_genesis_with_another_timestamp_is_mined_validly() -> None:
    genesis = make_genesis(1_700_000_000)
    assert check_pow(genesis.block_hash, 8)
    assert genesis.block_hash != make_genesis().block_hash
    assert all(check_pow(tx.hash, 1) for tx in genesis.txs)


def test_first_template_equals_the_real_nodes() -> None:
    frames = _frames()
    assert _chain().templates_json(NOW) == frames[1]["frame"]["params"]


def test_template_shape_and_types() -> None:
    real = _frames()[1]["frame"]["params"][0]
    ours = _chain(block_weight=5.5).templates_json(NOW)[0]
    assert list(ours) == list(real)
    for key, value in real.items():
        expected = (int, float) if key in ("weight", "score") else type(value)
        assert isinstance(ours[key], expected), key
    assert ours["weight"] == 5.5 and json.dumps(ours["weight"]) == "5.5"
    assert json.dumps(_chain().templates_json(NOW)[0]["weight"]) == "8"  # integral: a JSON int, as the node
    # data: the funds part with one output of the reward and an EMPTY script, stamped timestamp_min.
    assert ours["data"].startswith("000001" + "00001900" + "00" + "0000")
    block = parse_block(bytes.fromhex(ours["data"]), has_nonce=False)
    assert block.outputs == (TxOutput(6400, 0, b""),)
    assert block.timestamp == ours["timestamp_min"] and block.data == b""
    assert block.weight == ours["weight"]
    # The proxy's own template parser accepts it.
    assert BlockTemplate.from_json(ours).height == 1


def test_templates_as_block_template_objects() -> None:
    (template,) = _chain().templates(NOW)
    assert isinstance(template, BlockTemplate)
    assert template.parent_hash == make_genesis().block_hash.hex()
    assert template.to_json()["weight"] == 8


def test_accepted_blocks_link_and_score_like_the_node() -> None:
    chain = _chain()
    frames = _frames()
    first = _sent("empty reward script")
    result = chain.submit(first, NOW)
    assert result.status is SubmitStatus.ACCEPTED
    assert result.block is not None and result.block.height == 1
    assert chain.tip.hash.hex() == frames[4]["frame"]["mined"]
    # The next template builds on it, exactly as the node's notify after the block.
    assert chain.templates_json(NOW) == frames[7]["frame"]["params"]
    second = chain.submit(_sent("P2PKH reward script, positional params"), NOW + 1)
    assert second.accepted
    assert chain.templates_json(NOW + 1) == frames[17]["frame"]["params"]
    assert [b.height for b in chain.blocks] == [0, 1, 2]
    assert chain.blocks[2].block.parents[0] == chain.blocks[1].hash
    assert chain.best_blockchain(2) == [chain.blocks[2], chain.blocks[1]]


def test_duplicate_and_stale_parent_are_not_tip() -> None:
    chain = _chain()
    t0 = chain.templates_json(NOW)[0]
    a = mine_template(t0, script=P2PKH)
    b = mine_template(t0, timestamp=t0["timestamp_min"] + 5)  # a competing block on the same parent
    assert chain.submit(a, NOW).accepted
    duplicate = chain.submit(a, NOW)
    assert duplicate.status is SubmitStatus.NOT_TIP and "already exists" in duplicate.reason
    stale = chain.submit(b, NOW)
    assert stale.status is SubmitStatus.NOT_TIP and "not the best block" in stale.reason
    assert chain.height == 1  # neither was stored
    # Even an invalid block on a stale parent is just "not the tip", as in the node.
    bad = build_block(t0)
    assert chain.submit(_with_nonce(bad, find_bad_nonce(bad)).struct(), NOW).status is SubmitStatus.NOT_TIP


def _reject(chain: DevChain, block: Block, now: int = NOW) -> str:
    mined = mine(block) if block.nonce is None else block
    result = chain.submit(mined.struct(), now)
    assert result.status is SubmitStatus.INVALID, result
    assert chain.height == 0
    return result.reason


def test_rejects_wrong_parents() -> None:
    chain = _chain()
    t = chain.templates_json(NOW)[0]
    block = build_block(t)
    unknown = bytes(32)
    assert "does not exist" in _reject(
        chain, _replace(block, parents=(block.parents[0], block.parents[1], unknown))
    )
    assert "duplicated parents" in _reject(
        chain, _replace(block, parents=(block.parents[0], block.parents[1], block.parents[1]))
    )
    assert "expecting 2" in _reject(chain, _replace(block, parents=block.parents[:2]))
    assert chain.submit(_replace(block, parents=()).struct(0), NOW).status is SubmitStatus.INVALID


def _replace(block: Block, **changes) -> Block:
    fields = dict(
        signal_bits=block.signal_bits,
        version=block.version,
        outputs=block.outputs,
        weight=block.weight,
        timestamp=block.timestamp,
        parents=block.parents,
        data=block.data,
        nonce=None,
    )
    fields.update(changes)
    return Block(**fields)


def test_rejects_bad_timestamps() -> None:
    chain = _chain()
    t = chain.templates_json(NOW)[0]
    block = build_block(t)
    # Not after the genesis transactions (timestamp_min - 1 is the second genesis tx's timestamp).
    assert "timestamp=" in _reject(chain, _replace(block, timestamp=t["timestamp_min"] - 1))
    # Too far in the future for the node's clock.
    assert "in the future" in _reject(chain, _replace(block, timestamp=NOW + 301))
    assert chain.submit(mine(_replace(block, timestamp=NOW + 300)).struct(), NOW).accepted


def test_rejects_block_too_far_from_a_non_genesis_parent() -> None:
    chain = _chain()
    t = chain.templates_json(NOW)[0]
    assert chain.submit(mine_template(t, timestamp=t["timestamp_min"]), NOW).accepted
    t1 = chain.templates_json(NOW)[0]
    assert t1["timestamp_max"] == chain.tip.timestamp + 4499  # the distance limit, below now + 300
    far = _replace(build_block(t1), timestamp=chain.tip.timestamp + 4501)
    result = chain.submit(mine(far).struct(), NOW)
    assert result.status is SubmitStatus.INVALID and "too big" in result.reason


def test_rejects_bad_reward_and_tokens() -> None:
    chain = _chain()
    block = build_block(chain.templates_json(NOW)[0])
    assert "issued=6401 allowed=6400" in _reject(chain, _replace(block, outputs=(TxOutput(6401, 0, b""),)))
    split = (TxOutput(6000, 0, P2PKH), TxOutput(400, 0, b""))
    assert chain.submit(mine(_replace(block, outputs=split)).struct(), NOW).accepted  # split is fine


def test_rejects_low_weight_with_the_nodes_message() -> None:
    chain = _chain()
    block = build_block(chain.templates_json(NOW)[0], weight=7.5)
    reason = _reject(chain, block)
    assert "weight (7.5) is smaller than the minimum weight (8.0)" in reason


def test_rejects_bad_pow() -> None:
    chain = _chain()
    block = build_block(chain.templates_json(NOW)[0])
    reason = _reject(chain, _with_nonce(block, find_bad_nonce(block)))
    assert "invalid data" in reason
    # A nonce mined for a lower weight than the block claims.
    low = _replace(block, weight=12.0)
    nonce = next(n for n in range(1 << 20) if not check_pow(low.hash(n), 12) and check_pow(low.hash(n), 1))
    assert "invalid data" in _reject(chain, _with_nonce(low, nonce))


def test_rejects_garbage_and_unsupported_versions() -> None:
    chain = _chain()
    assert chain.submit(b"\x00\x00\x01", NOW).status is SubmitStatus.INVALID
    block = mine(build_block(chain.templates_json(NOW)[0]))
    assert chain.submit(block.struct() + b"\x00", NOW).status is SubmitStatus.INVALID  # trailing byte
    assert "merge-mined" in _reject(chain, _replace(block, version=3))
    assert chain.submit(bytes([0, 1]) + block.struct()[2:], NOW).status is SubmitStatus.NOT_A_BLOCK


def test_weight_decay_makes_later_timestamps_cheaper_and_sets_the_trap() -> None:
    chain = _chain(block_weight=10, min_block_weight=2, weight_decay_seconds=60)
    genesis = chain.tip
    rules = chain.rules
    assert rules.required_weight(0) == 10 and rules.required_weight(59) == 10
    assert rules.required_weight(60) == 9 and rules.required_weight(10 * 60) == 2
    assert rules.required_weight(10**9) == 2
    now = genesis.timestamp + 5 * 60 + 10  # 5 decay steps since the genesis block
    t = chain.templates_json(now)[0]
    assert t["weight"] == 5 and t["timestamp_now"] == now
    # The TRAP: a block built from data as given (timestamp_min) with the template's weight.
    from_data = parse_block(bytes.fromhex(t["data"]), has_nonce=False)
    assert from_data.timestamp == t["timestamp_min"] and from_data.weight == 5
    reason = _reject(chain, from_data, now)
    assert "weight (5.0) is smaller than the minimum weight (10.0)" in reason
    # Built right (timestamp from now, clamped), the same weight is accepted.
    assert chain.submit(mine_template(t), now).accepted
    # The score uses the weight the block carries.
    assert chain.tip.score == genesis.score + weight_to_work(5) + 2 * weight_to_work(1)


def test_timestamp_max_uses_the_future_limit_on_genesis_and_empty_when_clock_is_behind() -> None:
    chain = _chain()
    t = chain.templates_json(NOW)[0]
    assert t["timestamp_max"] == NOW + 300
    assert chain.submit(mine_template(t), NOW).accepted
    behind = chain.tip.timestamp - 400  # a clock far behind the chain: no valid timestamp
    assert chain.templates_json(behind) == []


def test_timestamp_now_is_clamped_for_weight_but_reported_raw() -> None:
    chain = _chain(block_weight=6, min_block_weight=1, weight_decay_seconds=1)
    assert chain.submit(mine_template(chain.templates_json(NOW)[0]), NOW).accepted
    t = chain.templates_json(NOW - 100)[0]  # a clock behind the tip
    assert t["timestamp_now"] == NOW - 100
    assert t["weight"] == 5  # computed for timestamp_min (1 s after the tip)


@given(st.floats(min_value=0, max_value=64, allow_nan=False))
def test_json_number_round_trips(weight: float) -> None:
    value = json_number(weight)
    assert float(json.loads(json.dumps(value))) == weight
    assert isinstance(value, int) == weight.is_integer()


def test_find_nonce_meets_weight() -> None:
    block = build_block(_chain().templates_json(NOW)[0], weight=6)
    nonce = find_nonce(block)
    assert check_pow(block.hash(nonce), 6)
    assert not check_pow(block.hash(find_bad_nonce(block)), 6)


def test_rules_validation() -> None:
    with pytest.raises(ValueError, match="min_block_weight"):
        from miningproxy.devnode.settings import DevNodeSettings

        DevNodeSettings(block_weight=2, min_block_weight=3)


def test_blocks_from_the_proxys_assembler_are_accepted_under_decay() -> None:
    """The proxy's own block assembly (miningproxy.hathor.assembly) against the dev node's rules."""
    from miningproxy.hathor.assembly import BlockAssembler, clamp_timestamp

    chain = _chain(block_weight=8, min_block_weight=2, weight_decay_seconds=60)
    for step in range(3):
        now = NOW + 10 * step
        (template,) = chain.templates(now)
        assembled = BlockAssembler(template, P2PKH).build(clamp_timestamp(template, now), b"pool")
        hasher = HeaderHasher(assembled.header)
        nonce = next(n for n in range(1 << 20) if check_pow(hasher.hash_nonce(n), template.weight))
        result = chain.submit(assembled.struct(nonce), now)
        assert result.accepted, result.reason
        assert chain.tip.block.data == b"pool" and chain.tip.block.outputs[0].script == P2PKH
