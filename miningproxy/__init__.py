"""miningproxy: a Stratum mining pool proxy for the Hathor Network."""

__version__ = "0.1.0"
