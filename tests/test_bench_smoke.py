"""Every benchmark module runs end to end at a tiny size, so the bench code cannot rot.

These are not measurements: sizes and durations are the smallest that exercise each path (child
processes, the rig simulator, the fake node, the document writer).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from bench import (
    against,
    connections,
    event_replay,
    fanout,
    inproc,
    report,
    rigsim,
    share_path,
    submit_latency,
)
from bench.common import Child, percentile
from tests.node_stratum_support import NodeStratum


def test_percentile_is_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0], 99) == 3.0


def test_inproc_times_shares_and_jobs(capsys) -> None:
    """The in-process A/B tool: every share it feeds is accepted (it raises otherwise), each
    scenario prints its figure, and the dry run (valgrind's baseline) measures nothing."""
    assert inproc.main(["share", "--count", "200"]) == 0
    share = json.loads(capsys.readouterr().out)
    assert share["shares"] == 200 and 0 < share["us_min"] <= share["us_median"]
    assert inproc.main(["job", "--sessions", "20", "--rounds", "3"]) == 0
    job = json.loads(capsys.readouterr().out)
    assert job["sessions"] == 20 and 0 < job["us_min"] <= job["us_median"]
    # Solo: every session pays an address of its own (a session that is not mining raises).
    assert inproc.main(["job", "--sessions", "20", "--rounds", "3", "--solo"]) == 0
    solo = json.loads(capsys.readouterr().out)
    assert solo["solo"] is True and 0 < solo["us_min"] <= solo["us_median"]
    assert inproc.main(["share", "--count", "50", "--dry"]) == 0
    assert "us_min" not in json.loads(capsys.readouterr().out)
    # With the record, every read's events are committed to SQLite before its replies are taken.
    assert inproc.main(["share", "--count", "100", "--record"]) == 0
    recorded = json.loads(capsys.readouterr().out)
    assert recorded["record"] is True and 0 < recorded["us_min"] <= recorded["us_median"]


def test_share_path_runs_against_echo_and_the_proxy() -> None:
    result = share_path.run(sizes=(2,), seconds=0.3, reps=1)
    size = result["sizes"]["2"]
    for name in ("echo", "proxy", "proxy+record"):
        assert size[name]["rate"] > 0
    assert size["proxy"]["ratio"] > 0
    assert report.rows("share_path", json.loads(json.dumps(result)))


def test_fanout_times_every_rig() -> None:
    result = fanout.run(sizes=(5,), rounds=1)
    size = result["sizes"]["5"]
    assert result["measure"] == "kernel"  # the rigs' sockets stamped every job's arrival
    for kind in ("baseline", "proxy"):
        assert 0 < size[kind]["p50"] <= size[kind]["p99"] <= size[kind]["max"] < 10
        # The kernel stamps a job before the simulator gets to read it.
        assert size[kind]["p99"] <= size[kind]["p99_read"] + 0.001
    assert size["rounds"] == 1
    assert report.rows("fanout", json.loads(json.dumps(result)))


def test_fanout_runs_a_size_past_the_socket_limit_with_the_rigs_it_can_and_does_not_judge_it(
    monkeypatch,
) -> None:
    # A machine whose hard RLIMIT_NOFILE holds 40 sockets a process, asked for 1,000 rigs: it
    # measures 40 and says so, and the 1,000-rig goal is not judged on them.
    monkeypatch.setattr(fanout, "max_sockets", lambda: 40)
    result = json.loads(json.dumps(fanout.run(sizes=(1000,), rounds=1)))
    assert result["capped"] == {"1000": 40} and result["sizes"]["1000"]["rigs"] == 40
    (row,) = report.rows("fanout", result)
    assert row[1] == "40 rigs (of 1,000 asked)" and row[-1] == "-"
    assert "not judged at 40" in row[-2]
    assert "**Capped:**" in "\n".join(report.SECTIONS["fanout"](result))


def test_the_fanout_section_says_how_many_rounds_each_size_had() -> None:
    def size(rounds: int) -> dict[str, object]:
        timing = {"p50": 0.001, "p99": 0.002, "max": 0.003, "p99_runs": [2.0] * rounds}
        return {"rounds": rounds, "baseline": timing, "proxy": timing}

    mixed = {"sizes": {"100": size(9), "1000": size(9), "10000": size(5)}}
    assert (
        "Rounds per size: 9 at 100 rigs, 9 at 1,000 rigs, 5 at 10,000 rigs"
        in report.SECTIONS["fanout"](mixed)[0]
    )
    same = {"sizes": {"100": size(2), "1000": size(2)}}
    assert report.SECTIONS["fanout"](same)[0].startswith("2 rounds per size,")
    older = {"rounds": 5, "sizes": {"1000": size(5)}}  # results.json before rounds were per size
    assert report.SECTIONS["fanout"](older)[0].startswith("5 rounds per size,")


def test_a_missed_goal_points_at_its_profile() -> None:
    """The summary's verdict of a missed goal links the profile docs/ keeps for that case; a met
    goal says "met" alone; every profile named there exists."""

    def fanout_result(p99_10000: float) -> dict[str, object]:
        timing = {"p50": 0.001, "p99": 0.002}
        big = {"p50": 0.1, "p99": p99_10000}
        return {
            "sizes": {
                "10000": {"baseline": timing, "proxy": big, "ratio_p99": 1.0},
                "100": {"baseline": timing, "proxy": timing, "ratio_p99": 1.0},
            }
        }

    missed = {row[1]: row[-1] for row in report.rows("fanout", fanout_result(0.300))}
    assert missed["10000 rigs"].startswith("**missed** by 50.00 ms")
    assert "[fanout_10000.txt](profiles/fanout_10000.txt)" in missed["10000 rigs"]
    assert missed["100 rigs"] == "-"  # no goal at 100 rigs
    met = {row[1]: row[-1] for row in report.rows("fanout", fanout_result(0.200))}
    assert met["10000 rigs"] == "met"
    docs = Path(__file__).resolve().parent.parent / "docs"
    for name in report.PROFILES.values():
        assert (docs / "profiles" / name).is_file(), name


def test_connections_measures_memory_per_rig() -> None:
    result = connections.run(sizes=(50,))
    entry = result["sizes"]["50"]
    assert entry["rigs"] == 50
    assert entry["proxy"]["rss_after"] > 0 and entry["baseline"]["rss_after"] > 0
    assert report.rows("connections", json.loads(json.dumps(result)))


def test_event_replay_runs_each_window() -> None:
    result = event_replay.run(events=300, windows=(1, 100), reps=1, window1_events=50)
    assert set(result["replay"]) == {1, 100}
    assert all(rate > 0 for rate in result["replay"].values())
    assert result["sqlite_read_json"] > 0


def test_submit_latency_matches_every_block() -> None:
    result = submit_latency.run(count=6, chunks=1)
    assert result["samples"] == 6
    assert result["measure"] == "kernel"
    for measure in (result, result["end_to_end"]):  # kernel stamps, then the applications' clocks
        for kind in ("baseline", "proxy"):
            assert 0 < measure[kind]["p50"] <= measure[kind]["p99"] < 10
            assert len(measure[kind]["sorted"]) == 6
    for kind in ("baseline", "proxy"):
        assert 0 <= result[kind]["shared_stamps"] <= 6
        assert 0 < result[kind]["rig_send_cost_p50"] < 0.01
    assert len(report.rows("submit_latency", json.loads(json.dumps(result)))) == 2


def test_render_writes_every_section(tmp_path) -> None:
    stored = {
        "submit_latency": {
            "result": {
                "samples": 2,
                "gap": 0.004,
                "proxy": {"p50": 0.001, "p90": 0.002, "p99": 0.003, "max": 0.003, "sorted": [0.001, 0.003]},
                "baseline": {
                    "p50": 0.0005,
                    "p90": 0.001,
                    "p99": 0.001,
                    "max": 0.001,
                    "sorted": [0.0005, 0.001],
                },
                "ratio_p99": 3.0,
                "ratio_p50": 2.0,
            },
            "machine": {
                "cpu": "x",
                "cores": 2,
                "python": "CPython 3.11",
                "trio": "0",
                "os": "Linux",
                "load_before": 0.1,
                "load_after": 0.2,
            },
            "command": "python -m bench --only submit_latency",
            "quick": False,
            "when": "now",
            "seconds": 1.0,
        }
    }
    text = report.render(stored, {})
    assert "## 5. Block submit latency" in text
    assert "python -m bench --only submit_latency" in text
    assert "**missed**" in text  # p99 3 ms > 2 ms


def test_against_drives_a_running_stratum_server_and_reports_its_cpu(capsys) -> None:
    server = Child("bench.servers", "stratum", "--share-weight", "0.1", name="proxy server")
    try:
        ready = server.receive()
        assert (
            against.main(
                ["--port", str(ready["port"]), "--rigs", "3", "--seconds", "0.3", "--pid", str(ready["pid"])]
            )
            == 0
        )
    finally:
        server.close()
    out = json.loads(capsys.readouterr().out)
    assert out["rigs"] == 3 and out["errors"] == 0 and out["answered"] > 0
    assert out["shares_per_s"] > 0 and out["server_cpu_s"] > 0
    assert out["authorize"] is True  # the proxy answers authorize: its rigs are ADDRESS.rigN
    assert out["one_share_per_job"] is False and out["job_weights"] == [0.1, 0.1]
    assert "warning" not in out


def test_the_simulator_adds_up_the_cpu_of_several_processes(capsys) -> None:
    # --pid SERVER,NODE: a server that hands every block to a node is judged with the node's CPU.
    me = os.getpid()
    sum(range(2_000_000))  # (some CPU time of our own)
    alone = rigsim.cpu_seconds(me)
    twice = rigsim.cpu_seconds([me, me])
    after = rigsim.cpu_seconds(me)
    assert alone > 0 and 2 * alone <= twice <= 2 * after
    with pytest.raises(SystemExit) as refused:
        against.main(["--port", "1", "--pid", f"{me},x"])
    assert refused.value.code == 2
    assert "expected a pid or pids separated by commas" in capsys.readouterr().err


def test_the_proxy_serves_with_the_record_at_either_synchronous_setting(capsys) -> None:
    # Both settings of [events] synchronous: every "ok" still waits for its commit.
    for setting in ("full", "normal"):
        server = Child(
            "bench.servers",
            "stratum",
            "--share-weight",
            "0.1",
            "--record",
            "--synchronous",
            setting,
            name=setting,
        )
        try:
            ready = server.receive()
            argv = ["--port", str(ready["port"]), "--rigs", "2", "--window", "2", "--seconds", "0.3"]
            assert against.main(argv) == 0
            assert server.ask(cmd="stats")["record_synchronous"] == setting  # (in force, read back)
        finally:
            server.close()
        out = json.loads(capsys.readouterr().out)
        assert out["errors"] == 0 and out["answered"] > 0


def test_against_only_subscribes_to_a_server_without_authorize(capsys) -> None:
    # The node's own Stratum closes a connection that sends authorize (-32601 is fatal there):
    # asked first, the rigs only subscribe, and every one of them mines.
    with NodeStratum() as node:
        assert (
            against.main(["--port", str(node.port), "--rigs", "3", "--window", "1", "--seconds", "0.3"]) == 0
        )
    out = json.loads(capsys.readouterr().out)
    assert out["authorize"] is False
    assert out["rigs"] == 3 and out["errors"] == 0 and out["answered"] > 0
    assert node.accepted >= out["answered"]


def test_against_fails_loudly_when_the_server_closes_its_rigs(capsys) -> None:
    # Made to authorize, the one rig gets its job and is then closed: the command fails and
    # shows why, instead of printing zero shares answered and no error.
    with NodeStratum() as node:
        code = against.main(
            [
                "--port",
                str(node.port),
                "--rigs",
                "1",
                "--window",
                "1",
                "--seconds",
                "0.3",
                "--authorize",
                "yes",
            ]
        )
    out = json.loads(capsys.readouterr().out)
    assert code == 1
    # (closed before the simulator said it was ready, or during the run: the close may come after the job)
    assert out["error"] in ("not every rig got a job", "1 of 1 rigs were closed during the run")
    # The server's last line says why; unless the rig's first shares reached the server after it
    # had read the authorize and before it closed: its close is then a reset, which discards it.
    assert "Method not found" in out["failures"][0] or "Connection reset" in out["failures"][0]


def test_against_sends_one_share_per_job_to_a_server_that_answers_stale(capsys) -> None:
    # Two shares in flight on a server that takes one share per job: the second of the first
    # window is stale (31); from then on each rig sends one share per job, so nothing else is.
    with NodeStratum() as node:
        argv = ["--port", str(node.port), "--rigs", "2", "--window", "2", "--seconds", "0.5", "--warmup", "0"]
        assert against.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["one_share_per_job"] is True
    assert 1 <= out["errors"] <= 2 and out["error_codes"] == {"31": out["errors"]}
    assert "Stale job submitted" in out["first_error"]
    assert out["answered"] - out["errors"] > 20


def test_against_asks_and_moves_on_when_the_server_never_answers_authorize(capsys) -> None:
    # tx-mining-service neither answers authorize nor closes: the rigs only subscribe.
    with NodeStratum(authorize="ignore") as node:
        assert (
            against.main(["--port", str(node.port), "--rigs", "2", "--window", "1", "--seconds", "0.3"]) == 0
        )
    out = json.loads(capsys.readouterr().out)
    assert out["authorize"] is False and out["errors"] == 0 and out["answered"] > 0


def test_against_warns_when_the_rate_is_the_simulators_own_hashing(capsys) -> None:
    # At weight 17 a share is ~130,000 hashes of Python: the run measures the simulator.
    with NodeStratum(share_weight=17.0) as node:
        argv = ["--port", str(node.port), "--rigs", "1", "--window", "1", "--seconds", "0.5", "--warmup", "0"]
        assert against.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["job_weights"] == [17.0, 17.0]
    assert out["simulator_hashing_s"] > 0.25 and "the rate measures the simulator" in out["warning"]


def test_the_rig_simulator_reads_the_nodes_spelling_of_jobs_and_replies(monkeypatch) -> None:
    # protocol/transcripts/stratum.jsonl: the node writes JSON with spaces, replies "ok" or true.
    class NoEpoll:  # no sockets are polled here (and pytest's stdin cannot be)
        def register(self, *args) -> None:
            pass

    monkeypatch.setattr(rigsim.select, "epoll", NoEpoll)
    sim = rigsim.Simulator("127.0.0.1", 1, 1, "stratum", 2)
    rig = rigsim.Rig(0, socket.socket())
    try:
        sim.pending = 1
        job = {
            "method": "job",
            "params": {
                "data": "ab" * 64,
                "job_id": "cd" * 16,
                "nonce_size": 16,
                "weight": 1.0,
                "clean": True,
            },
            "id": None,
        }
        sim.on_line(rig, json.dumps(job).encode(), 0.0)
        assert rig.ready and rig.job_id == b"cd" * 16
        sim.counting, rig.inflight = True, 3
        sim.on_line(rig, b'{"result": "ok", "error": null, "id": 4}', 0.0)
        sim.on_line(rig, b'{"id": 5, "result": true, "error": null}', 0.0)
        sim.on_line(rig, b'{"error": {"code": 30, "message": "Invalid solution"}, "data": {}}', 0.0)
        assert (sim.ok, sim.errors, rig.inflight) == (2, 1, 0)
    finally:
        rig.sock.close()


def test_the_fanout_proxy_gives_its_rigs_a_spread_of_weights() -> None:
    # Figure 2 runs the proxy with --weight-spread: rig after rig gets the next weight of the
    # grid, so the fan-out builds terms per weight as it does for a real pool's rigs.
    server = Child("bench.servers", "stratum", "--share-weight", "16", "--weight-spread", "3", name="proxy")
    rigs = []
    try:
        port = server.receive()["port"]
        weights = []
        for _ in range(4):
            rig = socket.create_connection(("127.0.0.1", port), timeout=10)
            rigs.append(rig)
            rig.sendall(b'{"id": 1, "method": "subscribe", "params": {}}\n')
            reader = rig.makefile("rb")
            while True:
                message = json.loads(reader.readline())
                if message.get("method") == "job":
                    weights.append(message["params"]["weight"])
                    break
        assert weights == [16.0, 16.0625, 16.125, 16.0]
    finally:
        for rig in rigs:
            rig.close()
        server.close()
