"""Ban scores per peer IP. Pure: time comes in as ``now``.

Bad input (invalid shares, garbage lines) adds points; points drain at ``decay`` per second, so an
occasional bad share from a healthy rig is forgiven while a flood crosses ``threshold`` quickly.
Crossing it bans the IP for ``duration`` seconds. Loopback peers are exempt unless configured
otherwise. Memory is bounded: the least recently scored IPs are dropped first.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass

from miningproxy.stratum.settings import BanSettings

MAX_TRACKED = 65536


@dataclass(slots=True)
class _Score:
    points: float
    at: float
    banned_until: float = 0.0


def is_loopback(ip: str) -> bool:
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


class BanList:
    def __init__(self, settings: BanSettings, *, max_tracked: int = MAX_TRACKED) -> None:
        self.settings = settings
        self.max_tracked = max_tracked
        self._scores: OrderedDict[str, _Score] = OrderedDict()

    def exempt(self, ip: str) -> bool:
        return not self.settings.enabled or (not self.settings.loopback and is_loopback(ip))

    def score(self, ip: str, now: float) -> float:
        entry = self._scores.get(ip)
        return 0.0 if entry is None else self._drain(entry, now)

    def add(self, ip: str, points: float, now: float) -> bool:
        """Add points; True when this crosses the threshold (the IP is banned from now on)."""
        if points <= 0 or self.exempt(ip):
            return False
        entry = self._scores.get(ip)
        if entry is None:
            entry = self._scores[ip] = _Score(0.0, now)
            while len(self._scores) > self.max_tracked:
                self._scores.popitem(last=False)
        else:
            self._scores.move_to_end(ip)
        if entry.banned_until > now:
            return False  # already banned
        entry.points = self._drain(entry, now) + points
        if entry.points >= self.settings.threshold:
            entry.banned_until = now + self.settings.duration
            entry.points = 0.0
            return True
        return False

    def banned(self, ip: str, now: float) -> bool:
        entry = self._scores.get(ip)
        return entry is not None and entry.banned_until > now

    def _drain(self, entry: _Score, now: float) -> float:
        if now > entry.at:
            entry.points = max(0.0, entry.points - (now - entry.at) * self.settings.decay)
            entry.at = now
        return entry.points
