"""The node's JSON-RPC dispatch for /v1a/mining_ws, sans-IO.

Mirrors hathor-core's ``JsonRpcWebsocketServerProtocol`` (hathor/mining/ws.py) observable
behaviour, quirks included:
- replies never carry ``"jsonrpc"``: ``{"id", "error", "result"}``; errors always go out with
  ``"id": null`` (the node does not echo the request id on errors);
- a request without ``id`` (or ``id: null``) runs but gets no reply;
- a method ``a.b`` is looked up as ``a_b`` (so ``mining_refresh`` works too);
- params may be a list (positional) or an object (named); a call that does not bind (or any
  ``TypeError`` inside the method) is -32602 Invalid params, not fatal;
- unparseable JSON is -32700 Parse error, a request without ``method`` is -32600 Invalid Request,
  any other exception is -32603 Internal error: these three are FATAL (the node closes the socket);
- a batch (JSON list) is handled item by item; here the first fatal error ends it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RpcError:
    code: int
    message: str
    fatal: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


PARSE_ERROR = RpcError(-32700, "Parse error", fatal=True)
INVALID_REQUEST = RpcError(-32600, "Invalid Request", fatal=True)
METHOD_NOT_FOUND = RpcError(-32601, "Method not found")
INVALID_PARAMS = RpcError(-32602, "Invalid params")
INTERNAL_ERROR = RpcError(-32603, "Internal error", fatal=True)


def response(id: Any, result: Any) -> dict[str, Any]:
    return {"id": id, "error": None, "result": result}


def error_response(error: RpcError) -> dict[str, Any]:
    return {"id": None, "error": error.to_dict(), "result": None}


def notification(method: str, params: Any) -> dict[str, Any]:
    """A server push; like the node, ``params`` is left out when empty."""
    message: dict[str, Any] = {"id": None, "method": method}
    if params:
        message["params"] = params
    return message


def encode(message: Mapping[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class RpcOutcome:
    messages: tuple[dict[str, Any], ...]  # to send, in order
    close: bool  # a fatal error was answered: close the websocket after sending
    errors: tuple[str, ...] = ()  # what went wrong internally, for logs and tests


class NoReply(Exception):
    """Raised by a method that must not be answered at all (a test hook: a node that hangs)."""


class _Fatal(Exception):
    def __init__(self, error: RpcError, detail: str) -> None:
        super().__init__(detail)
        self.error = error


def handle_payload(payload: str | bytes, methods: Mapping[str, Callable[..., Any]]) -> RpcOutcome:
    """Run one websocket message against ``methods`` (keys like ``mining_submit``)."""
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return RpcOutcome((error_response(PARSE_ERROR),), True, (f"parse error: {exc}",))
    messages: list[dict[str, Any]] = []
    errors: list[str] = []
    try:
        for item in data if isinstance(data, list) else [data]:
            _handle_request(item, methods, messages, errors)
    except _Fatal as fatal:
        messages.append(error_response(fatal.error))
        errors.append(str(fatal))
        return RpcOutcome(tuple(messages), True, tuple(errors))
    return RpcOutcome(tuple(messages), False, tuple(errors))


def _handle_request(
    data: Any, methods: Mapping[str, Callable[..., Any]], out: list[dict[str, Any]], errors: list[str]
) -> None:
    if not isinstance(data, dict):
        # The node calls data.get(...) on it: an AttributeError, answered as Internal error.
        raise _Fatal(INTERNAL_ERROR, f"request is not an object: {type(data).__name__}")
    if "method" not in data:
        raise _Fatal(INVALID_REQUEST, "request has no method")
    if not isinstance(data["method"], str):
        raise _Fatal(INTERNAL_ERROR, f"method is not a string: {data['method']!r}")
    request_id = data.get("id")
    params = data.get("params", [])
    method = methods.get(data["method"].replace(".", "_"))
    if method is None:
        out.append(error_response(METHOD_NOT_FOUND))
        errors.append(f"method not found: {data['method']}")
        return
    try:
        if isinstance(params, list):
            result = method(*params)
        elif isinstance(params, dict):
            result = method(**params)
        else:
            raise TypeError("params has to be list, dict or null")
    except TypeError as exc:
        out.append(error_response(INVALID_PARAMS))
        errors.append(f"invalid params: {exc}")
        return
    except NoReply:
        return
    except Exception as exc:
        raise _Fatal(INTERNAL_ERROR, f"{type(exc).__name__}: {exc}") from exc
    if request_id is not None:
        out.append(response(request_id, result))
