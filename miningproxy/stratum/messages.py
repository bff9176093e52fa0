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
import math
from json.encoder import encode_basestring_ascii
from typing import Any

PARSE_ERROR = (-32700, "Parse error")
INVALID_REQUEST = (-32600, "Invalid Request")
METHOD_NOT_FOUND = (-32601, "Method not found")
INVALID_PARAMS = (-32602, "Invalid params")

NODE_SYNCING = (10, "Node syncing")
NOT_RECORDED = (20, "Other/Unknown: share not recorded")  # Stratum's "other" code: our storage failed
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


_OK_HEAD = b'{"result":"ok","error":null,"id":'


def encode_ok(msgid: Any) -> bytes:
    """``encode(result(msgid, "ok"))`` byte for byte, without a dict and an encoder pass: the
    answer to every accepted share."""
    if type(msgid) is int:
        return b"%s%d}\n" % (_OK_HEAD, msgid)
    if type(msgid) is str:
        return b"%s%s}\n" % (_OK_HEAD, encode_basestring_ascii(msgid).encode("ascii"))
    return encode(result(msgid, "ok"))


def job_parts(nonce_size: int, weight: float, clean: bool, parent_hash: str) -> tuple[str, str, str, str]:
    """A job request's line, ``encode(request(str(msgid), "job", {...}))`` byte for byte, around
    what is each job's own: the line is ``head + data + after_data + job_id + after_id + str(msgid)
    + tail`` (an f-string of the parts: half the cost of a %-format of the whole line). ``data``,
    ``job_id`` and ``parent_hash`` are hex (nothing to escape); ``weight`` is written as the encoder
    writes a float (``float.__repr__``). What the jobs of one template and one weight share: the
    session keeps the parts per job terms and writes the line itself."""
    if not math.isfinite(weight):
        raise ValueError(f"Out of range float values are not JSON compliant: {weight!r}")
    return (
        '{"method":"job","params":{"data":"',
        '","job_id":"',
        f'","nonce_size":{nonce_size:d},"weight":{float.__repr__(weight)},'
        f'"clean":{"true" if clean else "false"},"parent_hash":"{parent_hash}"}},"id":"',
        '"}\n',
    )


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
