"""Hathor Stratum for mining rigs: a sans-IO session (session.py) with its framing and vardiff,
and the trio TCP/TLS server around it (server.py)."""
