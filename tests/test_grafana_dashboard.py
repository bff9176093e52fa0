"""docs/grafana/miningproxy.json is an importable Grafana dashboard and docs/prometheus/alerts.yml a
Prometheus rule file, and every metric their queries name is one the running proxy exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import trio
import yaml  # PyYAML: a test-only dependency (already pulled in by the test extra)

from miningproxy.app import run_app
from miningproxy.config import config_from_dict
from miningproxy.devnode.server import DevNode
from miningproxy.devnode.settings import DevNodeSettings
from tests.hathor_vectors import PRIVATENET_ADDRESS
from tests.test_e2e_devnet import http_get

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "docs" / "grafana" / "miningproxy.json"
ALERTS = ROOT / "docs" / "prometheus" / "alerts.yml"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
PANEL_TYPES = {"row", "stat", "timeseries", "state-timeline", "table", "gauge", "bargauge", "heatmap"}
# Written by Prometheus itself for every scrape target, not by the proxy.
PROMETHEUS_SERIES = {"up"}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan",
}  # fmt: skip
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
NAME = re.compile(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?")


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads (functions, keywords and labels left out)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges, $__rate_interval
    text = GROUPING.sub("", text)
    return {
        name
        for name, call in NAME.findall(text)
        if not call and name.lower() not in PROMQL_WORDS and not name.startswith("__")
    }


def test_metric_names_are_read_from_promql():
    assert metric_names(
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{x=~"$i", y="b c"}[$__rate_interval])))'
    ) == {"a_bucket"}
    assert metric_names("2 ^ w / r < 3600 and on (instance, job) up > 1e-9") == {"w", "r", "up"}
    assert metric_names("sum(rate(x_total[5m])) / clamp_min(sum(rate(y_total[5m])), 1)") == {
        "x_total",
        "y_total",
    }


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(re.sub(r"^label_values\(([^,)]+).*", r"\1", variable["definition"]))
    return exprs


def alert_rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_dashboard_is_an_importable_grafana_dashboard():
    d = load_dashboard()
    assert d["title"] and d["uid"] == "miningproxy"
    assert isinstance(d["schemaVersion"], int) and 36 <= d["schemaVersion"] <= 41
    assert d["id"] is None  # an export for import: Grafana assigns the id
    inputs = {i["name"]: i for i in d["__inputs"]}
    assert (
        inputs["DS_PROMETHEUS"]["type"] == "datasource"
        and inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    )
    assert {r["id"] for r in d["__requires"]} >= {"grafana", "prometheus"}
    required_panels = {r["id"] for r in d["__requires"] if r["type"] == "panel"}
    ids, cells = set(), set()
    for panel in d["panels"]:
        assert isinstance(panel["id"], int) and panel["id"] not in ids
        ids.add(panel["id"])
        assert panel["type"] in PANEL_TYPES and panel["title"]
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["y"] >= 0 and g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not area & cells, f"panel {panel['title']!r} overlaps another"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["type"] in required_panels
        assert panel["datasource"] == DATASOURCE
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(set(refs)) == len(refs)
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE
            assert target["expr"].strip() and metric_names(target["expr"])
            assert 'instance=~"$instance"' in target["expr"]  # the proxy picker applies everywhere
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["instance"]["datasource"] == DATASOURCE


def test_dashboard_covers_what_an_operator_watches():
    exprs = " ".join(dashboard_exprs(load_dashboard()))
    for metric in [
        "miningproxy_pool_hashrate_hashes_per_second",  # hashrate
        "miningproxy_rigs_connected",  # rigs
        "miningproxy_shares_total",  # shares by result
        "miningproxy_blocks_total",  # blocks
        "miningproxy_template_age_seconds",  # template age
        "miningproxy_job_broadcast_latency_seconds_bucket",  # fan-out latency
        "miningproxy_block_submit_latency_seconds_bucket",  # submit latency
        "miningproxy_upstream_node_state",  # upstream state
        "miningproxy_upstream_connected",
    ]:
        assert metric in exprs, metric


def test_alert_rules_are_a_prometheus_rule_file():
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
        assert rule["expr"].strip() and metric_names(rule["expr"])
        if "for" in rule:
            assert re.fullmatch(r"(\d+[smhd])+", rule["for"])
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    by_metric = " ".join(rule["expr"] for rule in rules)
    assert "miningproxy_upstream_connected == 0" in by_metric  # upstream down
    assert "miningproxy_template_age_seconds >" in by_metric  # template stale
    assert 'miningproxy_shares_total{result="rejected"}' in by_metric  # reject ratio
    assert 'miningproxy_blocks_total{result="accepted"}' in by_metric  # no blocks for too long
    assert 'limit_hits_total{limit="proxy_header"}' in by_metric  # a balancer without its header


@pytest.fixture
async def exported(tmp_path) -> set[str]:
    """Series names in the running proxy's /metrics (mining on the dev node with a local worker)."""
    node = DevNode(DevNodeSettings(block_weight=16.0, min_block_weight=8.0))
    async with trio.open_nursery() as nursery:
        node_port = await nursery.start(node.serve, "127.0.0.1", 0)
        config = config_from_dict(
            {
                "upstream": {"nodes": [f"http://127.0.0.1:{node_port}/v1a/"], "backoff_initial": 0.1},
                "pool": {"address": PRIVATENET_ADDRESS, "tag": "grafana"},
                "http": {"listen": "127.0.0.1:0"},
                "stratum": {"listen": "127.0.0.1:0"},
                "events": {"database": str(tmp_path / "events.sqlite3")},
                "workers": {"count": 1, "share_weight": 10.0},
            }
        )
        app = await nursery.start(run_app, config)
        with trio.fail_after(30):
            while app.pool.generation is None or app.pool.stats.pool.accepted == 0:
                await trio.sleep(0.05)
        status, text = await http_get(app.http_port, "/metrics")
        assert status == 200
        nursery.cancel_scope.cancel()
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    return names


async def test_every_metric_in_the_dashboard_and_the_alerts_is_exported(exported):
    assert "miningproxy_blocks_total" in exported  # counters with their _total suffix
    assert "miningproxy_job_broadcast_latency_seconds_bucket" in exported  # histogram series
    used = set()
    for expr in dashboard_exprs(load_dashboard()):
        used |= metric_names(expr)
    for rule in alert_rules():
        used |= metric_names(rule["expr"])
    missing = sorted(used - exported - PROMETHEUS_SERIES)
    assert not missing, f"not in the proxy's /metrics: {missing}"
