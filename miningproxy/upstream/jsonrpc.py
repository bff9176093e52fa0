"""Sans-IO JSON-RPC session for a Hathor node's mining websocket (``/v1a/mining_ws``).

Builds request frames, tracks pending request ids and turns each incoming frame into exactly one
event. It never raises on input: anything malformed becomes a ProtocolError event.

Node quirks handled here (see protocol/HATHOR.md and hathor-core's hathor/mining/ws.py):
- replies carry no "jsonrpc" key; the node tolerates ours;
- every error reply has ``"id": null``, so errors are matched to the oldest pending request (the node
  answers in order); a fatal error (-32603 Internal error, also -32700/-32600) is followed by a close,
  and -32603 is attributed to the in-flight submit, since a failed (or optimistic) submit causes it;
- ``mining.notify`` omits ``params`` when the template list is empty (node syncing);
- a working ``optimistic`` submit answers with the next template (a dict) instead of ``true``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from miningproxy.hathor.template import BlockTemplate, TemplateError, parse_templates

NOTIFY = "mining.notify"
REFRESH = "mining.refresh"
SUBMIT = "mining.submit"

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# The node sends a close right after these (JsonRpcError(..., fatal=True) in hathor-core).
FATAL_CODES = frozenset({PARSE_ERROR, INVALID_REQUEST, INTERNAL_ERROR})

_EXCERPT = 200  # characters of a bad frame kept in a ProtocolError, for logs


@dataclass(frozen=True)
class Request:
    """A request we sent; ``text`` is the frame."""

    id: int
    method: str
    params: Any
    text: str


@dataclass(frozen=True)
class Notify:
    """``mining.notify``: the node pushed its current templates (empty while the node syncs)."""

    templates: tuple[BlockTemplate, ...]


@dataclass(frozen=True)
class Result:
    """A successful reply. ``templates`` is set when the result carries templates (a refresh, or a
    working optimistic submit); ``value`` is the raw JSON result."""

    request: Request
    value: Any
    templates: tuple[BlockTemplate, ...] | None = None


@dataclass(frozen=True)
class ErrorReply:
    """An error reply, attributed to the request it answers (None when nothing was pending).

    ``fatal``: the node closes the socket after it.
    """

    request: Request | None
    code: int
    message: str
    fatal: bool


@dataclass(frozen=True)
class ProtocolError:
    """A frame we cannot make sense of. ``request`` is set when it was a reply to one of ours."""

    reason: str
    excerpt: str
    request: Request | None = None


Event = Notify | Result | ErrorReply | ProtocolError


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _templates(params: object) -> tuple[BlockTemplate, ...]:
    """The templates in a notify/refresh payload; () for the empty list a syncing node sends.

    Raises TemplateError (a ValueError) for anything malformed.
    """
    if isinstance(params, list) and not params:
        return ()
    return tuple(parse_templates(params))


class MiningSession:
    """One websocket connection's JSON-RPC state: request ids and what is still unanswered."""

    def __init__(self) -> None:
        self._next_id = 1
        self._pending: dict[int, Request] = {}  # insertion order = send order

    @property
    def pending(self) -> tuple[Request, ...]:
        return tuple(self._pending.values())

    def request(self, method: str, params: Any) -> Request:
        rid = self._next_id
        self._next_id += 1
        frame = {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}
        req = Request(rid, method, params, json.dumps(frame, separators=(",", ":")))
        self._pending[rid] = req
        return req

    def refresh(self) -> Request:
        return self.request(REFRESH, [])

    def submit(self, hexdata: str, *, optimistic: bool) -> Request:
        params = {"hexdata": hexdata, "optimistic": bool(optimistic)}
        if not (hexdata.isascii() and hexdata.isalnum()):
            return self.request(SUBMIT, params)
        # A found block waits on this: format the frame (letters and digits need no JSON escape),
        # the same bytes as request()'s json.dumps, without building an encoder per call.
        rid = self._next_id
        self._next_id += 1
        text = (
            f'{{"jsonrpc":"2.0","id":{rid:d},"method":"{SUBMIT}",'
            f'"params":{{"hexdata":"{hexdata}","optimistic":{"true" if optimistic else "false"}}}}}'
        )
        req = self._pending[rid] = Request(rid, SUBMIT, params, text)
        return req

    def abandon(self, request_id: int) -> None:
        """Forget one request that was never sent."""
        self._pending.pop(request_id, None)

    def abandon_pending(self) -> tuple[Request, ...]:
        """Forget every unanswered request (the connection is gone) and return them, oldest first."""
        reqs = tuple(self._pending.values())
        self._pending.clear()
        return reqs

    def receive(self, frame: str | bytes) -> Event:
        """Classify one incoming frame. Never raises for bad input."""
        if isinstance(frame, bytes | bytearray):
            try:
                frame = bytes(frame).decode("utf-8")
            except UnicodeDecodeError:
                return ProtocolError("binary frame is not UTF-8", repr(bytes(frame)[:_EXCERPT]))
        excerpt = frame[:_EXCERPT]
        try:
            msg = json.loads(frame)
        except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
            return ProtocolError(f"not JSON: {e}", excerpt)
        if not isinstance(msg, dict):
            return ProtocolError(f"frame is a JSON {type(msg).__name__}, not an object", excerpt)
        if msg.get("method") is not None:
            return self._notification(msg, excerpt)
        if "id" not in msg:
            return ProtocolError("frame has neither a method nor an id", excerpt)
        rid = msg["id"]
        if rid is not None and not _is_int(rid):
            return ProtocolError(f"reply id must be an integer or null, got {rid!r:.40}", excerpt)
        if msg.get("error") is not None:
            return self._error(rid, msg["error"], excerpt)
        return self._result(rid, msg.get("result"), excerpt)

    def _notification(self, msg: dict, excerpt: str) -> Event:
        method = msg["method"]
        if method != NOTIFY:
            return ProtocolError(f"unexpected method {method!r:.60} from the node", excerpt)
        try:
            return Notify(_templates(msg.get("params", [])))
        except TemplateError as e:
            return ProtocolError(f"bad templates in {NOTIFY}: {e}", excerpt)

    def _error(self, rid: int | None, error: object, excerpt: str) -> Event:
        if not isinstance(error, dict) or not _is_int(error.get("code")):
            return ProtocolError(f"error must be an object with an integer code, got {error!r:.80}", excerpt)
        message = error.get("message", "")
        if not isinstance(message, str):
            return ProtocolError(f"error message must be a string, got {message!r:.60}", excerpt)
        code = error["code"]
        if rid is not None:
            req = self._pending.pop(rid, None)
        else:
            req = self._attribute(code)
        return ErrorReply(req, code, message, code in FATAL_CODES)

    def _attribute(self, code: int) -> Request | None:
        """The request an id-less error answers: the oldest pending one (the node answers in order);
        for Internal error the in-flight submit, the only request of ours that causes it."""
        candidates = list(self._pending.values())
        if code == INTERNAL_ERROR:
            candidates = [r for r in candidates if r.method == SUBMIT] or candidates
        if not candidates:
            return None
        return self._pending.pop(candidates[0].id)

    def _result(self, rid: int | None, value: object, excerpt: str) -> Event:
        if rid is None:
            return ProtocolError("a result without an id", excerpt)
        req = self._pending.pop(rid, None)
        if req is None:
            return ProtocolError(f"reply to unknown request id {rid}", excerpt)
        if req.method == REFRESH:
            try:
                return Result(req, value, _templates(value))
            except TemplateError as e:
                return ProtocolError(f"bad templates in the {REFRESH} result: {e}", excerpt, req)
        if req.method == SUBMIT and value and not isinstance(value, bool):
            # A working optimistic submit answers with the next template (a dict; a list is accepted too).
            try:
                templates = _templates(value if isinstance(value, list) else [value])
            except TemplateError:
                templates = None  # still an acceptance; the next notify brings the template
            return Result(req, value, templates or None)
        return Result(req, value)
