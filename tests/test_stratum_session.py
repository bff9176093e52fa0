"""The sans-IO Stratum session: every wire rule the rigs depend on, without sockets."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hashing.pow import target_to_bytes, weight_to_target
from miningproxy.stratum import messages as m
from miningproxy.stratum.framing import LineTooLong, NotUtf8
from miningproxy.stratum.session import (
    EXPIRED_HISTORY,
    LimitHit,
    Penalty,
    ShareRejected,
    WeightUsed,
    parse_nonce,
)
from miningproxy.stratum.settings import VardiffSettings
from tests.hathor_vectors import PRIVATENET_ADDRESS, PRIVATENET_SCRIPT
from tests.test_stratum_support import (
    MAINNET_ADDRESS,
    OTHER_ADDRESS,
    OTHER_TIP,
    PRIVATENET,
    FakePool,
    Rig,
    jobs,
    miss,
    solve,
)


def subscribed_rig(**kw) -> tuple[Rig, dict]:
    rig = Rig(**kw)
    rig.pool.set_template()
    lines = rig.subscribe()
    return rig, jobs(lines)[0]


# --- subscribe, ids, results --------------------------------------------------------------------


def test_reply_to_subscribe_is_the_very_next_line_then_the_job_then_get_version():
    rig = Rig()
    rig.pool.set_template()
    lines = rig.call("subscribe", {"address": PRIVATENET_ADDRESS}, msgid="61e39f788ae04442b97d52c6b814ebab")
    assert lines[0] == {"result": "ok", "error": None, "id": "61e39f788ae04442b97d52c6b814ebab"}
    assert lines[1]["method"] == "job" and lines[1]["id"] == "0"
    assert lines[2] == {"method": "client.get_version", "params": [], "id": 1}
    assert len(lines) == 3


@pytest.mark.parametrize("msgid", ["61e39f788ae04442b97d52c6b814ebab", "7", 7, 0, None, 2.5])
def test_reply_ids_echo_the_request_id_with_its_json_type(msgid):
    rig = Rig()
    rig.pool.set_template()
    for method, params in [
        ("subscribe", None),
        ("mining.authorize", ["x", "y"]),
        ("mining.ping", []),
        ("mining.extranonce.subscribe", []),
        ("no.such.method", []),
    ]:
        reply = rig.call(method, params, msgid=msgid)[0]
        assert "id" in reply and reply["id"] == msgid and type(reply["id"]) is type(msgid)
    raw = json.dumps(msgid)
    assert rig.raw.decode().endswith(f'"id":{raw}}}\n')


def test_success_results_are_ok():
    rig, job = subscribed_rig()
    assert rig.call("mining.authorize", [PRIVATENET_ADDRESS + ".rig1", "x"])[0]["result"] == "ok"
    reply = rig.submit(job["job_id"], solve(bytes.fromhex(job["data"]), job["weight"]))[0]
    assert reply == {"result": "ok", "error": None, "id": 3}


def test_subscribe_accepts_object_null_and_empty_list_params_and_login():
    for method, params in [
        ("subscribe", {}),
        ("subscribe", None),
        ("mining.subscribe", []),
        ("login", {"address": None}),
        ("mining.subscribe", ["cgminer/4.11", None]),
    ]:
        rig = Rig()
        rig.pool.set_template()
        lines = rig.call(method, params)
        assert lines[0]["result"] == "ok" and lines[1]["method"] == "job", (method, params)
        assert rig.session.close_reason is None


# --- jobs ---------------------------------------------------------------------------------------


def test_job_fields_as_the_node_sends_them():
    rig, job = subscribed_rig()
    assert set(job) == {"data", "job_id", "nonce_size", "weight", "clean", "parent_hash"}
    current = rig.session.current_job
    assert job["data"] == current.header.hex() and len(job["data"]) == 128
    assert re.fullmatch(r"[0-9a-f]{32}", job["job_id"]) and job["job_id"] == current.job_id
    assert job["nonce_size"] == 16 and type(job["nonce_size"]) is int
    assert type(job["weight"]) is float and job["weight"] == 4.0
    assert job["clean"] is True
    assert job["parent_hash"] == rig.pool.generation.tip.hex()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1.0, 2.5, 4.0, 7.75]), st.booleans()), min_size=1, max_size=8))
def test_every_job_line_is_byte_for_byte_the_generic_encoding(changes):
    """The session writes job lines from cached parts (one set per terms and clean flag): each is
    exactly what the generic encoder makes of the same request, whatever weights and flags come."""
    rig = Rig(vardiff=VardiffSettings(min_weight=1, max_weight=64, initial_weight=4))
    rig.pool.set_template()
    rig.subscribe()
    rig.read()
    for t, (weight, clean) in enumerate(changes, start=1):
        rig.session.vardiff._set(weight, float(t), 0.0)  # a retarget, as if due
        rig.session.new_work(clean, float(t))
        raw = rig.session.data_to_send()
        (job,) = [json.loads(line) for line in raw.splitlines()]
        assert job["params"]["weight"] == weight and job["params"]["clean"] is clean
        assert raw == m.encode(m.request(job["id"], "job", job["params"]))


def test_weight_is_always_written_as_a_json_float():
    rig = Rig(vardiff=VardiffSettings(min_weight=1, max_weight=64, initial_weight=8))  # an int on purpose
    rig.pool.set_template()  # block weight 8
    rig.subscribe()
    text = rig.raw.decode()
    assert '"weight":8.0' in text and '"weight":8,' not in text


def test_jobs_are_numbered_with_string_ids_like_the_node():
    rig, first = subscribed_rig(get_version=False)
    ids = []
    for t in (1.0, 2.0):
        rig.session.new_work(False, t)
        ids += [line["id"] for line in rig.read() if line.get("method") == "job"]
    assert ids == ["1", "2"]


def test_new_work_is_a_new_job_with_its_clean_flag():
    rig, first = subscribed_rig()
    rig.session.new_work(False, 1.0)
    refresh = jobs(rig.read())[0]
    rig.pool.set_template(OTHER_TIP)
    rig.session.new_work(True, 2.0)
    new_tip = jobs(rig.read())[0]
    assert refresh["clean"] is False and new_tip["clean"] is True
    assert len({first["job_id"], refresh["job_id"], new_tip["job_id"]}) == 3
    assert new_tip["parent_hash"] == OTHER_TIP.parents[0].hex()


def test_a_job_goes_out_at_least_every_job_interval_even_when_nothing_changed():
    steady = VardiffSettings(min_weight=1, max_weight=64, initial_weight=4, ramp_time=0, idle_after=3600)
    rig, first = subscribed_rig(job_interval=30.0, vardiff=steady)
    assert rig.session.next_deadline() == 30.0
    assert rig.tick(29.0) == []
    job = jobs(rig.tick(30.0))
    assert len(job) == 1 and job[0]["job_id"] != first["job_id"] and job[0]["clean"] is False
    assert rig.session.next_deadline() <= 60.0
    assert len(jobs(rig.tick(60.0))) == 1


def test_an_unsent_job_is_replaced_by_a_newer_one():
    rig, _ = subscribed_rig()
    rig.session.new_work(False, 1.0)
    rig.session.new_work(True, 1.0)
    rig.session.new_work(False, 1.0)
    sent = jobs(rig.read())
    assert len(sent) == 1 and sent[0]["job_id"] == rig.session.current_job.job_id


@given(st.lists(st.sampled_from(["job", "clean job", "ping", "take"]), max_size=30))
def test_the_outbox_keeps_every_reply_in_order_and_only_the_newest_unsent_job(ops: list[str]) -> None:
    # Replies are never dropped or reordered; of the jobs queued since the last take, only the
    # newest goes out, where it was queued among the replies; the rig's delivery bookkeeping
    # (last_job_taken) moves only with a take that carries a job.
    rig, _ = subscribed_rig()
    session = rig.session
    expected: list[object] = []  # what the next take must hold: ping ids and "job"
    for op in ops:
        if op == "take":
            queued = session.jobs_queued
            taken_before = session.last_job_taken
            data = session.data_to_send()
            lines = [json.loads(line) for line in data.splitlines()]
            got = ["job" if line.get("method") == "job" else line["id"] for line in lines]
            assert got == expected
            if "job" in expected:
                assert jobs(lines)[0]["job_id"] == session.current_job.job_id
                assert session.last_job_taken == queued
            else:
                assert session.last_job_taken == taken_before
            assert not session.has_output and session.data_to_send() == b""
            expected = []
        elif op == "ping":
            msgid = len(expected) + 1000 * len(ops)
            session.receive_line(json.dumps({"id": msgid, "method": "mining.ping"}), 1.0)
            expected.append(msgid)
        else:
            assert session.new_work(op == "clean job", 1.0)
            expected = [entry for entry in expected if entry != "job"] + ["job"]
        assert session.has_output == bool(expected)
    assert session.close_reason is None


def test_a_new_job_is_handed_over_at_once_only_when_nothing_is_queued() -> None:
    rig, first = subscribed_rig()
    session = rig.session
    line = session.take_new_job(True, 2.0)
    assert line is not None and not session.has_output  # handed over, not queued
    job = json.loads(line)["params"]
    assert job["clean"] is True and job["job_id"] == session.current_job.job_id != first["job_id"]
    assert session.last_job_taken == session.jobs_queued  # counted as taken (delivery notes)
    nonce = solve(bytes.fromhex(job["data"]), job["weight"])
    assert rig.submit(job["job_id"], nonce)[0]["result"] == "ok"  # a job like any other
    # Something queued (a reply): no job is made here; new_work queues one behind it.
    session.receive_line(json.dumps({"id": 9, "method": "mining.ping"}), 3.0)
    queued = session.jobs_queued
    assert session.take_new_job(False, 3.0) is None and session.jobs_queued == queued
    assert session.new_work(False, 3.0)
    lines = rig.read()
    assert lines[0]["id"] == 9 and jobs(lines)[0]["job_id"] == session.current_job.job_id
    # An "ok" taken but still waiting for the pool's record: a job handed over now would reach
    # the rig before it, so none is, until the transport has taken the wait over.
    job = jobs(lines)[0]
    assert rig.submit(job["job_id"], solve(bytes.fromhex(job["data"]), job["weight"]))[0]["result"] == "ok"
    assert session.unsynced_accepts and session.take_new_job(False, 4.0) is None
    assert session.take_unsynced_accepts()
    assert session.take_new_job(False, 4.0) is not None


@pytest.mark.parametrize("state", ["not subscribed", "awaiting a solo address", "closing", "shutting down"])
def test_no_job_is_handed_over_to_a_rig_that_is_not_mining(state) -> None:
    """take_new_job and new_work agree on who gets jobs (a rig that ``mining`` says does)."""
    if state == "awaiting a solo address":
        rig = Rig(mode="solo")
        rig.pool.set_template()
        rig.call("subscribe", {})  # subscribed, but no payout address yet
    else:
        rig, _ = subscribed_rig() if state != "not subscribed" else (Rig(), None)
        rig.pool.set_template()
        if state == "closing":
            rig.session.close("test")
        elif state == "shutting down":
            rig.session.begin_shutdown(0.5)
    rig.read()
    session = rig.session
    queued = session.jobs_queued
    assert not session.mining
    assert session.take_new_job(True, 1.0) is None and session.jobs_queued == queued
    assert not session.new_work(True, 1.0) and session.jobs_queued == queued and not session.has_output


# --- shares -------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["{:032x}", "0x{:032x}", "0x{:x}", "{:x}", "0X{:032X}"])
def test_nonce_is_big_endian_hex_with_or_without_0x(form):
    rig, job = subscribed_rig()
    nonce = solve(bytes.fromhex(job["data"]), job["weight"])
    assert rig.submit(job["job_id"], form.format(nonce))[0]["result"] == "ok"
    assert rig.pool.shares[-1][2] == nonce


def test_the_node_clients_submit_form_with_aux_pow_and_string_ids():
    rig, job = subscribed_rig()
    nonce = solve(bytes.fromhex(job["data"]), job["weight"])
    reply = rig.call("submit", {"job_id": job["job_id"], "nonce": hex(nonce), "aux_pow": ""}, msgid="3")
    assert reply == [{"result": "ok", "error": None, "id": "3"}]


def test_a_nonce_that_overflows_nonce_size_is_rejected_and_the_rig_stays():
    rig, job = subscribed_rig()
    reply = rig.submit(job["job_id"], "01" + "00" * 16)[0]
    assert reply["error"]["code"] == 30 and reply["data"]["nonce_size"] == 16
    assert rig.session.close_reason is None
    assert rig.pool.shares[-1][3].reason == "bad-nonce"


@pytest.mark.parametrize("nonce", ["xyz", "", "0x", "12 34", "-1", None, True, [1], "1_0"])
def test_a_nonce_that_is_not_hex_is_invalid_params_and_closes(nonce):
    rig, job = subscribed_rig()
    reply = rig.call("submit", {"job_id": job["job_id"], "nonce": nonce})[0]
    assert reply["error"]["code"] == -32602
    assert rig.session.close_reason is not None


def test_parse_nonce():
    assert parse_nonce("0x34") == 0x34 == parse_nonce("34") == parse_nonce(" 0X34 ") == parse_nonce(52)
    assert parse_nonce("f" * 33) == 16**33 - 1  # overflow is the share check's business
    assert parse_nonce("0x") is None and parse_nonce("g") is None and parse_nonce(-1) is None


def test_invalid_solution_is_30_with_hash_and_target():
    rig, job = subscribed_rig()
    nonce = miss(bytes.fromhex(job["data"]), job["weight"])
    reply = rig.submit(job["job_id"], nonce)[0]
    assert reply["error"] == {"code": 30, "message": "Invalid solution"}
    assert reply["data"]["hash"] == rig.pool.shares[-1][3].hash.hex()
    assert reply["data"]["target"] == target_to_bytes(weight_to_target(job["weight"])).hex()
    assert set(reply) == {"error", "data", "id"}


def test_duplicate_share_is_34():
    rig, job = subscribed_rig()
    nonce = solve(bytes.fromhex(job["data"]), job["weight"])
    assert rig.submit(job["job_id"], nonce)[0]["result"] == "ok"
    reply = rig.submit(job["job_id"], f"0x{nonce:x}")[0]
    assert reply["error"] == {"code": 34, "message": "Solution already submitted"}


def test_share_for_a_job_of_an_old_tip_is_31_stale():
    rig, old = subscribed_rig()
    rig.pool.set_template(OTHER_TIP)
    rig.session.new_work(True, 1.0)
    current = jobs(rig.read())[0]
    reply = rig.submit(old["job_id"], solve(bytes.fromhex(old["data"]), old["weight"]))[0]
    assert reply["error"] == {"code": 31, "message": "Stale job submitted"}
    assert reply["data"] == {"current_job": current["job_id"], "job_id": old["job_id"]}


def test_share_for_a_job_evicted_from_the_history_is_31_not_32():
    rig, old = subscribed_rig(job_history=3)
    for t in range(5):
        rig.session.new_work(False, float(t))
        rig.read()
    reply = rig.submit(old["job_id"], solve(bytes.fromhex(old["data"]), old["weight"]))[0]
    assert reply["error"]["code"] == 31
    assert ShareRejected("stale") in rig.session.take_events()


@settings(max_examples=60, deadline=None)
@given(
    history=st.integers(1, 10),
    count=st.integers(1, 90),
    picks=st.lists(st.integers(0, 89), max_size=6),
)
def test_a_share_names_a_held_job_an_expired_one_or_none(history, count, picks):
    """Of the jobs a rig was sent, the last ``job_history`` are checked (here: a wrong nonce, 30),
    the EXPIRED_HISTORY before them are 31 stale, and anything older is 32 not found."""
    rig, first = subscribed_rig(job_history=history, get_version=False)
    sent = [first]
    for t in range(1, count):
        rig.session.new_work(False, float(t))
        sent += jobs(rig.read())
    edges = {0, history - 1, history, history + EXPIRED_HISTORY - 1, history + EXPIRED_HISTORY}
    ages = sorted({pick % len(sent) for pick in picks} | {age for age in edges if age < len(sent)})
    for age in ages:  # 0: the newest job
        job = sent[-1 - age]
        reply = rig.submit(job["job_id"], miss(bytes.fromhex(job["data"]), job["weight"]))[0]
        expected = 30 if age < history else 31 if age < history + EXPIRED_HISTORY else 32
        assert reply["error"]["code"] == expected, (age, history)
        assert rig.session.close_reason is None


def test_unknown_job_is_32_and_a_malformed_job_id_closes():
    rig, job = subscribed_rig()
    reply = rig.submit("ab" * 16, 0)[0]
    assert reply["error"] == {"code": 32, "message": "Job not found"}
    assert reply["data"] == {"current_job": job["job_id"], "job_id": "ab" * 16}
    assert rig.session.close_reason is None
    reply = rig.submit("not-a-job", 0)[0]
    assert reply["error"]["code"] == -32602 and rig.session.close_reason is not None


def test_missing_submit_params_is_invalid_params_and_closes():
    rig, _ = subscribed_rig()
    reply = rig.call("submit", {"job_id": "ab" * 16})[0]
    assert reply["error"]["code"] == -32602 and reply["data"]["required"] == ["job_id", "nonce"]
    assert rig.session.close_reason is not None


def test_positional_submit_params():
    rig, job = subscribed_rig()
    nonce = solve(bytes.fromhex(job["data"]), job["weight"])
    assert rig.call("mining.submit", ["rig1", job["job_id"], f"{nonce:x}"])[0]["result"] == "ok"


# --- node syncing, errors that close --------------------------------------------------------------


def test_before_any_template_subscribe_and_submit_get_10_node_syncing():
    rig = Rig()
    assert rig.subscribe(PRIVATENET_ADDRESS) == [
        {"error": {"code": 10, "message": "Node syncing"}, "data": None, "id": 1}
    ]
    assert rig.submit("ab" * 16, 0)[0]["error"]["code"] == 10
    assert rig.session.close_reason is None and not rig.session.subscribed
    rig.pool.set_template()
    lines = rig.subscribe()
    assert lines[0]["result"] == "ok" and lines[1]["method"] == "job"


def test_unknown_method_is_32601_with_the_supported_methods():
    rig, _ = subscribed_rig()
    reply = rig.call("mining.get_transactions", [], msgid=9)[0]
    assert reply["error"] == {"code": -32601, "message": "Method not found"} and reply["id"] == 9
    supported = reply["data"]["supported_methods"]
    assert reply["data"]["method"] == "mining.get_transactions"
    for method in (
        "subscribe",
        "mining.subscribe",
        "login",
        "authorize",
        "mining.authorize",
        "submit",
        "mining.submit",
        "configure",
        "mining.configure",
        "mining.multi_version",
        "mining.extranonce.subscribe",
        "mining.ping",
    ):
        assert method in supported
    assert rig.session.close_reason is not None  # -32601 <= -32600


@pytest.mark.parametrize(
    "text, code",
    [
        ("{not json", -32700),
        ("[1, 2]", -32600),
        ('{"id": 1}', -32600),
        ('"x"', -32600),
        ('{"id": 1, "method": 5}', -32600),
        ("[" * 5000 + "]" * 5000, -32700),
    ],
)
def test_jsonrpc_errors_close_the_connection(text, code):
    rig, _ = subscribed_rig()
    replies = rig.send(text)
    assert replies[-1]["error"]["code"] == code
    assert rig.session.close_reason is not None
    assert any(isinstance(e, Penalty) for e in rig.session.take_events())
    assert rig.send('{"id": 2, "method": "mining.ping"}') == []  # nothing is processed after that


def test_oversized_line_and_invalid_utf8_are_errors_then_close():
    rig, _ = subscribed_rig()
    rig.session.receive(LineTooLong(20000), 0.0)
    reply = rig.read()[0]
    assert reply["error"]["code"] == -32600 and "16384" in reply["data"]["message"]
    assert rig.session.close_reason is not None
    assert LimitHit("max_line", "line of more than 16384 bytes") in rig.session.take_events()
    rig, _ = subscribed_rig()
    rig.session.receive(NotUtf8(b"\xff\xfe"), 0.0)
    assert rig.read()[0]["error"]["code"] == -32700 and rig.session.close_reason is not None


# --- the other methods --------------------------------------------------------------------------


def test_configure_extranonce_multi_version_ping_and_suggest_difficulty():
    rig, _ = subscribed_rig()
    params = [["version-rolling", "minimum-difficulty"], {"version-rolling.mask": "ffffffff"}]
    assert rig.call("mining.configure", params)[0]["result"] == {
        "version-rolling": False,
        "minimum-difficulty": False,
    }
    assert rig.call("configure", None)[0]["result"] == {}
    assert rig.call("mining.extranonce.subscribe", [])[0]["result"] is True
    assert rig.call("mining.multi_version", [1])[0]["result"] is True
    assert rig.call("mining.ping", [])[0]["result"] == "pong"
    assert rig.call("mining.suggest_difficulty", [512])[0]["result"] is True
    assert rig.session.close_reason is None


def test_client_get_version_answer_and_round_trip_time_are_recorded():
    rig = Rig()
    rig.pool.set_template()
    ask = rig.subscribe(now=10.0)[-1]
    assert ask["method"] == "client.get_version"
    assert rig.send({"id": ask["id"], "result": "cpuminer/2.5.1", "error": None}, now=10.25) == []
    assert rig.session.client_version == "cpuminer/2.5.1" and rig.session.version_rtt == pytest.approx(0.25)
    assert rig.session.status(11.0)["version"] == "cpuminer/2.5.1"


# --- addresses and payout -----------------------------------------------------------------------


def test_pool_mode_pays_the_pool_and_keeps_address_and_worker_for_accounting():
    pool = FakePool(address=OTHER_ADDRESS)
    rig = Rig(pool)
    pool.set_template()
    rig.subscribe(PRIVATENET_ADDRESS)
    rig.call("mining.authorize", [PRIVATENET_ADDRESS + ".rig7", "x"])
    assert rig.session.current_job.payout_script == pool.payout_script
    assert rig.session.miner.address == PRIVATENET_ADDRESS and rig.session.miner.worker == "rig7"


def test_pool_mode_authorize_with_any_user_names_the_worker():
    rig, _ = subscribed_rig()
    assert rig.call("mining.authorize", ["alice.rig 2", "x"])[0]["result"] == "ok"
    assert rig.session.miner.address == "" and rig.session.miner.worker == "alice.rig_2"


def test_solo_mode_pays_the_rigs_own_address_from_subscribe():
    pool = FakePool(address=OTHER_ADDRESS)
    rig = Rig(pool, mode="solo")
    pool.set_template()
    lines = rig.subscribe(PRIVATENET_ADDRESS)
    assert lines[0]["result"] == "ok" and lines[1]["method"] == "job"
    assert rig.session.current_job.payout_script == PRIVATENET_SCRIPT


def test_solo_rigs_at_one_weight_get_lines_of_their_own_blocks_that_follow_the_tip():
    # Each solo rig's job is on terms of its own (its payout script), while the line around its
    # header (weight, clean, tip) is shared: every line must still be its rig's block and the
    # current tip, with "clean" as sent.
    from hashlib import sha256

    from miningproxy.hathor.addresses import decode_address
    from miningproxy.hathor.block import parse_block

    pool = FakePool(address=OTHER_ADDRESS)
    rigs = [Rig(pool, mode="solo") for _ in range(2)]
    for template, clean in ((None, True), (OTHER_TIP, True), (OTHER_TIP, False)):
        if template is not None:
            pool.set_template(template)
        else:
            pool.set_template()
        for rig, address in zip(rigs, (PRIVATENET_ADDRESS, OTHER_ADDRESS), strict=True):
            if rig.session.current_job is None:
                lines = rig.subscribe(address)
            else:
                assert rig.session.new_work(clean, rig.now)
                lines = rig.read()
            (line,) = [line for line in lines if line.get("method") == "job"]
            job = rig.session.current_job
            block = parse_block(job.assembled.struct(0))
            funds, graph = block.funds_struct(), block.graph_struct()
            assert line["params"]["data"] == (sha256(funds).digest() + sha256(graph).digest()).hex()
            assert block.outputs[0].script == decode_address(address).script
            assert line["params"]["parent_hash"] == pool.jobs.generation.template.parents[0].hex()
            assert line["params"]["clean"] is clean
            assert line["params"]["weight"] == job.share_weight


def test_solo_mode_takes_the_address_from_authorize():
    rig = Rig(mode="solo", authorize_timeout=5.0)
    rig.pool.set_template()
    lines = rig.subscribe()
    assert lines == [{"result": "ok", "error": None, "id": 1}]  # no job before an address
    lines = rig.call("mining.authorize", [OTHER_ADDRESS + ".rig1", "x"], now=1.0)
    assert lines[0]["result"] == "ok" and lines[1]["method"] == "job" and lines[1]["params"]["clean"] is True
    assert rig.session.current_job.payout_script != rig.pool.payout_script
    assert rig.session.miner.worker == "rig1"


def test_solo_mode_without_an_address_gets_22_and_is_closed():
    rig = Rig(mode="solo", authorize_timeout=5.0)
    rig.pool.set_template()
    rig.subscribe()
    assert rig.session.next_deadline() == 5.0
    lines = rig.tick(5.0)
    assert lines[0]["error"]["code"] == 22 and "id" not in lines[0]  # unprompted, like the node
    assert rig.session.close_reason is not None
    rig = Rig(mode="solo")
    rig.pool.set_template()
    rig.subscribe()
    assert rig.call("mining.authorize", ["worker1", "x"])[0]["error"]["code"] == 22
    assert rig.session.close_reason is not None


@pytest.mark.parametrize("mode", ["pool", "solo"])
@pytest.mark.parametrize(
    "address", ["WY1URKUnqCTyiixW1Dw29vmeG99hNN4EW7", MAINNET_ADDRESS, "not-an-address", 42]
)
def test_an_invalid_or_foreign_address_is_22_then_close(mode, address):
    rig = Rig(mode=mode)
    rig.pool.set_template()
    reply = rig.call("subscribe", {"address": address})
    assert reply == [
        {
            "error": {"code": 22, "message": "Address to send mined funds is invalid"},
            "data": reply[0]["data"],
            "id": 1,
        }
    ]
    assert rig.session.close_reason is not None


def test_a_foreign_network_address_in_authorize_is_22_in_pool_mode_too():
    rig, _ = subscribed_rig()
    reply = rig.call("mining.authorize", [MAINNET_ADDRESS + ".w", "x"])[0]
    assert reply["error"]["code"] == 22 and "mainnet" in reply["data"]["message"]
    assert rig.session.close_reason is not None


# --- vardiff through the session ----------------------------------------------------------------


def test_retarget_changes_the_next_job_only_and_old_jobs_keep_their_weight():
    vardiff = VardiffSettings(min_weight=1, max_weight=7, initial_weight=2, ramp_shares=2)
    rig = Rig(vardiff=vardiff, get_version=False)
    rig.pool.set_template()
    first = jobs(rig.subscribe())[0]
    header = bytes.fromhex(first["data"])
    n1 = solve(header, 2.0)
    assert rig.submit(first["job_id"], n1, now=0.001) == [{"result": "ok", "error": None, "id": 2}]
    n2 = solve(header, 2.0, n1 + 1)
    lines = rig.submit(first["job_id"], n2, now=0.002)
    assert lines[0]["result"] == "ok"  # the reply first, then the retargeted job
    retarget = jobs(lines)[0]
    assert retarget["weight"] == 7.0 and retarget["clean"] is False
    assert WeightUsed(7.0) in rig.session.take_events()
    # a share of the first job at its own weight 2 (but not 7) is still fine
    hasher_nonce = n2
    while True:
        hasher_nonce = solve(header, 2.0, hasher_nonce + 1)
        if miss(header, 7.0, hasher_nonce) == hasher_nonce:
            break
    assert rig.submit(first["job_id"], hasher_nonce, now=0.003)[0]["result"] == "ok"
    # and a share of the new job must meet 7
    new_header = bytes.fromhex(retarget["data"])
    low = next(n for n in range(10_000) if solve(new_header, 2.0, n) == n and miss(new_header, 7.0, n) == n)
    assert rig.submit(retarget["job_id"], low, now=0.004)[0]["error"]["code"] == 30


def test_an_idle_rig_is_lowered_not_dropped():
    vardiff = VardiffSettings(min_weight=1, max_weight=64, initial_weight=20, ramp_time=0, idle_after=30)
    rig = Rig(vardiff=vardiff, get_version=False)
    rig.pool.set_template()  # block weight 8: jobs are capped at 8
    rig.subscribe()
    weights = []
    t = 0.0
    while t < 300:
        t = rig.session.next_deadline()
        weights += [job["weight"] for job in jobs(rig.tick(t))]
    assert weights[-1] < 8.0 and weights == sorted(weights, reverse=True)
    assert rig.session.close_reason is None


def test_accepted_work_feeds_the_rigs_hashrate():
    rig, job = subscribed_rig()
    header = bytes.fromhex(job["data"])
    nonce = -1
    for i in range(5):
        nonce = solve(header, job["weight"], nonce + 1)
        rig.submit(job["job_id"], nonce, now=float(i))
    assert rig.session.accepted == 5
    assert rig.session.hashrate(10.0) == pytest.approx(5 * 2**4 / 10.0)


# --- output bounds and shutdown -------------------------------------------------------------------


def test_a_rig_that_lets_replies_pile_up_is_closed_as_a_slow_consumer():
    rig, _ = subscribed_rig(max_outbox=4096)
    for i in range(200):
        rig.session.receive_line(json.dumps({"id": i, "method": "mining.ping", "params": []}), 0.0)
    assert rig.session.close_reason == "slow consumer"
    assert any(isinstance(e, LimitHit) and e.limit == "max_outbox" for e in rig.session.take_events())
    assert rig.session.data_to_send() == b""


def test_subscribe_timeout_closes_a_silent_connection():
    rig = Rig(subscribe_timeout=30.0)
    assert rig.session.next_deadline() == 30.0
    rig.tick(30.0)
    assert rig.session.close_reason == "subscribe timeout"
    assert any(isinstance(e, LimitHit) and e.limit == "subscribe_timeout" for e in rig.session.take_events())


def test_shutdown_sends_show_message_and_reconnect_then_refuses_subscribe_with_40():
    rig, job = subscribed_rig()
    rig.session.begin_shutdown(5.0)
    lines = rig.read()
    assert [line["method"] for line in lines] == ["client.show_message", "client.reconnect"]
    assert isinstance(lines[0]["params"][0], str) and lines[1]["params"] == []
    assert rig.subscribe()[0]["error"] == {"code": 40, "message": "Shutting down"}
    # submits already on the wire are still answered
    assert rig.submit(job["job_id"], solve(bytes.fromhex(job["data"]), job["weight"]))[0]["result"] == "ok"
    rig.session.new_work(True, 6.0)
    assert rig.read() == []  # no new jobs


def test_odd_ids_and_constants_never_break_the_session():
    rig, _ = subscribed_rig()
    assert rig.send('{"id": 1e999, "method": "mining.ping", "params": []}') == [
        {"result": "pong", "error": None, "id": None}
    ]
    assert rig.send('{"id": NaN, "method": "mining.ping"}')[0]["error"]["code"] == -32700


def test_an_empty_address_is_no_address_and_a_login_object_names_the_rig():
    rig = Rig()
    rig.pool.set_template()
    lines = rig.call("subscribe", {"address": ""})
    assert lines[0]["result"] == "ok" and lines[1]["method"] == "job"
    rig = Rig(mode="solo")
    rig.pool.set_template()
    lines = rig.call("login", {"login": PRIVATENET_ADDRESS + ".rig9", "pass": "x", "agent": "xmrig/6"})
    assert lines[0]["result"] == "ok" and lines[1]["method"] == "job"
    assert rig.session.miner.worker == "rig9" and rig.session.user_agent == "xmrig/6"


def test_until_the_network_is_known_rigs_are_told_the_node_is_syncing():
    rig = Rig()
    rig.pool.set_template()
    rig.session.network = None
    assert rig.subscribe(PRIVATENET_ADDRESS)[0]["error"]["code"] == 10
    assert rig.call("mining.authorize", [PRIVATENET_ADDRESS, "x"])[0]["error"]["code"] == 10
    assert rig.session.close_reason is None
    rig.session.network = PRIVATENET
    assert rig.subscribe(PRIVATENET_ADDRESS)[0]["result"] == "ok"


# --- the fan-out's timer shortcut ---------------------------------------------------------------

_ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["share", "tick", "work", "clean_work", "authorize"]),
        st.floats(min_value=0.0, max_value=90.0, allow_nan=False),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(actions=_ACTIONS, get_version=st.booleans(), job_interval=st.sampled_from([2.0, 30.0, 600.0]))
def test_new_work_never_brings_the_next_deadline_forward(actions, get_version, job_interval):
    # The server's fan-out skips the timer's wake-up after new_work; a rig whose vardiff, idle
    # check or job refresh came due earlier because of a new job would then wait for nothing.
    rig, job = subscribed_rig(get_version=get_version, job_interval=job_interval)
    session = rig.session
    now = 0.0
    for action, gap in actions:
        now += gap
        rig.now = rig.pool.now = now
        if action == "share":
            rig.submit(job["job_id"], solve(bytes.fromhex(job["data"]), job["weight"]))
        elif action == "tick":
            found = jobs(rig.tick(now))
            job = found[-1] if found else job
        elif action == "authorize":
            rig.call("mining.authorize", [PRIVATENET_ADDRESS + ".w", "x"])
        else:
            before = session.next_deadline()
            assert session.new_work(action == "clean_work", now)
            after = session.next_deadline()
            assert before is None or (after is not None and after >= before), (before, after)
            job = jobs(rig.read())[-1]
