"""The hash benchmark runs end to end and reports every field the CLI prints."""

from __future__ import annotations

import json

import pytest

from hashing.bench import format_hash_bench, run_hash_bench


def test_run_hash_bench_reports_rates_and_ratio() -> None:
    result = run_hash_bench(0.6, 1)
    json.dumps(result)  # the CLI's --json output
    assert result["workers"] == 1 and result["seconds"] == 0.6
    assert len(result["workers_hps"]) == 1
    assert result["per_worker_hps"] == pytest.approx(result["workers_hps"][0])
    assert result["total_hps"] > 0 and result["baseline_hps"] > 0
    assert result["ratio"] == pytest.approx(result["per_worker_hps"] / result["baseline_hps"])
    for key in ("cpu_count", "python", "baseline", "sha256_impl", "ratio_cpu"):
        assert key in result
    text = format_hash_bench(result)
    assert "baseline" in text and "ratio" in text


def test_run_hash_bench_validates() -> None:
    with pytest.raises(ValueError):
        run_hash_bench(0, 1)
    with pytest.raises(ValueError):
        run_hash_bench(1, 0)
