"""Hathor Stratum for mining rigs: a sans-IO session (session.py) with its framing and vardiff,
and the trio TCP/TLS server around it (server.py)."""

from miningproxy.stratum.server import StratumServer
from miningproxy.stratum.settings import BanSettings, SettingsError, StratumSettings, VardiffSettings

__all__ = ["BanSettings", "SettingsError", "StratumServer", "StratumSettings", "VardiffSettings"]
