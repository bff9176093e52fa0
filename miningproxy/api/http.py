"""One listener for plain HTTP and websockets on the same port.

trio-websocket alone answers every plain HTTP request with 400, and the proxy serves JSON endpoints
(/health, /metrics, the node's /v1a/version ...) next to websockets on one port. So the request
head is parsed here with h11; a websocket upgrade is handed to trio-websocket with the head
replayed in front of the stream, everything else is answered here with keep-alive. A handler
marked :func:`~miningproxy.api.websocket.lean_websocket` (the event streams) gets a
:class:`~miningproxy.api.websocket.WebSocket` instead: the handshake is answered here (by wsproto)
and the stream handed over directly, without trio-websocket's reader task.

Limits: ``max_header_bytes`` (431), ``header_timeout`` (slowloris: the connection is closed when a
request head, or its body, is not complete in time; this also bounds idle keep-alive connections),
``max_body_bytes`` (413), optional ``max_connections`` (503). A malformed request gets 400 and a
close; an exception in a handler gets 500 and is logged; neither ever stops the server.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import h11
import trio
import trio_websocket

from miningproxy.api import websocket as lean
from miningproxy.api.prefixed_stream import PrefixedStream

log = logging.getLogger(__name__)

SERVER_HEADER = "miningproxy"
RECEIVE_SIZE = 16384
DEFAULT_MAX_HEADER_BYTES = 16384
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_MAX_BODY_BYTES = 1 << 20
WS_CLOSE_TIMEOUT = 5.0
# After a response that ends the connection, unread client bytes are drained for this long so the
# kernel does not answer them with a RST that could destroy the response in flight.
LINGER_SECONDS = 1.0
LINGER_MAX_BYTES = 1 << 16
WS_INTERNAL_ERROR = 1011


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str  # percent-decoded, without the query
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes
    peer: str

    def query_value(self, name: str, default: str | None = None) -> str | None:
        """The first value of a query parameter."""
        values = self.query.get(name)
        return values[0] if values else default


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(
        cls,
        obj: Any,
        status: int = 200,
        *,
        content_type: str = "application/json",
        headers: tuple[tuple[str, str], ...] = (),
    ) -> HttpResponse:
        body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return cls(status, body, content_type, headers)

    @classmethod
    def text(cls, text: str, status: int = 200, *, headers: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
        return cls(status, text.encode("utf-8"), "text/plain; charset=utf-8", headers)


HttpHandler = Callable[[HttpRequest], Awaitable[HttpResponse]]
WebSocketHandler = Callable[[trio_websocket.WebSocketConnection, HttpRequest], Awaitable[None]]
# A handler marked with miningproxy.api.websocket.lean_websocket takes that module's WebSocket.
AnyWebSocketHandler = WebSocketHandler | lean.LeanWebSocketHandler


def normalize_path(path: str) -> str:
    """Trailing slashes are tolerated on every route: ``/v1a/ws/`` is ``/v1a/ws``."""
    return path.rstrip("/") or "/"


@dataclass
class Route:
    http: dict[str, HttpHandler] = field(default_factory=dict)
    websocket: AnyWebSocketHandler | None = None

    @property
    def methods(self) -> list[str]:
        methods = set(self.http)
        if "GET" in methods:
            methods.add("HEAD")
        return sorted(methods)


class Router:
    """Maps exact paths (trailing slash tolerated) to HTTP handlers per method and one websocket handler."""

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}

    def http(self, path: str, handler: HttpHandler, methods: Iterable[str] = ("GET",)) -> None:
        route = self._route(path)
        for method in methods:
            route.http[method.upper()] = handler

    def websocket(self, path: str, handler: AnyWebSocketHandler) -> None:
        """Serve websockets on ``path``: ``handler(ws, request)`` gets a trio-websocket connection, or
        a :class:`miningproxy.api.websocket.WebSocket` when it is marked ``@lean_websocket``."""
        self._route(path).websocket = handler

    def lookup(self, path: str) -> Route | None:
        return self._routes.get(normalize_path(path))

    @property
    def paths(self) -> list[str]:
        return sorted(self._routes)

    def _route(self, path: str) -> Route:
        if not path.startswith("/"):
            raise ValueError(f"route paths start with '/', got {path!r}")
        return self._routes.setdefault(normalize_path(path), Route())


async def serve_http(
    router: Router,
    host: str | None,
    port: int,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_connections: int | None = None,
) -> None:
    """Serve ``router`` until cancelled; ``task_status.started`` gets the bound listeners."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    limits = HttpLimits(max_header_bytes, header_timeout, max_body_bytes)
    limiter = trio.CapacityLimiter(max_connections) if max_connections else None

    async def on_connection(stream: trio.SocketStream) -> None:
        if limiter is not None and limiter.available_tokens == 0:
            await _refuse_busy(stream)
            return
        if limiter is None:
            await serve_http_stream(stream, router, limits=limits, peer=_peer_of(stream))
            return
        async with limiter:
            await serve_http_stream(stream, router, limits=limits, peer=_peer_of(stream))

    await trio.serve_listeners(on_connection, listeners, task_status=task_status)


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


async def serve_http_stream(
    stream: trio.abc.Stream, router: Router, *, limits: HttpLimits | None = None, peer: str = ""
) -> None:
    """Serve one connection until it closes. Never raises (except cancellation): errors are logged."""
    try:
        await _Connection(stream, router, limits or HttpLimits(), peer).run()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the peer went away; nothing to answer
    except Exception:
        log.exception("http connection from %s failed", peer or "?")
    finally:
        await trio.aclose_forcefully(stream)


class _Closed(Exception):
    """The connection must end now (already answered, timed out, or closed by the peer)."""


class _Connection:
    def __init__(self, stream: trio.abc.Stream, router: Router, limits: HttpLimits, peer: str) -> None:
        self.stream = stream
        self.router = router
        self.limits = limits
        self.peer = peer
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)

    async def run(self) -> None:
        try:
            while True:
                await self._serve_one()
                if self.conn.our_state is h11.MUST_CLOSE or self.conn.their_state is not h11.DONE:
                    await self._linger()
                    return
                self.conn.start_next_cycle()
        except _Closed:
            return

    async def _serve_one(self) -> None:
        with trio.move_on_after(self.limits.header_timeout) as scope:
            event = await self._next_event()
        if scope.cancelled_caught:
            raise _Closed()  # slowloris or an idle keep-alive connection
        if isinstance(event, h11.ConnectionClosed) or not isinstance(event, h11.Request):
            raise _Closed()
        if len(_serialize_head(event)) > self.limits.max_header_bytes:
            # h11 only bounds heads that arrive in pieces; a complete oversized head is refused here.
            await self._respond(HttpResponse.json({"error": "request header too large"}, 431), close=True)
            return

        method = event.method.decode("ascii", "replace").upper()
        target = urlsplit(event.target.decode("latin-1"))
        path = unquote(target.path) or "/"
        query = parse_qs(target.query, keep_blank_values=True)
        headers = _header_dict(event.headers)
        route = self.router.lookup(path)

        if method == "GET" and "websocket" in _tokens(headers.get("upgrade", "")):
            if route is not None and route.websocket is not None:
                problem = _websocket_handshake_problem(headers)
                if problem is None:
                    request = HttpRequest(method, path, query, headers, b"", self.peer)
                    if lean.is_lean_websocket(route.websocket):
                        await self._serve_lean_websocket(event, request, route.websocket)
                    else:
                        await self._serve_websocket(event, request, route.websocket)  # type: ignore[arg-type]
                    raise _Closed()
                await self._respond(HttpResponse.json({"error": problem}, 400), close=True)
                return

        body = await self._read_body()
        request = HttpRequest(method, path, query, headers, body, self.peer)
        response = await self._dispatch(route, request)
        await self._respond(response, head_only=method == "HEAD")

    async def _dispatch(self, route: Route | None, request: HttpRequest) -> HttpResponse:
        if route is None:
            return HttpResponse.json({"error": "not found", "path": request.path}, 404)
        handler = route.http.get(request.method)
        if handler is None and request.method == "HEAD":
            handler = route.http.get("GET")
        if handler is None:
            if route.websocket is not None and not route.http and request.method == "GET":
                return HttpResponse.json(
                    {"error": "this path only serves websockets"}, 426, headers=(("upgrade", "websocket"),)
                )
            allowed = route.methods + (["GET"] if route.websocket is not None and not route.http else [])
            return HttpResponse.json(
                {"error": "method not allowed", "method": request.method, "allowed": allowed},
                405,
                headers=(("allow", ", ".join(allowed)),),
            )
        try:
            return await handler(request)
        except Exception:
            log.exception("handler for %s %s failed (peer %s)", request.method, request.path, self.peer)
            return HttpResponse.json({"error": "internal server error"}, 500)

    def _bytes_after_head(self) -> bytes | None:
        """Consume the (empty) body so h11 pauses and hands over the bytes read past the head (a
        client may send its first frame right behind the handshake); None: drop the connection."""
        try:
            while True:
                nxt = self.conn.next_event()
                if nxt is h11.PAUSED or nxt is h11.NEED_DATA or isinstance(nxt, h11.ConnectionClosed):
                    break
        except h11.RemoteProtocolError:
            return None  # a broken body behind an upgrade request
        trailing, _ = self.conn.trailing_data
        return trailing

    async def _serve_lean_websocket(
        self, event: h11.Request, request: HttpRequest, handler: lean.LeanWebSocketHandler
    ) -> None:
        trailing = self._bytes_after_head()
        if trailing is None:
            return
        try:
            response, connection = lean.server_handshake(_serialize_head(event))
        except lean.HandshakeError as exc:
            await self._respond(
                HttpResponse.json({"error": f"bad websocket upgrade: {exc}"}, 400), close=True
            )
            await self._linger()
            return
        with trio.move_on_after(self.limits.header_timeout) as scope:
            await self.stream.send_all(response)
        if scope.cancelled_caught:
            return
        ws = lean.WebSocket(self.stream, connection, received=trailing)
        code = lean.CLOSE_NORMAL
        try:
            code = await self._run_websocket_handler(handler, ws, request)
        finally:
            with trio.move_on_after(WS_CLOSE_TIMEOUT):
                await ws.aclose(code)

    async def _run_websocket_handler(self, handler: Any, ws: Any, request: HttpRequest) -> int:
        """Run a websocket route's handler; the close code to end with (1011 when it failed)."""
        try:
            await handler(ws, request)
        except Exception as exc:
            if not _is_connection_closed(exc):
                log.exception("websocket handler for %s failed (peer %s)", request.path, self.peer)
                return WS_INTERNAL_ERROR
        return 1000

    async def _serve_websocket(
        self, event: h11.Request, request: HttpRequest, handler: WebSocketHandler
    ) -> None:
        # The bytes after the head are held until trio-websocket has accepted (see PrefixedStream).
        trailing = self._bytes_after_head()
        if trailing is None:
            return
        stream = PrefixedStream(_serialize_head(event), self.stream, held=trailing, hold=True)
        async with trio.open_nursery() as nursery:
            ws = None
            with trio.move_on_after(self.limits.header_timeout):
                try:
                    ws_request = await trio_websocket.wrap_server_stream(nursery, stream)
                    ws = await ws_request.accept()
                    stream.release()  # wsproto is ready for frames now
                except trio_websocket.ConnectionClosed:
                    pass  # the client left during the handshake
            if ws is None:
                nursery.cancel_scope.cancel()
                return
            code = await self._run_websocket_handler(handler, ws, request)
            with trio.move_on_after(WS_CLOSE_TIMEOUT):
                await ws.aclose(code)
            nursery.cancel_scope.cancel()

    async def _next_event(self) -> Any:
        """The next h11 event, reading as needed; a protocol error is answered and ends the connection."""
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                await self._respond_protocol_error(exc)
                raise _Closed() from exc
            if event is not h11.NEED_DATA:
                return event
            if self.conn.they_are_waiting_for_100_continue:
                await self._send(h11.InformationalResponse(status_code=100, headers=[]))
            data = await self.stream.receive_some(RECEIVE_SIZE)
            try:
                self.conn.receive_data(data)
            except RuntimeError:
                raise _Closed() from None  # data after the peer closed: nothing sensible to do

    async def _read_body(self) -> bytes:
        chunks: list[bytes] = []
        size = 0
        with trio.move_on_after(self.limits.header_timeout) as scope:
            while True:
                event = await self._next_event()
                if isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > self.limits.max_body_bytes:
                        await self._respond(
                            HttpResponse.json({"error": "request body too large"}, 413), close=True
                        )
                        await self._linger()
                        raise _Closed()
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    return b"".join(chunks)
                else:
                    raise _Closed()
        assert scope.cancelled_caught
        raise _Closed()

    async def _respond_protocol_error(self, exc: h11.RemoteProtocolError) -> None:
        status = exc.error_status_hint if 400 <= exc.error_status_hint < 500 else 400
        try:
            await self._respond(
                HttpResponse.json({"error": "bad request", "detail": str(exc)}, status), close=True
            )
        except h11.LocalProtocolError:
            return
        await self._linger()

    async def _respond(self, response: HttpResponse, *, head_only: bool = False, close: bool = False) -> None:
        headers = [
            ("content-type", response.content_type),
            ("content-length", str(len(response.body))),
            ("server", SERVER_HEADER),
            *response.headers,
        ]
        if close:
            headers.append(("connection", "close"))
        await self._send(
            h11.Response(status_code=response.status, headers=headers, reason=_reason(response.status))
        )
        if response.body and not head_only:
            await self._send(h11.Data(data=response.body))
        await self._send(h11.EndOfMessage())

    async def _send(self, event: Any) -> None:
        data = self.conn.send(event)
        if data:
            await self.stream.send_all(data)

    async def _linger(self) -> None:
        await _linger(self.stream)


async def _linger(stream: trio.abc.Stream) -> None:
    """Half-close and drain what the client still sends, briefly, before the socket is closed."""
    send_eof = getattr(stream, "send_eof", None)
    try:
        if send_eof is not None:
            await send_eof()
        drained = 0
        with trio.move_on_after(LINGER_SECONDS):
            while drained < LINGER_MAX_BYTES:
                chunk = await stream.receive_some(RECEIVE_SIZE)
                if not chunk:
                    break
                drained += len(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def _is_connection_closed(exc: BaseException) -> bool:
    """The peer went away (possibly reported by several tasks of the handler at once)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_connection_closed(inner) for inner in exc.exceptions)
    return isinstance(
        exc,
        trio_websocket.ConnectionClosed
        | lean.ConnectionClosed
        | trio.BrokenResourceError
        | trio.ClosedResourceError,
    )


def _header_dict(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    result: dict[str, str] = {}
    for name, value in headers:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        result[key] = f"{result[key]}, {text}" if key in result else text
    return result


def _tokens(value: str) -> set[str]:
    return {part.strip().lower() for part in value.split(",") if part.strip()}


def _websocket_handshake_problem(headers: dict[str, str]) -> str | None:
    """What makes an upgrade request unacceptable to wsproto, checked here so it gets a plain 400."""
    if "upgrade" not in _tokens(headers.get("connection", "")):
        return "websocket upgrade needs 'Connection: Upgrade'"
    if not headers.get("sec-websocket-key"):
        return "websocket upgrade needs a Sec-WebSocket-Key header"
    if headers.get("sec-websocket-version", "").strip() != "13":
        return "websocket upgrade needs 'Sec-WebSocket-Version: 13'"
    return None


def _serialize_head(event: h11.Request) -> bytes:
    lines = [b"%s %s HTTP/%s\r\n" % (event.method, event.target, event.http_version)]
    lines.extend(name + b": " + value + b"\r\n" for name, value in event.headers.raw_items())
    lines.append(b"\r\n")
    return b"".join(lines)


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def _peer_of(stream: trio.SocketStream) -> str:
    try:
        address = stream.socket.getpeername()
    except OSError:
        return ""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


async def _refuse_busy(stream: trio.abc.Stream) -> None:
    body = b'{"error":"too many connections"}'
    head = (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\nserver: %s\r\n\r\n" % (len(body), SERVER_HEADER.encode())
    )
    try:
        with trio.move_on_after(LINGER_SECONDS):
            await stream.send_all(head + body)
        await _linger(stream)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stream)
