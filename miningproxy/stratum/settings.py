"""Settings of the Stratum server, with defaults and one place that checks them.

The lead's ``config.py`` reads the ``[stratum]`` TOML table (and its ``[stratum.vardiff]`` and
``[stratum.ban]`` sub-tables) into these dataclasses. :meth:`StratumSettings.check` raises
:class:`SettingsError` naming the offending key, so config.py can turn it into a ConfigError as is.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field

from hashing.pow import MAX_WEIGHT


class SettingsError(ValueError):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True)
class VardiffSettings:
    """Per-connection share weight control (weights are log2 of expected hashes per share)."""

    target_interval: float = 10.0  # seconds between shares, on average
    min_weight: float = 10.0
    max_weight: float = 128.0  # jobs never go above the block weight anyway
    initial_weight: float = 20.0
    ramp_time: float = 120.0  # after connecting: retarget after every `ramp_shares` shares
    ramp_shares: int = 4
    retarget_shares: int = 20  # afterwards: retarget after this many shares...
    retarget_time: float = 120.0  # ...or this many seconds, whichever comes first
    idle_after: float = 60.0  # no share for this long lowers the weight (2 intervals while ramping)
    min_change: float = 0.5  # smaller corrections are not worth a new job
    # Retargets land on multiples of this: rigs then share a few weights, and every rig at one
    # weight gets its job on the same terms (built once per block, not once per rig).
    weight_step: float = 0.0625

    def check(self, prefix: str = "stratum.vardiff") -> None:
        _positive(f"{prefix}.target_interval", self.target_interval, hi=3600)
        for key in ("min_weight", "max_weight", "initial_weight"):
            value = getattr(self, key)
            if not _finite(value) or not 0 < value <= MAX_WEIGHT:
                raise SettingsError(f"{prefix}.{key}", f"must lie in (0, {MAX_WEIGHT:g}], got {value!r}")
        if self.max_weight < self.min_weight:
            raise SettingsError(f"{prefix}.max_weight", f"must be >= {prefix}.min_weight")
        if not self.min_weight <= self.initial_weight <= self.max_weight:
            raise SettingsError(
                f"{prefix}.initial_weight", f"must lie between {prefix}.min_weight and max_weight"
            )
        _non_negative(f"{prefix}.ramp_time", self.ramp_time)
        _count(f"{prefix}.ramp_shares", self.ramp_shares, 1, 1000)
        _count(f"{prefix}.retarget_shares", self.retarget_shares, 1, 100_000)
        _positive(f"{prefix}.retarget_time", self.retarget_time, hi=86400)
        _positive(f"{prefix}.idle_after", self.idle_after, hi=86400)
        if not _finite(self.min_change) or not 0 <= self.min_change <= 16:
            raise SettingsError(f"{prefix}.min_change", f"must lie in [0, 16], got {self.min_change!r}")
        if not _finite(self.weight_step) or not 0 < self.weight_step <= 1:
            raise SettingsError(
                f"{prefix}.weight_step",
                f"must lie in (0, 1] (0.0625: steps of 1/16), got {self.weight_step!r}",
            )


@dataclass(frozen=True)
class BanSettings:
    """A score per peer IP: bad input adds points, time takes them away; at `threshold` the IP is banned."""

    enabled: bool = True
    threshold: float = 100.0
    decay: float = 1.0  # points forgiven per second
    duration: float = 600.0  # seconds a banned IP is refused
    invalid_share: float = 1.0  # points for an invalid, duplicate or unknown-job share
    garbage: float = 25.0  # points for a line that is not JSON-RPC, too long, or not UTF-8
    loopback: bool = False  # score loopback peers too (off: local rigs and tests are trusted)

    def check(self, prefix: str = "stratum.ban") -> None:
        _positive(f"{prefix}.threshold", self.threshold, hi=1e9)
        _non_negative(f"{prefix}.decay", self.decay)
        _non_negative(f"{prefix}.duration", self.duration)
        _non_negative(f"{prefix}.invalid_share", self.invalid_share)
        _non_negative(f"{prefix}.garbage", self.garbage)


@dataclass(frozen=True)
class StratumSettings:
    listen: tuple[str, int] = ("127.0.0.1", 8000)
    tls_listen: tuple[str, int] | None = None  # a second listener speaking TLS
    tls_cert: str | None = None  # PEM certificate chain
    tls_key: str | None = None  # PEM private key
    max_line: int = 16384  # bytes; a longer line is an error and the connection is closed
    max_connections: int = 10000
    max_per_ip: int = 256
    subscribe_timeout: float = 30.0  # a connection that does not subscribe by then is closed
    authorize_timeout: float = 10.0  # solo mode: time to name a payout address after subscribing
    job_interval: float = 30.0  # a fresh job at least this often (rigs reconnect after 300 s of silence)
    job_history: int = 8  # jobs per connection a share may still refer to
    send_timeout: float = 10.0  # a rig whose socket does not take our bytes for this long is cut off
    max_outbox: int = 262144  # bytes queued for one rig before it is cut off as too slow
    shutdown_grace: float = 1.0  # seconds to process submits already on the wire at shutdown
    get_version: bool = True  # ask each rig its version (client.get_version) after the first job
    per_worker_metrics: bool = False  # hashrate gauges per address and worker (label cardinality!)
    # Load balancers (addresses or networks) whose connections start with a PROXY protocol header
    # naming the rig's own address (see proxy_protocol.py); empty: no header is read from anyone.
    proxy_protocol_from: tuple[str, ...] = ()
    vardiff: VardiffSettings = field(default_factory=VardiffSettings)
    ban: BanSettings = field(default_factory=BanSettings)

    def check(self) -> StratumSettings:
        """Raise SettingsError naming the first bad key; return self so it chains."""
        _listen("stratum.listen", self.listen)
        if self.tls_listen is not None:
            _listen("stratum.tls_listen", self.tls_listen)
            if not self.tls_cert:
                raise SettingsError("stratum.tls_cert", "is required when stratum.tls_listen is set")
            if not self.tls_key:
                raise SettingsError("stratum.tls_key", "is required when stratum.tls_listen is set")
        _count("stratum.max_line", self.max_line, 256, 1 << 24)
        _count("stratum.max_connections", self.max_connections, 1, 1_000_000)
        _count("stratum.max_per_ip", self.max_per_ip, 1, 1_000_000)
        _positive("stratum.subscribe_timeout", self.subscribe_timeout, hi=3600)
        _positive("stratum.authorize_timeout", self.authorize_timeout, hi=3600)
        _positive("stratum.job_interval", self.job_interval, hi=300)
        _count("stratum.job_history", self.job_history, 1, 1024)
        _positive("stratum.send_timeout", self.send_timeout, hi=3600)
        _count("stratum.max_outbox", self.max_outbox, 4096, 1 << 30)
        _non_negative("stratum.shutdown_grace", self.shutdown_grace)
        self.proxy_networks()
        self.vardiff.check()
        self.ban.check()
        return self

    def proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """``proxy_protocol_from`` as networks; SettingsError names a bad entry and the fix."""
        key = "stratum.proxy_protocol_from"
        if not isinstance(self.proxy_protocol_from, tuple):
            raise SettingsError(
                key,
                f'expected a tuple of addresses or networks such as ("10.0.0.5", "10.1.0.0/24"), got {self.proxy_protocol_from!r}',
            )
        networks = []
        for i, entry in enumerate(self.proxy_protocol_from):
            if not isinstance(entry, str):
                raise SettingsError(
                    f"{key}[{i}]", f"expected an address or a network as a string, got {entry!r}"
                )
            try:
                # strict: "10.0.0.5/8" is refused, not read as all of 10.0.0.0/8 (a trust list
                # must not grow by a typo)
                networks.append(ipaddress.ip_network(entry.strip(), strict=True))
            except ValueError as exc:
                raise SettingsError(
                    f"{key}[{i}]",
                    f"{entry!r} is not an address or a network ({exc}); write a balancer's address "
                    '("10.0.0.5") or its network with the host bits zero ("10.0.0.0/24")',
                ) from None
        return tuple(networks)


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive(key: str, value: float, *, hi: float) -> None:
    if not _finite(value) or not 0 < value <= hi:
        raise SettingsError(key, f"must lie in (0, {hi:g}], got {value!r}")


def _non_negative(key: str, value: float) -> None:
    if not _finite(value) or value < 0:
        raise SettingsError(key, f"must be a number >= 0, got {value!r}")


def _count(key: str, value: int, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise SettingsError(key, f"must be a whole number in [{lo}, {hi}], got {value!r}")


def _listen(key: str, value: tuple[str, int]) -> None:
    if (
        not isinstance(value, tuple)
        or len(value) != 2
        or not isinstance(value[0], str)
        or isinstance(value[1], bool)
        or not isinstance(value[1], int)
        or not 0 <= value[1] <= 65535
    ):
        raise SettingsError(key, f'expected ("HOST", PORT) with a port in 0..65535, got {value!r}')
