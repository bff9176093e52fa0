"""The goals over the recent full runs: what "reproduces within noise" means on this machine.

Every full (not ``--quick``) run of a figure appends one line to ``docs/bench/history.jsonl``:
when, which run of ``python -m bench`` it belonged to, the commit measured, and for each case with
a goal the summary's value, baseline and whether the goal was met. BENCHMARKS.md shows the last
runs side by side under the summary, so one run's number is read against the spread of its
neighbours, not alone.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from bench import report

RUNS_SHOWN = 6


def commit(root: Path) -> str:
    """The checked-out commit, with "+" when code outside docs/ differs from it; "?" without git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "?"
    if head.returncode != 0:
        return "?"
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")


def entry(name: str, result: dict[str, Any], *, run: str, when: str, code: str) -> dict[str, Any]:
    """One history line: the summary's cases that have a goal, with their value and verdict."""
    cases = [
        {
            "case": case,
            "value": value.split(" (", 1)[0],
            "baseline": baseline.split(" (", 1)[0],
            "met": verdict == "met",
        }
        for _, case, value, baseline, _, _, verdict in report.rows(name, json.loads(json.dumps(result)))
        if verdict != "-"
    ]
    return {"figure": name, "run": run, "when": when, "commit": code, "cases": cases}


def append(path: Path, line: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(json.dumps(line) + "\n")


def load(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = []
    for raw in path.read_text().splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            continue  # a line cut short (a run killed mid-write) costs that line only
    return lines


def section(lines: list[dict[str, Any]], shown: int = RUNS_SHOWN) -> list[str]:
    """The goals over the last ``shown`` runs, oldest first; [] without history."""
    runs: dict[str, dict[str, Any]] = {}
    for line in lines:
        runs.setdefault(line["run"], {"when": line["when"], "commits": [], "figures": {}})
        run = runs[line["run"]]
        if line["commit"] not in run["commits"]:
            run["commits"].append(line["commit"])
        run["figures"][line["figure"]] = line["cases"]
    recent = list(runs.values())[-shown:]
    if not recent:
        return []
    header = ("figure", "case", *(f"{run['when'][:16]} ({', '.join(run['commits'])})" for run in recent))
    body = []
    for name, title in report.FIGURE_TITLES.items():
        cases: list[str] = []
        for run in recent:
            for case in run["figures"].get(name, []):
                if case["case"] not in cases:
                    cases.append(case["case"])
        for case_name in cases:
            cells = []
            for run in recent:
                found = next((c for c in run["figures"].get(name, []) if c["case"] == case_name), None)
                cells.append("" if found is None else _cell(name, found))
            body.append((title.split(". ", 1)[-1], case_name, *cells))
    return [
        f"### The goals over the last {len(recent)} full runs",
        "",
        "Each column is one `python -m bench` run (UTC; its commit, `+` when the code differed from "
        "it), from `docs/bench/history.jsonl`; **bold** is a missed goal. A new run is within the "
        "noise when it falls inside this spread.",
        "",
        *report.table(header, body),
    ]


def _cell(name: str, case: dict[str, Any]) -> str:
    value = case["value"] if case["met"] else f"**{case['value']}**"
    if name == "fanout":  # whether 250 ms is met follows the floor: show it
        value += f" (floor {case['baseline'].removeprefix('p99 ')})"
    elif name == "hashing":  # the goal is the baseline itself
        value += f" ({case['baseline'].replace('hashlib loop', 'loop')})"
    return value
