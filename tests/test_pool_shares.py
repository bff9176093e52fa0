"""Jobs and share checking: what a rig's share earns, judged exactly as the node would."""

from __future__ import annotations

import hashlib
import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hashing.pow import target_to_bytes, weight_to_target
from miningproxy.hathor.block import parse_block
from miningproxy.hathor.template import BlockTemplate
from miningproxy.pool.jobs import Generation, JobFactory
from miningproxy.pool.shares import MAX_NONCE, check_share
from tests.hathor_vectors import PRIVATENET_SCRIPT, template_dicts

TEMPLATES = [BlockTemplate.from_json(t) for t in template_dicts()]
NOW = 1795814406  # the node's timestamp_now in the transcript


def sha256d_hash(struct_header: bytes, nonce: int) -> bytes:
    inner = hashlib.sha256(struct_header + nonce.to_bytes(16, "big")).digest()
    return hashlib.sha256(inner).digest()[::-1]


def factory(template=TEMPLATES[0], *, now=NOW, seq=1):
    jobs = JobFactory("pooltag", wallclock=lambda: now)
    jobs.set_generation(Generation(seq, template, "node-a", 0.0))
    return jobs


def find_nonce(job, weight, *, start=0, want_below_block=None):
    target = weight_to_target(weight)
    for nonce in itertools.count(start):
        value = int.from_bytes(sha256d_hash(job.header, nonce), "big")
        if value < target and (
            want_below_block is None or (value < weight_to_target(job.block_weight)) == want_below_block
        ):
            return nonce
    raise AssertionError


def test_every_job_has_a_unique_header_and_id():
    jobs = factory()
    made = [jobs.new_job(PRIVATENET_SCRIPT, 4.0, now=0.0, clean=True) for _ in range(200)]
    assert len({j.header for j in made}) == 200
    assert len({j.job_id for j in made}) == 200
    assert all(len(j.job_id) == 32 and int(j.job_id, 16) >= 0 for j in made)


def test_job_block_carries_tag_job_id_and_pays_the_script():
    jobs = factory()
    job = jobs.new_job(PRIVATENET_SCRIPT, 4.0, now=0.0, clean=True)
    block = parse_block(job.assembled.struct(0))
    assert block.data == b"pooltag" + bytes.fromhex(job.job_id)
    assert block.outputs[0].script == PRIVATENET_SCRIPT
    assert block.outputs[0].value == TEMPLATES[0].reward
    assert block.parents[0] == TEMPLATES[0].parents[0]


def test_timestamp_is_the_clock_clamped_not_the_template_data():
    template = TEMPLATES[0]
    inside = factory(now=template.timestamp_min + 1000).new_job(PRIVATENET_SCRIPT, 4.0, now=0, clean=True)
    assert parse_block(inside.assembled.struct(0)).timestamp == template.timestamp_min + 1000
    late = factory(now=template.timestamp_max + 10_000).new_job(PRIVATENET_SCRIPT, 4.0, now=0, clean=True)
    assert parse_block(late.assembled.struct(0)).timestamp == template.timestamp_max
    early = factory(now=0).new_job(PRIVATENET_SCRIPT, 4.0, now=0, clean=True)
    assert parse_block(early.assembled.struct(0)).timestamp == template.timestamp_min


def test_share_weight_never_exceeds_block_weight():
    job = factory().new_job(PRIVATENET_SCRIPT, 50.0, now=0.0, clean=True)
    assert job.share_weight == TEMPLATES[0].weight
    assert factory().new_job(PRIVATENET_SCRIPT, 0.0, now=0.0, clean=True).share_weight == TEMPLATES[0].weight


def test_valid_share_accepted_and_duplicate_refused():
    jobs = factory()
    job = jobs.new_job(PRIVATENET_SCRIPT, 3.0, now=0.0, clean=True)
    nonce = find_nonce(job, 3.0, want_below_block=False)
    result = check_share(job, nonce, jobs.generation.tip)
    assert result.accepted and result.reason == "ok"
    assert result.hash == sha256d_hash(job.header, nonce)
    assert not result.is_block
    again = check_share(job, nonce, jobs.generation.tip)
    assert (again.accepted, again.reason) == (False, "duplicate")


def test_block_detected_only_when_hash_meets_block_weight():
    jobs = factory()
    job = jobs.new_job(PRIVATENET_SCRIPT, 2.0, now=0.0, clean=True)
    nonce = find_nonce(job, job.block_weight)
    result = check_share(job, nonce, jobs.generation.tip)
    assert result.accepted and result.is_block
    block = parse_block(job.assembled.struct(nonce))
    assert block.hash() == result.hash
    assert int.from_bytes(result.hash, "big") < weight_to_target(block.weight)


def test_invalid_solution_reports_hash():
    jobs = factory()
    job = jobs.new_job(PRIVATENET_SCRIPT, 12.0, now=0.0, clean=True)
    nonce = next(
        n
        for n in itertools.count()
        if int.from_bytes(sha256d_hash(job.header, n), "big") >= weight_to_target(8.0)
    )
    result = check_share(job, nonce, jobs.generation.tip)
    assert (result.accepted, result.reason) == (False, "invalid-solution")
    assert result.hash == sha256d_hash(job.header, nonce)


def test_share_for_an_old_tip_is_stale():
    jobs = factory()
    job = jobs.new_job(PRIVATENET_SCRIPT, 1.0, now=0.0, clean=True)
    nonce = find_nonce(job, 1.0)
    other_tip = next(t for t in TEMPLATES if t.parents[0] != TEMPLATES[0].parents[0])
    jobs.set_generation(Generation(2, other_tip, "node-a", 1.0))
    assert check_share(job, nonce, jobs.generation.tip).reason == "stale"


def test_job_keeps_the_weight_it_was_sent_with():
    jobs = factory()
    easy = jobs.new_job(PRIVATENET_SCRIPT, 1.0, now=0.0, clean=True)
    jobs.new_job(PRIVATENET_SCRIPT, 7.0, now=1.0, clean=False)  # a retarget for later jobs
    nonce = next(
        n
        for n in itertools.count()
        if weight_to_target(7.0)
        <= int.from_bytes(sha256d_hash(easy.header, n), "big")
        < weight_to_target(1.0)
    )
    assert check_share(easy, nonce, jobs.generation.tip).accepted


@given(st.integers())
def test_any_integer_nonce_gets_a_verdict(nonce):
    jobs = factory()
    job = jobs.new_job(PRIVATENET_SCRIPT, 8.0, now=0.0, clean=True)
    result = check_share(job, nonce, jobs.generation.tip)
    if not 0 <= nonce <= MAX_NONCE:
        assert result.reason == "bad-nonce"
    else:
        expected = int.from_bytes(sha256d_hash(job.header, nonce), "big") < weight_to_target(8.0)
        assert result.accepted == expected


def test_no_template_yet():
    with pytest.raises(LookupError):
        JobFactory("t").new_job(PRIVATENET_SCRIPT, 1.0, now=0.0, clean=True)


def test_a_job_pays_the_script_given_or_the_factorys_default_never_nobody():
    template = TEMPLATES[0]
    pooled = JobFactory("t", payout_script=OTHER_SCRIPT, wallclock=lambda: NOW)
    pooled.set_generation(Generation(1, template, "node-a", 0.0))
    for script, pays in ((None, OTHER_SCRIPT), (PRIVATENET_SCRIPT, PRIVATENET_SCRIPT)):
        job = pooled.new_job(script, 4.0, 0.0, True)
        assert parse_block(job.assembled.struct(0)).outputs[0].script == pays == job.payout_script
    bare = factory()  # no default payout script
    with pytest.raises(ValueError, match="payout script"):
        bare.new_job(None, 4.0, 0.0, True)


OTHER_SCRIPT = bytes.fromhex("76a914") + bytes(range(20)) + bytes.fromhex("88ac")


@given(
    st.lists(
        st.tuples(
            # the wall clock at this job, from the first template's timestamp_min (the others
            # start 1-3 s later): ticks within and across seconds and template ranges, jumps out
            # of the ranges either way
            st.one_of(st.integers(0, 6000).map(lambda ms: ms / 1000), st.floats(-1e5, 1e5)),
            st.booleans(),  # pay the other script (solo mode mixes scripts in one fan-out)
            st.sampled_from([False, False, False, True]),  # a new template first
            # the share weight asked for: vardiff's usual, above the block's, none, not a number
            st.sampled_from([4.0, 4.0, 2.5, 0.0, 1e9, math.nan]),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_each_job_is_the_block_its_clock_and_script_make(steps):
    """The factory keeps the block timestamp for the clock's current second and each payout
    script's graph head; whatever the clock does (ticks, jumps, goes back) and however scripts and
    templates interleave, every job is exactly the block its own clock reading makes, and its
    header is that block's mining header. Jobs made in one second share their terms: so does
    every job here, whatever weight it asked for, carry its own weight (capped at the block's)."""
    clock = [0.0]
    jobs = JobFactory("pooltag", wallclock=lambda: clock[0])
    seq = 1
    jobs.set_generation(Generation(seq, TEMPLATES[0], "node-a", 0.0))
    for offset, other, new_template, weight in steps:
        if new_template:
            seq += 1
            jobs.set_generation(Generation(seq, TEMPLATES[seq % len(TEMPLATES)], "node-a", 0.0))
        template = jobs.generation.template
        clock[0] = wall = TEMPLATES[0].timestamp_min + offset
        script = OTHER_SCRIPT if other else PRIVATENET_SCRIPT
        job = jobs.new_job(script, weight, now=0.0, clean=True)
        share_weight = weight if 0 < weight < template.weight else template.weight
        assert job.share_weight == share_weight and job.generation is jobs.generation
        assert job.share_target == target_to_bytes(weight_to_target(share_weight))
        struct = job.assembled.struct(0)
        block = parse_block(struct)
        assert (
            block.timestamp
            == job.timestamp
            == min(max(math.floor(wall), template.timestamp_min), template.timestamp_max)
        )
        assert block.outputs[0].script == script
        assert block.parents[0] == template.parents[0]
        assert block.data == b"pooltag" + bytes.fromhex(job.job_id)
        assert (
            job.header
            == hashlib.sha256(block.funds_struct()).digest() + hashlib.sha256(block.graph_struct()).digest()
        )
        assert block.hash(7) == sha256d_hash(job.header, 7)


def test_a_tag_that_leaves_no_room_for_the_job_id_is_refused():
    with pytest.raises(ValueError, match="pool tag"):
        JobFactory("x" * 90)


def test_a_solo_pools_refresh_reuses_every_rigs_assembler_up_to_thousands_of_rigs(monkeypatch):
    # Solo mode: an assembler per rig's payout script per template. A refresh (the same template,
    # a new second) must find them all again, not make them anew for a pool of 10,000 rigs.
    from miningproxy.hathor.assembly import BlockAssembler

    made = []
    for_script = BlockAssembler.for_script
    monkeypatch.setattr(BlockAssembler, "for_script", lambda self, s: made.append(s) or for_script(self, s))
    clock = [float(NOW)]
    jobs = JobFactory("pooltag", wallclock=lambda: clock[0])
    jobs.set_generation(Generation(1, TEMPLATES[0], "node-a", 0.0))
    scripts = [bytes.fromhex("76a914") + i.to_bytes(20, "big") + bytes.fromhex("88ac") for i in range(10_000)]
    for script in scripts:
        jobs.new_job(script, 4.0, now=0.0, clean=True)
    assert len(made) == len(scripts) - 1  # the first made from the template
    made.clear()
    clock[0] += 1.0  # a refresh: new terms, the same assemblers
    for script in scripts:
        assert (
            parse_block(jobs.new_job(script, 4.0, now=0.0, clean=False).assembled.struct(0)).outputs[0].script
            == script
        )
    assert made == []
