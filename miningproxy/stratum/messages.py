"""Hathor Stratum messages as the node writes them (see protocol/transcripts/stratum.jsonl).

- A reply: ``{"result": ..., "error": null, "id": <the request's id, same JSON type>}``.
- An error: ``{"error": {"code", "message"}, "data": ..., "id": ...}``; ``data`` sits beside
  ``error`` (not inside it) and an unprompted error carries no ``id`` at all, exactly as the node.
- A request to the rig: ``{"method", "params", "id"}``; jobs are numbered with string ids ("0",
  "1", ...) like the node's; a request whose answer we want (client.get_version) gets an integer
  id, because cgminer answers with ``json_integer_value(id)``.
JSON-RPC errors with a code <= -32600 close the connection after they are sent.
"""

from __future__ import annotations

import json
from typing import Any

PARSE_ERROR = (-32700, "Parse error")
INVALID_REQUEST = (-32600, "Invalid Request")
METHOD_NOT_FOUND = (-32601, "Method not found")
INVALID_PARAMS = (-32602, "Invalid params")

NODE_SYNCING = (10, "Node syncing")
INVALID_ADDRESS = (22, "Address to send mined funds is invalid")
INVALID_SOLUTION = (30, "Invalid solution")
STALE_JOB = (31, "Stale job submitted")
JOB_NOT_FOUND = (32, "Job not found")
DUPLICATE_SOLUTION = (34, "Solution already submitted")
SHUTTING_DOWN = (40, "Shutting down")

FATAL_CODE_MAX = -32600  # errors at or below this code close the connection

NO_ID = object()  # marker: write no "id" member (unprompted errors, as the node does)

_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def encode(message: dict[str, Any]) -> bytes:
    return (_encoder.encode(message) + "\n").encode("ascii")


def result(msgid: Any, value: Any) -> dict[str, Any]:
    return {"result": value, "error": None, "id": msgid}


def error(msgid: Any, err: tuple[int, str], data: Any = None) -> dict[str, Any]:
    message: dict[str, Any] = {"error": {"code": err[0], "message": err[1]}, "data": data}
    if msgid is not NO_ID:
        message["id"] = msgid
    return message


def request(msgid: Any, method: str, params: Any) -> dict[str, Any]:
    return {"method": method, "params": params, "id": msgid}


def is_fatal(err: tuple[int, str]) -> bool:
    return err[0] <= FATAL_CODE_MAX
