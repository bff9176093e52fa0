"""The proxy's mining websocket: ``/mining`` and ``/v1a/mining_ws``, a caching relay of the node's.

Clients written for a node's mining websocket work unchanged, through the proxy's ONE upstream
connection (the :class:`MiningUpstream` the pool uses), however many of them there are:

- ``mining.notify`` ``{"id": null, "method": "mining.notify", "params": [templates]}`` on connect
  and on every template change, from the proxy's cache (never with empty params: a client
  connecting before the first template gets its first notify when the template arrives);
- ``mining.refresh`` answered from the cache (``[]`` while there is none, as a syncing node);
- ``mining.submit`` (named ``{"hexdata", "optimistic"}`` or positional params) checked here (it must
  parse as a block and its hash must meet its own weight: the node closes its socket on a bad block)
  and forwarded upstream; the answer is ``true`` (accepted), ``false`` (not the tip) or an
  ``Internal error`` whose ``data`` says why. With ``optimistic: true`` an accepted block is
  answered with the next template the proxy learns (the one on this block), whatever the upstream's
  own optimistic mode does (it is broken on every node release).

Replies never carry ``"jsonrpc"`` (as the node's); unlike the node's, every reply, errors
included, carries the request's ``id`` exactly as sent (any JSON value), so no client waits forever
for an id-less error. Errors never close the connection.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio
import trio_websocket

from hashing.header import check_pow
from miningproxy.api.fanout import ClientTooSlow, Outbox, cut_off, encode, write_outbox
from miningproxy.api.http import HttpRequest, Router
from miningproxy.hathor.block import BlockParseError, parse_block
from miningproxy.hathor.template import BlockTemplate
from miningproxy.latest import LatestValue

log = logging.getLogger("miningproxy.api.mining")

MINING_WS_PATHS = ("/mining", "/v1a/mining_ws")
PARSE_ERROR = (-32700, "Parse error")
INVALID_REQUEST = (-32600, "Invalid Request")
METHOD_NOT_FOUND = (-32601, "Method not found")
INVALID_PARAMS = (-32602, "Invalid params")
INTERNAL_ERROR = (-32603, "Internal error")
TX_VERSIONS = (1, 2)  # a transaction submitted as a block: the node answers false


class _Upstream(Protocol):
    templates: LatestValue[Any]

    async def submit(self, struct: bytes, *, block_hash: bytes) -> Any: ...


# --- sans-IO: one client frame -> replies and submissions -------------------------------------


@dataclass(frozen=True)
class SubmitCall:
    """A checked block to forward upstream; ``id`` None: a notification (no reply)."""

    id: Any
    struct: bytes
    block_hash: bytes
    optimistic: bool


def notify(templates: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {"id": None, "method": "mining.notify", "params": list(templates)}


def result(request_id: Any, value: Any) -> dict[str, Any]:
    return {"id": request_id, "error": None, "result": value}


def error(request_id: Any, code_message: tuple[int, str], data: Any = None) -> dict[str, Any]:
    code, message = code_message
    body: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        body["data"] = data
    return {"id": request_id, "error": body, "result": None}


Templates = list[dict[str, Any]] | Callable[[], list[dict[str, Any]]]


def handle_payload(payload: str | bytes, templates: Templates) -> list[dict[str, Any] | SubmitCall]:
    """Replies (dicts, in order) and submissions for one websocket message; never raises.
    ``templates``: the cached templates, or a function giving them (called only for a refresh)."""
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        return [error(None, PARSE_ERROR)]
    items = data if isinstance(data, list) else [data]
    out: list[dict[str, Any] | SubmitCall] = []
    for item in items:
        out.extend(_handle_request(item, templates))
    return out


def _handle_request(item: Any, templates: Templates) -> list[dict[str, Any] | SubmitCall]:
    if not isinstance(item, dict):
        return [error(None, INVALID_REQUEST, "a request must be a JSON object")]
    request_id = item.get("id")
    method = item.get("method")
    if not isinstance(method, str):
        return [error(request_id, INVALID_REQUEST, "missing or invalid 'method'")]
    name = method.replace(".", "_")
    params = item.get("params", [])
    if name == "mining_refresh":
        if request_id is None:
            return []
        return [result(request_id, templates() if callable(templates) else templates)]
    if name == "mining_submit":
        return [_submit(request_id, params)]
    return [error(request_id, METHOD_NOT_FOUND)]


def _submit(request_id: Any, params: Any) -> dict[str, Any] | SubmitCall:
    if isinstance(params, list) and 1 <= len(params) <= 2:
        hexdata, optimistic = params[0], params[1] if len(params) > 1 else False
    elif isinstance(params, dict) and "hexdata" in params and set(params) <= {"hexdata", "optimistic"}:
        hexdata, optimistic = params["hexdata"], params.get("optimistic", False)
    else:
        return error(request_id, INVALID_PARAMS, "expected {hexdata, optimistic} or [hexdata, optimistic]")
    if not isinstance(hexdata, str):
        return error(request_id, INVALID_PARAMS, "hexdata must be a hex string")
    try:
        struct = bytes.fromhex(hexdata)
    except ValueError:
        return error(request_id, INVALID_PARAMS, "hexdata is not hex")
    if len(struct) >= 2 and struct[1] in TX_VERSIONS:
        return result(request_id, False)  # the node's answer to a transaction
    try:
        block = parse_block(struct)
    except (BlockParseError, ValueError) as exc:
        return error(request_id, INTERNAL_ERROR, f"cannot parse block: {exc}")
    block_hash = block.hash()
    if not check_pow(block_hash, block.weight):
        return error(
            request_id,
            INTERNAL_ERROR,
            f"block {block_hash.hex()} does not meet its weight {block.weight}: not submitted",
        )
    return SubmitCall(request_id, struct, block_hash, bool(optimistic))


# --- the trio layer ------------------------------------------------------------------------------


class MiningRelay:
    def __init__(
        self,
        upstream: _Upstream,
        *,
        optimistic_wait: float = 5.0,
        max_submits: int = 16,
        outbox_limit: int = 64,
        send_timeout: float = 30.0,
    ) -> None:
        self.upstream = upstream
        self.optimistic_wait = optimistic_wait
        self.max_submits = max_submits
        self.outbox_limit = outbox_limit
        self.send_timeout = send_timeout
        self.clients = 0
        self._notify_cache: tuple[Any, str] | None = None  # (update, encoded notify): encode once

    def mount(self, router: Router) -> None:
        for path in MINING_WS_PATHS:
            router.websocket(path, self.handler)

    def templates_json(self) -> list[dict[str, Any]]:
        update = self.upstream.templates.current
        if update is None:
            return []
        return [t.to_json() for t in update.templates]

    def _notify_text(self, update: Any) -> str:
        cached = self._notify_cache
        if cached is None or cached[0] is not update:
            cached = self._notify_cache = (update, encode(notify([t.to_json() for t in update.templates])))
        return cached[1]

    async def handler(self, ws: trio_websocket.WebSocketConnection, request: HttpRequest) -> None:
        outbox = Outbox(self.outbox_limit)
        submits = trio.Semaphore(self.max_submits)  # bounds the submits in flight per client
        self.clients += 1
        reason: str | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write, ws, outbox, nursery.cancel_scope)
                nursery.start_soon(self._notify, outbox)
                nursery.start_soon(self._watch_cut, outbox)
                try:
                    while True:
                        payload = await ws.get_message()
                        for item in handle_payload(payload, self.templates_json):
                            if isinstance(item, SubmitCall):
                                await submits.acquire()
                                nursery.start_soon(self._submit, item, outbox, submits)
                            else:
                                outbox.put(encode(item))
                except trio_websocket.ConnectionClosed:
                    pass
                nursery.cancel_scope.cancel()
        except* ClientTooSlow as group:
            reason = str(group.exceptions[0])
        except* trio_websocket.ConnectionClosed:
            pass
        finally:
            self.clients -= 1
        if reason is not None:
            log.warning("mining client %s cut off: %s", request.peer or "?", reason)
            await cut_off(ws, reason)

    async def _write(
        self, ws: trio_websocket.WebSocketConnection, outbox: Outbox, scope: trio.CancelScope
    ) -> None:
        try:
            await write_outbox(ws, outbox, send_timeout=self.send_timeout)
        except trio_websocket.ConnectionClosed:
            scope.cancel()

    async def _watch_cut(self, outbox: Outbox) -> None:
        await outbox.cut.wait()
        raise ClientTooSlow(outbox.overflow or "too slow")

    async def _notify(self, outbox: Outbox) -> None:
        async for update in self.upstream.templates.subscribe():
            if update.templates:  # never a notify with empty params
                outbox.put_latest("notify", self._notify_text(update))

    async def _submit(self, call: SubmitCall, outbox: Outbox, submits: trio.Semaphore) -> None:
        try:
            reply = await self._outcome(call)
        finally:
            submits.release()
        if call.id is not None:
            outbox.put(encode(reply))

    async def _outcome(self, call: SubmitCall) -> dict[str, Any]:
        outcome = await self.upstream.submit(call.struct, block_hash=call.block_hash)
        status = getattr(outcome, "status", "error")
        if status == "accepted":
            if call.optimistic:
                template = await self.next_template(call.block_hash)
                if template is not None:
                    return result(call.id, template.to_json())
            return result(call.id, True)
        if status == "stale":
            return result(call.id, False)
        reason = getattr(outcome, "reason", "") or status
        return error(call.id, INTERNAL_ERROR, f"block {call.block_hash.hex()} {status}: {reason}")

    async def next_template(self, block_hash: bytes) -> BlockTemplate | None:
        """The first template on ``block_hash`` the proxy learns within ``optimistic_wait``."""
        version = 0
        with trio.move_on_after(self.optimistic_wait):
            while True:
                version, update = await self.upstream.templates.wait_newer(version)
                for template in update.templates:
                    if template.parents and template.parents[0] == block_hash:
                        return template
        return None
