"""A stand-in for the full node's own Stratum server, for the benchmark's rig simulator tests.

It behaves as hathor-core v0.69.0's Stratum did on this machine (``--stratum`` on the unittests
network) and as ``protocol/transcripts/stratum.jsonl`` records: compact JSON; a subscribe with
``{"address": ...}`` answered ``{"result":"ok",...}`` and then a ``job`` request; no
``authorize`` (answered -32601 "Method not found", then the connection is closed, as for every
JSON-RPC code <= -32600); one share per job (a second share on it is 31 "Stale job submitted"),
a share that misses the job's weight 30 "Invalid solution", an unknown job 32, and a new job
after every accepted share.
"""

from __future__ import annotations

import hashlib
import json
import os
import socketserver
import threading
from typing import Any

from hashing.pow import target_to_bytes, weight_to_target

SHARE_WEIGHT = 2.0  # the unittests network's minimum share weight


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


class _Rig(socketserver.StreamRequestHandler):
    server: NodeStratum

    def handle(self) -> None:
        self.job: tuple[str, bytes] | None = None  # (job id, header) of the current job
        self.issued: set[str] = set()
        self.jobs_sent = 0
        for raw in self.rfile:
            try:
                message = json.loads(raw)
            except ValueError:
                return
            if not self.answer(message):
                return

    def answer(self, message: dict[str, Any]) -> bool:
        """Answer one request; False once the connection is to be closed."""
        method, msgid, params = message.get("method"), message.get("id"), message.get("params") or {}
        if method == "subscribe":
            self.wfile.write(_line({"result": "ok", "error": None, "id": msgid}) + self.new_job())
            return True
        if method == "submit":
            self.wfile.write(self.submit(msgid, params))
            return True
        if method == "authorize" and self.server.authorize == "ignore":
            return True
        self.wfile.write(
            _line(
                {
                    "error": {"code": -32601, "message": "Method not found"},
                    "data": {"method": method, "supported_methods": ["submit", "subscribe"]},
                    "id": msgid,
                }
            )
        )
        return False

    def new_job(self) -> bytes:
        job_id, header = os.urandom(16).hex(), os.urandom(64)
        self.job = (job_id, header)
        self.issued.add(job_id)
        params = {
            "data": header.hex(),
            "job_id": job_id,
            "nonce_size": 16,
            "weight": self.server.share_weight,
            "parent_hash": os.urandom(32).hex(),
        }
        self.jobs_sent += 1
        return _line({"method": "job", "params": params, "id": str(self.jobs_sent - 1)})

    def submit(self, msgid: Any, params: dict[str, Any]) -> bytes:
        def error(code: int, text: str) -> bytes:
            return _line({"error": {"code": code, "message": text}, "data": {}, "id": msgid})

        assert self.job is not None
        job_id, header = self.job
        if params.get("job_id") != job_id:  # an earlier job (answered or replaced), or none of ours
            return (
                error(31, "Stale job submitted")
                if params.get("job_id") in self.issued
                else error(32, "Job not found")
            )
        nonce = int(params["nonce"], 16).to_bytes(16, "big")
        digest = hashlib.sha256(hashlib.sha256(header + nonce).digest()).digest()[::-1]
        if digest >= target_to_bytes(weight_to_target(self.server.share_weight)):
            return error(30, "Invalid solution")
        with self.server.lock:  # (one handler thread per rig)
            self.server.accepted += 1
        return _line({"result": "ok", "error": None, "id": msgid}) + self.new_job()


class NodeStratum(socketserver.ThreadingTCPServer):
    """``with NodeStratum() as node:`` serves on ``node.port`` (loopback) until the block ends.

    ``authorize="ignore"`` never answers authorize and keeps the connection, as tx-mining-service
    does; ``share_weight`` is the weight of every job."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, *, authorize: str = "close", share_weight: float = SHARE_WEIGHT) -> None:
        super().__init__(("127.0.0.1", 0), _Rig)
        self.port = self.server_address[1]
        self.accepted = 0
        self.lock = threading.Lock()
        self.authorize = authorize
        self.share_weight = share_weight
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> NodeStratum:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
