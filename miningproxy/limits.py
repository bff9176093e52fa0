"""The open-file limit: raised at start-up as far as the system allows, and what it allows.

Every rig, websocket client and HTTP connection holds one file descriptor. Distributions start
processes with a soft limit of 1024 while allowing far more (the hard limit), so the soft limit is
raised to the hard one at start-up and both are logged. What the limit still cannot hold is
refused cleanly instead of failing at ``accept()``: the Stratum server's ``max_connections`` is
lowered to the limit minus a reserve (the database, upstream websockets, worker pipes, HTTP), so
an extra rig is accepted, counted (``limit="max_connections"``) and closed. Should the process
run out anyway (thousands of websocket clients), trio's listeners log ``EMFILE`` and pause
accepting briefly; connections already open are unaffected.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from miningproxy.config import Config

log = logging.getLogger("miningproxy.limits")

RESERVE = 64  # descriptors kept for everything but rigs
NR_OPEN = "/proc/sys/fs/nr_open"  # Linux: the ceiling of RLIMIT_NOFILE when the hard limit is infinite


@dataclass(frozen=True)
class FileLimit:
    before: int  # the soft limit the process started with
    soft: int  # the soft limit now
    hard: int  # the hard limit (-1: unlimited)

    @property
    def raised(self) -> bool:
        return self.soft > self.before


def _ceiling(hard: int) -> int:
    import resource

    if hard != resource.RLIM_INFINITY:
        return hard
    try:
        with open(NR_OPEN) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20


def raise_open_file_limit() -> FileLimit | None:
    """Raise the soft RLIMIT_NOFILE to the hard limit; None where there is no such limit."""
    try:
        import resource
    except ImportError:  # not on this platform
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _ceiling(hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        for want in (target, 10240):  # macOS refuses more than OPEN_MAX whatever the hard limit says
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
                break
            except (ValueError, OSError):
                continue
    now, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return FileLimit(soft, now, -1 if hard == resource.RLIM_INFINITY else hard)


def connection_budget(limit: FileLimit, reserve: int = RESERVE) -> int:
    """How many rigs the open-file limit can hold beside everything else."""
    return max(1, limit.soft - reserve)


def apply_open_file_limit(config: Config) -> Config:
    """Raise the limit, log it, and fit ``stratum.max_connections`` under it; returns the config."""
    limit = raise_open_file_limit()
    if limit is None:
        return config
    hard = "unlimited" if limit.hard < 0 else str(limit.hard)
    if limit.raised:
        log.info("open-file limit raised from %d to %d (hard limit %s)", limit.before, limit.soft, hard)
    else:
        log.info("open-file limit is %d (hard limit %s)", limit.soft, hard)
    budget = connection_budget(limit)
    wanted = config.stratum.max_connections
    if wanted <= budget:
        return config
    log.warning(
        "stratum.max_connections is %d but the open-file limit (%d) leaves room for %d rigs: "
        "refusing rigs beyond %d (raise the limit, e.g. `ulimit -n` or systemd LimitNOFILE=)",
        wanted,
        limit.soft,
        budget,
        budget,
    )
    stratum = dataclasses.replace(config.stratum, max_connections=budget)
    return dataclasses.replace(config, stratum=stratum)
