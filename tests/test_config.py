"""Configuration: every shipped config loads; every bad value names its key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from miningproxy.config import ConfigError, HostPort, config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[1]
ADDRESS = "WY1URKUnqCTyiixW1Dw29vmeG99hNN4EW6"


def minimal(**sections):
    data = {"upstream": {"nodes": ["http://127.0.0.1:8090/v1a/"]}, "pool": {"address": ADDRESS}}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


@pytest.mark.parametrize("name", ["devnet.toml", "mainnet.example.toml", "testnet.example.toml"])
def test_shipped_configs_load(name):
    config = load_config(ROOT / "configs" / name)
    assert config.upstream.nodes
    assert config.source.endswith(name)


def test_devnet_runs_the_embedded_node_with_workers():
    config = load_config(ROOT / "configs" / "devnet.toml")
    assert config.devnode.enabled
    assert config.workers.count == 2
    assert config.http.listen == HostPort("127.0.0.1", 8080)
    assert config.stratum.listen == ("127.0.0.1", 8000)
    assert config.upstream.nodes == ("http://127.0.0.1:8090/v1a/",)


def test_defaults_and_trailing_slash():
    config = config_from_dict(minimal(upstream={"nodes": "http://node:8080/v1a"}))
    assert config.upstream.nodes == ("http://node:8080/v1a/",)
    assert config.upstream.optimistic == "auto"
    assert config.pool.payout_mode == "pool"
    assert config.workers.count == 0


@pytest.mark.parametrize(
    ("sections", "key", "words"),
    [
        ({"upstream": {"nodes": ["ftp://x/"]}}, "upstream.nodes[0]", "http://"),
        ({"upstream": {"nodes": ["http://ok/", "nonsense"]}}, "upstream.nodes[1]", "base URL"),
        ({"upstream": {"nodes": []}}, "upstream.nodes", "list"),
        ({"upstream": {"optimistic": "maybe"}}, "upstream.optimistic", "'auto'"),
        ({"upstream": {"template_timeout": 0}}, "upstream.template_timeout", "[1"),
        ({"upstream": {"template_timeout": "10"}}, "upstream.template_timeout", "number"),
        ({"upstream": {"backoff_initial": 5, "backoff_max": 1}}, "upstream.backoff_max", ">="),
        ({"pool": {"address": "HH5As5aLtzFkcbmbXZmE65wSd22GqPWq2X"}}, "pool.address", "base58"),
        ({"pool": {"address": "not an address"}}, "pool.address", "address"),
        ({"pool": {"payout_mode": "pps"}}, "pool.payout_mode", "'solo'"),
        ({"pool": {"tag": "x" * 61}}, "pool.tag", "60 bytes"),
        ({"http": {"listen": "8080"}}, "http.listen", "HOST:PORT"),
        ({"stratum": {"listen": "0.0.0.0:70000"}}, "stratum.listen", "0..65535"),
        ({"workers": {"count": -1}}, "workers.count", "[0, 1024]"),
        ({"workers": {"count": 1.5}}, "workers.count", "whole number"),
        ({"workers": {"threads": 2}}, "workers.threads", "unknown key"),
        ({"devnode": {"enabled": "yes"}}, "devnode.enabled", "true or false"),
        ({"devnode": {"enabled": True, "block_weight": 10, "min_weight": 12}}, "devnode.min_weight", "<="),
        ({"log": {"level": "loud"}}, "log.level", "'info'"),
    ],
)
def test_bad_values_name_their_key(sections, key, words):
    with pytest.raises(ConfigError) as info:
        config_from_dict(minimal(**sections))
    assert info.value.key == key
    assert words in str(info.value)


def test_missing_and_unknown_sections():
    with pytest.raises(ConfigError, match="upstream"):
        config_from_dict({"pool": {"address": ADDRESS}})
    with pytest.raises(ConfigError) as info:
        config_from_dict(minimal(stratun={"listen": "0.0.0.0:1"}))
    assert info.value.key == "stratun"
    with pytest.raises(ConfigError) as info:
        config_from_dict({"upstream": {"nodes": ["http://a/"]}, "pool": {}})
    assert info.value.key == "pool.address"


def test_unreadable_and_invalid_toml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[upstream\nnodes = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@given(
    st.dictionaries(
        st.sampled_from(["upstream", "pool", "http", "workers", "devnode", "junk"]),
        st.dictionaries(
            st.sampled_from(["nodes", "address", "listen", "count", "enabled", "x"]), values, max_size=4
        ),
        max_size=4,
    )
)
def test_fuzzed_configs_only_raise_config_error(data):
    try:
        config_from_dict(data)
    except ConfigError as exc:
        assert exc.key
        assert str(exc).startswith(exc.key)


def test_cli_bad_config_exits_2_naming_the_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        '[upstream]\nnodes = ["http://127.0.0.1:1/v1a/"]\noptimistic = "sometimes"\n'
        f'[pool]\naddress = "{ADDRESS}"\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "miningproxy.cli", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "upstream.optimistic" in proc.stderr


def test_cli_version():
    proc = subprocess.run(
        [sys.executable, "-m", "miningproxy.cli", "--version"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    assert proc.stdout.startswith("miningproxy ")


def test_stratum_tables_are_read_and_checked():
    config = config_from_dict(
        minimal(
            stratum={
                "listen": "0.0.0.0:3333",
                "max_per_ip": 4,
                "vardiff": {"target_interval": 5, "initial_weight": 12},
                "ban": {"enabled": False},
            },
            metrics={"per_rig": True},
        )
    )
    assert config.stratum.listen == ("0.0.0.0", 3333)
    assert config.stratum.max_per_ip == 4
    assert config.stratum.vardiff.target_interval == 5 and config.stratum.vardiff.initial_weight == 12
    assert config.stratum.ban.enabled is False
    assert config.stratum.per_worker_metrics is True  # one switch: [metrics] per_rig


@pytest.mark.parametrize(
    ("stratum", "key"),
    [
        ({"max_line": 10}, "stratum.max_line"),
        ({"vardiff": {"min_weight": 30, "max_weight": 20}}, "stratum.vardiff.max_weight"),
        ({"vardiff": {"speed": 1}}, "stratum.vardiff.speed"),
        ({"ban": {"enabled": "no"}}, "stratum.ban.enabled"),
        ({"tls_listen": "0.0.0.0:3334"}, "stratum.tls_cert"),
        ({"job_interval": "30"}, "stratum.job_interval"),
        ({"colour": "blue"}, "stratum.colour"),
        ({"proxy_protocol_from": "10.0.0.5"}, "stratum.proxy_protocol_from"),
        ({"proxy_protocol_from": ["10.0.0.5", 7]}, "stratum.proxy_protocol_from[1]"),
        ({"proxy_protocol_from": ["balancer.lan"]}, "stratum.proxy_protocol_from[0]"),
    ],
)
def test_bad_stratum_values_name_their_key(stratum, key):
    with pytest.raises(ConfigError) as info:
        config_from_dict(minimal(stratum=stratum))
    assert info.value.key == key


def test_proxy_protocol_sources_are_networks_and_a_typo_cannot_widen_them():
    config = config_from_dict(
        minimal(stratum={"proxy_protocol_from": ["10.0.0.5", "10.1.0.0/24", "fd00::/8"]})
    )
    assert config.stratum.proxy_protocol_from == ("10.0.0.5", "10.1.0.0/24", "fd00::/8")
    assert [str(n) for n in config.stratum.proxy_networks()] == ["10.0.0.5/32", "10.1.0.0/24", "fd00::/8"]
    assert config_from_dict(minimal()).stratum.proxy_networks() == ()  # off by default
    # "10.0.0.5/8" would trust all of 10.0.0.0/8: refused, with the two spellings that are meant.
    with pytest.raises(ConfigError) as info:
        config_from_dict(minimal(stratum={"proxy_protocol_from": ["10.0.0.5", "10.0.0.5/8"]}))
    assert info.value.key == "stratum.proxy_protocol_from[1]"
    assert "host bits" in str(info.value) and '"10.0.0.0/24"' in str(info.value)
