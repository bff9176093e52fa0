"""The goals over recent runs (bench/history.py): what each full run adds, and the table it makes."""

from __future__ import annotations

import json
from pathlib import Path

import bench.__main__ as bench_main
from bench import history

ROOT = Path(__file__).resolve().parent.parent


def fanout(p99_1000: float, p99_10000: float) -> dict[str, object]:
    def size(p99: float, floor: float) -> dict[str, object]:
        return {
            "proxy": {"p50": p99 / 2, "p99": p99},
            "baseline": {"p50": floor / 2, "p99": floor},
            "ratio_p99": 1.0,
        }

    return {
        "sizes": {"100": size(0.004, 0.002), "1000": size(p99_1000, 0.013), "10000": size(p99_10000, 0.150)}
    }


def hashing(ratio: float) -> dict[str, object]:
    per = 5e5 * ratio
    return {
        "seconds": 1.0,
        "workers": 2,
        "sha256_impl": "builtin",
        "per_worker_hps": per,
        "workers_hps": [per, per],
        "per_worker_cpu_hps": per,
        "baseline": "hashlib loop",
        "baseline_hps": 5e5,
        "baseline_cpu_hps": 5e5,
        "ratio": ratio,
        "ratio_cpu": ratio,
    }


def test_an_entry_keeps_the_cases_with_a_goal_and_their_verdicts():
    line = history.entry(
        "fanout", fanout(0.021, 0.279), run="r1", when="2026-11-28 20:17:00 UTC", code="abc123"
    )
    assert line["figure"] == "fanout" and line["commit"] == "abc123" and line["run"] == "r1"
    assert line["cases"] == [  # 100 rigs has no goal: not kept
        {"case": "1000 rigs", "value": "p99 21.00 ms", "baseline": "p99 13.00 ms", "met": True},
        {"case": "10000 rigs", "value": "p99 279.00 ms", "baseline": "p99 150.00 ms", "met": False},
    ]


def test_the_section_shows_the_last_runs_side_by_side_with_misses_in_bold():
    lines = [
        history.entry("fanout", fanout(0.021, 0.279), run="r1", when="2026-11-28 20:17:00 UTC", code="aaa"),
        history.entry("hashing", hashing(2.0), run="r1", when="2026-11-28 20:19:00 UTC", code="aaa"),
        history.entry("fanout", fanout(0.027, 0.220), run="r2", when="2026-11-28 21:17:00 UTC", code="bbb+"),
    ]
    text = "\n".join(history.section(lines))
    assert "| figure | case | 2026-11-28 20:17 (aaa) | 2026-11-28 21:17 (bbb+) |" in text
    assert (
        "| Job fan-out | 1000 rigs | p99 21.00 ms (floor 13.00 ms) | **p99 27.00 ms** (floor 13.00 ms) |"
        in text
    )
    assert (
        "| Job fan-out | 10000 rigs | **p99 279.00 ms** (floor 150.00 ms) | p99 220.00 ms (floor 150.00 ms) |"
        in text
    )
    # Hashing ran in the first run only: the second run's cell is empty.
    assert "| Local hashing | 2 workers | 1.000 MH/s per worker (loop 0.500 MH/s) |  |" in text
    assert history.section(lines, shown=1)[-1].count("|") == 4  # only the newest run
    assert history.section([]) == []


def test_a_cut_line_costs_only_itself(tmp_path):
    path = tmp_path / "history.jsonl"
    history.append(path, history.entry("hashing", hashing(2.0), run="r1", when="w", code="c"))
    with path.open("a") as out:
        out.write('{"figure": "hashing", "ru')  # a run killed while writing
    assert [line["run"] for line in history.load(path)] == ["r1"]
    assert history.load(tmp_path / "none.jsonl") == []


def test_a_full_run_adds_its_figures_to_the_history_and_a_quick_run_does_not(tmp_path, monkeypatch):
    monkeypatch.setitem(bench_main.FIGURES, "hashing", lambda quick: hashing(2.0))
    assert bench_main.main(["--only", "hashing", "--out", str(tmp_path)]) == 0
    assert bench_main.main(["--only", "hashing", "--quick", "--out", str(tmp_path)]) == 0
    lines = history.load(tmp_path / "bench" / "history.jsonl")
    assert len(lines) == 1 and lines[0]["figure"] == "hashing" and lines[0]["cases"][0]["met"] is True
    assert lines[0]["commit"] == history.commit(ROOT)  # ("?" outside a git checkout)
    document = (tmp_path / "BENCHMARKS.md").read_text()
    assert "### The goals over the last 1 full runs" in document
    assert json.loads((tmp_path / "bench" / "results.json").read_text())["hashing"]["quick"] is True


def test_the_stored_history_renders():
    lines = history.load(ROOT / "docs" / "bench" / "history.jsonl")
    assert lines, "docs/bench/history.jsonl is kept in the repository"
    assert history.section(lines)[0].startswith("### The goals over the last")
