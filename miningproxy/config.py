"""Configuration: a TOML file read into frozen dataclasses.

Every value is checked here, once, so the rest of the program can trust it. A bad value raises
:class:`ConfigError` naming the key (``upstream.nodes[1]``) and saying how to fix it; unknown keys
are errors too, because a typo that silently falls back to a default is worse than a refusal.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from miningproxy.stratum.settings import BanSettings, SettingsError, StratumSettings, VardiffSettings


class ConfigError(ValueError):
    """A configuration value is wrong; ``key`` names it, the message says the fix."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class UpstreamConfig:
    nodes: tuple[str, ...]
    template_timeout: float = 60.0
    failback_after: float = 30.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    optimistic: str = "auto"
    submit_timeout: float = 10.0


@dataclass(frozen=True)
class PoolConfig:
    address: str
    payout_mode: str = "pool"
    tag: str = "miningproxy"
    job_refresh: float = 10.0


@dataclass(frozen=True)
class HttpConfig:
    listen: HostPort = field(default_factory=lambda: HostPort("127.0.0.1", 8080))


@dataclass(frozen=True)
class WorkersConfig:
    count: int = 0
    share_weight: float = 0.0  # 0: local workers report only blocks


@dataclass(frozen=True)
class DevNodeConfig:
    enabled: bool = False
    listen: HostPort = field(default_factory=lambda: HostPort("127.0.0.1", 8090))
    network: str = "privatenet"
    block_weight: float = 20.0
    min_weight: float = 1.0
    weight_decay_seconds: float = 0.0
    optimistic: str = "broken"


@dataclass(frozen=True)
class EventsConfig:
    database: str = "data/miningproxy.sqlite3"
    synchronous: str = "full"
    network: str | None = None
    consume_upstream: bool = True
    upstream_window: int = 256
    retention_count: int | None = None
    retention_age: float | None = None
    retention_interval: float = 3600.0
    send_timeout: float = 30.0


@dataclass(frozen=True)
class AdminWsConfig:
    enabled: bool = True
    max_subscriptions_per_connection: int = 10_000
    metrics_interval: float = 1.0
    address_stats_interval: float = 10.0
    outbox_limit: int = 256
    send_timeout: float = 30.0
    max_history_streams: int = 32


@dataclass(frozen=True)
class MiningWsConfig:
    enabled: bool = True
    optimistic_wait: float = 5.0
    max_submits_per_client: int = 16
    outbox_limit: int = 64
    send_timeout: float = 30.0


@dataclass(frozen=True)
class MetricsConfig:
    per_rig: bool = False


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"


@dataclass(frozen=True)
class Config:
    upstream: UpstreamConfig
    pool: PoolConfig
    http: HttpConfig = field(default_factory=HttpConfig)
    stratum: StratumSettings = field(default_factory=StratumSettings)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    devnode: DevNodeConfig = field(default_factory=DevNodeConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    admin_ws: AdminWsConfig = field(default_factory=AdminWsConfig)
    mining_ws: MiningWsConfig = field(default_factory=MiningWsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: str = "<memory>"


# --- value readers: each takes (key, raw) and returns the checked value or raises ConfigError ---


def _number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> Callable:
    def read(key: str, raw: Any) -> float:
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
            raise ConfigError(key, f"expected a number, got {raw!r}")
        bounds = f"{'(' if lo_open else '['}{lo}, {hi}]"
        if lo is not None and (raw < lo or (lo_open and raw == lo)):
            raise ConfigError(key, f"must lie in {bounds}, got {raw!r}")
        if hi is not None and raw > hi:
            raise ConfigError(key, f"must lie in {bounds}, got {raw!r}")
        return float(raw)

    return read


def _integer(lo: int, hi: int) -> Callable:
    def read(key: str, raw: Any) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ConfigError(key, f"expected a whole number, got {raw!r}")
        if not lo <= raw <= hi:
            raise ConfigError(key, f"must lie in [{lo}, {hi}], got {raw}")
        return raw

    return read


def _boolean(key: str, raw: Any) -> bool:
    if not isinstance(raw, bool):
        raise ConfigError(key, f"expected true or false, got {raw!r}")
    return raw


def _choice(*options: str) -> Callable:
    def read(key: str, raw: Any) -> str:
        if raw not in options:
            raise ConfigError(key, f"must be one of {', '.join(repr(o) for o in options)}, got {raw!r}")
        return raw

    return read


def _string(key: str, raw: Any) -> str:
    if not isinstance(raw, str) or not raw:
        raise ConfigError(key, f"expected a non-empty string, got {raw!r}")
    return raw


def _host_port(key: str, raw: Any) -> HostPort:
    if not isinstance(raw, str) or ":" not in raw:
        raise ConfigError(key, f'expected "HOST:PORT" (e.g. "127.0.0.1:8000"), got {raw!r}')
    host, _, port = raw.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(key, f'expected "HOST:PORT" with a port in 0..65535, got {raw!r}')
    return HostPort(host, int(port))


def _node_url(key: str, raw: Any) -> str:
    if not isinstance(raw, str):
        raise ConfigError(key, f'expected a node base URL such as "http://127.0.0.1:8080/v1a/", got {raw!r}')
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            key, f'expected an http:// or https:// base URL such as "http://127.0.0.1:8080/v1a/", got {raw!r}'
        )
    return raw if raw.endswith("/") else raw + "/"


def _nodes(key: str, raw: Any) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise ConfigError(
            key, 'expected a list of node base URLs in priority order, e.g. ["http://127.0.0.1:8080/v1a/"]'
        )
    return tuple(_node_url(f"{key}[{i}]", item) for i, item in enumerate(raw))


def _address(key: str, raw: Any) -> str:
    from miningproxy.hathor.addresses import AddressError, decode_address

    text = _string(key, raw)
    try:
        decode_address(text)
    except AddressError as exc:
        raise ConfigError(
            key, f"{exc} (give a base58 Hathor address, e.g. H... on mainnet, W... on testnet)"
        ) from None
    return text


def _pool_tag(key: str, raw: Any) -> str:
    text = _string(key, raw)
    if len(text.encode()) > 60:
        raise ConfigError(
            key, "must be at most 60 bytes: it is written into every block's data with a job id"
        )
    return text


_SCHEMA: dict[str, tuple[type, dict[str, Callable]]] = {
    "upstream": (
        UpstreamConfig,
        {
            "nodes": _nodes,
            "template_timeout": _number(1, 3600),
            "failback_after": _number(0, 86400),
            "backoff_initial": _number(0.01, 600),
            "backoff_max": _number(0.01, 3600),
            "optimistic": _choice("auto", "on", "off"),
            "submit_timeout": _number(0.1, 600),
        },
    ),
    "pool": (
        PoolConfig,
        {
            "address": _address,
            "payout_mode": _choice("pool", "solo"),
            "tag": _pool_tag,
            "job_refresh": _number(1, 300),
        },
    ),
    "http": (HttpConfig, {"listen": _host_port}),
    "workers": (WorkersConfig, {"count": _integer(0, 1024), "share_weight": _number(0, 256)}),
    "devnode": (
        DevNodeConfig,
        {
            "enabled": _boolean,
            "listen": _host_port,
            "network": _string,
            "block_weight": _number(0, 256, lo_open=True),
            "min_weight": _number(0, 256, lo_open=True),
            "weight_decay_seconds": _number(0, 86400),
            "optimistic": _choice("works", "broken"),
        },
    ),
    "events": (
        EventsConfig,
        {
            "database": _string,
            "synchronous": _choice("full", "normal"),
            "network": _string,
            "consume_upstream": _boolean,
            "upstream_window": _integer(1, 100_000),
            "retention_count": _integer(1, 10**12),
            "retention_age": _number(60, 10**10),
            "retention_interval": _number(1, 86400),
            "send_timeout": _number(1, 3600),
        },
    ),
    "admin_ws": (
        AdminWsConfig,
        {
            "enabled": _boolean,
            "max_subscriptions_per_connection": _integer(1, 10**7),
            "metrics_interval": _number(0.1, 3600),
            "address_stats_interval": _number(1, 3600),
            "outbox_limit": _integer(8, 100_000),
            "send_timeout": _number(1, 3600),
            "max_history_streams": _integer(1, 1024),
        },
    ),
    "mining_ws": (
        MiningWsConfig,
        {
            "enabled": _boolean,
            "optimistic_wait": _number(0.1, 600),
            "max_submits_per_client": _integer(1, 10_000),
            "outbox_limit": _integer(8, 100_000),
            "send_timeout": _number(1, 3600),
        },
    ),
    "metrics": (MetricsConfig, {"per_rig": _boolean}),
    "log": (LogConfig, {"level": _choice("debug", "info", "warning", "error")}),
}

_REQUIRED = {"upstream": ("nodes",), "pool": ("address",)}


def _stratum_section(raw: Any) -> StratumSettings:
    """[stratum] with its [stratum.vardiff] and [stratum.ban] sub-tables; the Stratum module's own
    check() knows the ranges, this function the shapes."""
    if not isinstance(raw, Mapping):
        raise ConfigError("stratum", f"expected a [stratum] table, got {raw!r}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"stratum.{key}"
        if key in ("vardiff", "ban"):
            cls = VardiffSettings if key == "vardiff" else BanSettings
            if not isinstance(value, Mapping):
                raise ConfigError(name, f"expected a [{name}] table, got {value!r}")
            known = {f.name for f in fields(cls)}
            for sub in value:
                if sub not in known:
                    raise ConfigError(
                        f"{name}.{sub}", f"unknown key (known keys in [{name}]: {', '.join(sorted(known))})"
                    )
            for sub, sub_value in value.items():
                if isinstance(getattr(cls, sub, None), bool):
                    _boolean(f"{name}.{sub}", sub_value)
            values[key] = cls(**value)
        elif key in ("listen", "tls_listen"):
            hp = _host_port(name, value)
            values[key] = (hp.host, hp.port)
        elif key in ("tls_cert", "tls_key"):
            values[key] = _string(name, value)
        elif key == "proxy_protocol_from":
            if not isinstance(value, list):
                raise ConfigError(
                    name,
                    f'expected a list of balancer addresses or networks, e.g. ["10.0.0.5"], got {value!r}',
                )
            values[key] = tuple(value)  # each entry: StratumSettings.check()
        elif key in _STRATUM_BOOLS:
            values[key] = _boolean(name, value)
        elif key in _STRATUM_KEYS:
            values[key] = value  # ranges and types: StratumSettings.check()
        else:
            known = ", ".join(sorted(_STRATUM_KEYS | {"vardiff", "ban"}))
            raise ConfigError(name, f"unknown key (known keys in [stratum]: {known})")
    try:
        return StratumSettings(**values).check()
    except SettingsError as exc:
        raise ConfigError(exc.key, exc.message) from None


# per_worker_metrics is set from [metrics] per_rig: one switch for per-rig series.
_STRATUM_KEYS = {f.name for f in fields(StratumSettings)} - {"vardiff", "ban", "per_worker_metrics"}
_STRATUM_BOOLS = {"get_version"}


def _section(name: str, raw: Any) -> Any:
    if name == "stratum":
        return _stratum_section(raw)
    cls, readers = _SCHEMA[name]
    if not isinstance(raw, Mapping):
        raise ConfigError(name, f"expected a [{name}] table, got {raw!r}")
    for key in raw:
        if key not in readers:
            known = ", ".join(sorted(readers))
            raise ConfigError(f"{name}.{key}", f"unknown key (known keys in [{name}]: {known})")
    for key in _REQUIRED.get(name, ()):
        if key not in raw:
            raise ConfigError(f"{name}.{key}", "is required")
    values = {key: readers[key](f"{name}.{key}", value) for key, value in raw.items()}
    return cls(**values)


def config_from_dict(data: Mapping[str, Any], *, source: str = "<memory>") -> Config:
    for name in data:
        if name not in _SCHEMA and name != "stratum":
            raise ConfigError(
                name, f"unknown section (known sections: {', '.join(sorted([*_SCHEMA, 'stratum']))})"
            )
    for name in _REQUIRED:
        if name not in data:
            raise ConfigError(name, f"the [{name}] section is required")
    sections = {name: _section(name, raw) for name, raw in data.items()}
    config = Config(**sections, source=source)
    if config.metrics.per_rig != config.stratum.per_worker_metrics:
        config = replace(config, stratum=replace(config.stratum, per_worker_metrics=config.metrics.per_rig))
    _check_cross_keys(config)
    return config


def _check_cross_keys(config: Config) -> None:
    up = config.upstream
    if up.backoff_max < up.backoff_initial:
        raise ConfigError("upstream.backoff_max", "must be >= upstream.backoff_initial")
    dev = config.devnode
    if dev.enabled and dev.min_weight > dev.block_weight:
        raise ConfigError("devnode.min_weight", "must be <= devnode.block_weight")


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError("config", f"{path} is not UTF-8 text: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses on nested arrays and inline tables
        raise ConfigError("config", f"{path} is not usable TOML: nested too deeply") from None
    return config_from_dict(data, source=str(path))
