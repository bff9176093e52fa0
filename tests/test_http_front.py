"""The HTTP front: plain HTTP and websockets on one port, over real loopback sockets."""

from __future__ import annotations

import json

import h11
import pytest
import trio
import trio.testing
import trio_websocket
from hypothesis import given
from hypothesis import strategies as st

from miningproxy.api.http import HttpLimits, HttpRequest, HttpResponse, Router, serve_http, serve_http_stream
from miningproxy.api.prefixed_stream import PrefixedStream


async def _hello(request: HttpRequest) -> HttpResponse:
    return HttpResponse.json({"path": request.path, "query": request.query, "peer_set": bool(request.peer)})


async def _echo_body(request: HttpRequest) -> HttpResponse:
    return HttpResponse.json(
        {"method": request.method, "body": request.body.decode(), "ct": request.headers.get("content-type")}
    )


async def _boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("handler bug")


async def _ws_echo(ws: trio_websocket.WebSocketConnection, request: HttpRequest) -> None:
    await ws.send_message(json.dumps({"hello": request.path, "q": request.query}))
    while True:
        message = await ws.get_message()
        await ws.send_message(message)


async def _ws_boom(ws: trio_websocket.WebSocketConnection, request: HttpRequest) -> None:
    await ws.get_message()
    raise RuntimeError("websocket handler bug")


def _router() -> Router:
    router = Router()
    router.http("/hello", _hello)
    router.http("/echo", _echo_body, methods=("POST", "PUT"))
    router.http("/boom", _boom)
    router.websocket("/ws", _ws_echo)
    router.websocket("/v1a/ws/", _ws_echo)
    router.websocket("/wsboom", _ws_boom)
    return router


@pytest.fixture
async def port(nursery: trio.Nursery) -> int:
    listeners = await nursery.start(serve_http, _router(), "127.0.0.1", 0)
    return listeners[0].socket.getsockname()[1]


async def _read_until_closed_after(stream: trio.SocketStream, request: bytes) -> bytes:
    try:
        await stream.send_all(request)
    except trio.BrokenResourceError:
        pass  # refused before we could write: the 503 is still readable
    return await _read_until_closed(stream)


async def _read_until_closed(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


class H11Client:
    """A tiny keep-alive HTTP client over one socket, built on h11."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def request(
        self, method: str, target: str, body: bytes = b"", headers=()
    ) -> tuple[h11.Response, bytes]:
        hdrs = [("host", "test"), ("content-length", str(len(body))), *headers]
        data = self.conn.send(h11.Request(method=method, target=target, headers=hdrs))
        data += self.conn.send(h11.Data(data=body)) if body else b""
        data += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)
        response = None
        chunks = b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                chunks += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise AssertionError(event)
        assert response is not None
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return response, chunks


async def test_plain_get_with_raw_socket(port: int) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET /hello?a=1&a=2&b= HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    raw = await _read_until_closed(stream)
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body) == {"path": "/hello", "query": {"a": ["1", "2"], "b": [""]}, "peer_set": True}


async def test_trailing_slash_and_keep_alive(port: int) -> None:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        client = H11Client(stream)
        response, body = await client.request("GET", "/hello/")
        assert response.status_code == 200
        assert json.loads(body)["path"] == "/hello/"
        # Second request on the same connection.
        response, body = await client.request("POST", "/echo", b"payload", [("content-type", "text/plain")])
        assert response.status_code == 200
        assert json.loads(body) == {"method": "POST", "body": "payload", "ct": "text/plain"}
        response, body = await client.request("HEAD", "/hello")
        assert response.status_code == 200 and body == b""


async def test_not_found_and_method_not_allowed(port: int) -> None:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        client = H11Client(stream)
        response, body = await client.request("GET", "/nope")
        assert response.status_code == 404
        assert json.loads(body)["error"] == "not found"
        response, body = await client.request("DELETE", "/hello")
        assert response.status_code == 405
        assert dict(response.headers)[b"allow"] == b"GET, HEAD"
        # A websocket-only path answers a plain GET with 426 and keeps the connection usable.
        response, _ = await client.request("GET", "/ws")
        assert response.status_code == 426
        response, _ = await client.request("GET", "/hello")
        assert response.status_code == 200


async def test_handler_exception_gives_500_and_server_keeps_serving(port: int, caplog) -> None:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        client = H11Client(stream)
        response, body = await client.request("GET", "/boom")
        assert response.status_code == 500
        assert json.loads(body) == {"error": "internal server error"}
        response, _ = await client.request("GET", "/hello")
        assert response.status_code == 200
    assert any("handler bug" in (r.exc_text or "") or r.exc_info for r in caplog.records)
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        response, _ = await H11Client(stream).request("GET", "/hello")
        assert response.status_code == 200


@pytest.mark.parametrize(
    "garbage",
    [
        b"THIS IS NOT HTTP\r\n\r\n",
        b"GET /hello HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
        b"GET /hello HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
    ],
)
async def test_bad_request_gets_400_and_close(port: int, garbage: bytes) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(garbage)
    raw = await _read_until_closed(stream)
    assert raw.startswith(b"HTTP/1.1 400 ")
    assert b"connection: close" in raw.lower()
    # ... and the server is still there.
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        response, _ = await H11Client(stream).request("GET", "/hello")
        assert response.status_code == 200


async def test_oversized_head_is_refused(nursery: trio.Nursery) -> None:
    listeners = await nursery.start(
        lambda task_status: serve_http(
            _router(), "127.0.0.1", 0, max_header_bytes=1024, task_status=task_status
        )
    )
    port = listeners[0].socket.getsockname()[1]
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n")
    raw = await _read_until_closed(stream)
    assert raw.startswith(b"HTTP/1.1 431 ")


async def test_websocket_echo_and_plain_http_on_same_port(port: int) -> None:
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws?x=1") as ws:
        assert json.loads(await ws.get_message()) == {"hello": "/ws", "q": {"x": ["1"]}}
        await ws.send_message("ping")
        assert await ws.get_message() == "ping"
        await ws.send_message(b"\x00\x01")
        assert await ws.get_message() == b"\x00\x01"
        # Plain HTTP is served concurrently on the same port.
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            response, _ = await H11Client(stream).request("GET", "/hello")
            assert response.status_code == 200
    # Trailing slash variants of a registered websocket path.
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/v1a/ws") as ws:
        assert json.loads(await ws.get_message())["hello"] == "/v1a/ws"
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws/") as ws:
        assert json.loads(await ws.get_message())["hello"] == "/ws/"


async def test_websocket_unknown_path_is_rejected_with_404(port: int) -> None:
    with pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/nope"):
            pass
    assert info.value.status_code == 404


async def test_websocket_handler_exception_closes_with_1011(port: int) -> None:
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/wsboom") as ws:
        await ws.send_message("go")
        with pytest.raises(trio_websocket.ConnectionClosed) as info:
            await ws.get_message()
    assert info.value.reason.code == 1011
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws") as ws:
        assert json.loads(await ws.get_message())["hello"] == "/ws"


async def test_websocket_handshake_without_key_gets_400(port: int) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    raw = await _read_until_closed(stream)
    assert raw.startswith(b"HTTP/1.1 400 ")


async def test_max_connections_refuses_extra_with_503(nursery: trio.Nursery) -> None:
    listeners = await nursery.start(
        lambda task_status: serve_http(_router(), "127.0.0.1", 0, max_connections=1, task_status=task_status)
    )
    port = listeners[0].socket.getsockname()[1]
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws") as ws:
        await ws.get_message()
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        raw = await _read_until_closed(stream)
        assert raw.startswith(b"HTTP/1.1 503 ")
    # The slot is freed once the server has finished with the websocket connection.
    for _ in range(100):
        await trio.testing.wait_all_tasks_blocked(0.01)
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            raw = await _read_until_closed_after(
                stream, b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
        if raw.startswith(b"HTTP/1.1 200 "):
            break
        assert raw.startswith(b"HTTP/1.1 503 ")
    else:
        raise AssertionError("the connection slot was never released")


async def test_header_timeout_closes_slow_client(autojump_clock: trio.testing.MockClock) -> None:
    """Slowloris: a head that never completes is cut off after header_timeout (virtual time)."""
    server_stream, client_stream = trio.testing.memory_stream_pair()
    limits = HttpLimits(header_timeout=10.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: serve_http_stream(server_stream, _router(), limits=limits, peer="test"))
        start = trio.current_time()
        await client_stream.send_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
        await trio.sleep(5)
        await client_stream.send_all(b"X-Slow: 1\r\n")
        assert await client_stream.receive_some() == b""  # closed, without any response
        assert 9.9 <= trio.current_time() - start <= 10.1


async def test_idle_keep_alive_connection_is_closed(autojump_clock: trio.testing.MockClock) -> None:
    server_stream, client_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: serve_http_stream(server_stream, _router(), limits=HttpLimits(header_timeout=3))
        )
        client = H11Client(client_stream)  # type: ignore[arg-type]
        response, _ = await client.request("GET", "/hello")
        assert response.status_code == 200
        start = trio.current_time()
        assert await client_stream.receive_some() == b""
        assert 2.9 <= trio.current_time() - start <= 3.1


async def test_header_timeout_over_loopback(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            lambda task_status: serve_http(
                _router(), "127.0.0.1", 0, header_timeout=30.0, task_status=task_status
            )
        )
        port = listeners[0].socket.getsockname()[1]
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /hello HTTP/1.1\r\n")
        start = trio.current_time()
        assert await _read_until_closed(stream) == b""
        assert trio.current_time() - start >= 29.9
        nursery.cancel_scope.cancel()


async def test_body_too_large_gets_413(nursery: trio.Nursery) -> None:
    listeners = await nursery.start(
        lambda task_status: serve_http(_router(), "127.0.0.1", 0, max_body_bytes=10, task_status=task_status)
    )
    port = listeners[0].socket.getsockname()[1]
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 100)
    raw = await _read_until_closed(stream)
    assert raw.startswith(b"HTTP/1.1 413 ")


def test_router_rejects_relative_paths() -> None:
    with pytest.raises(ValueError, match="start with '/'"):
        Router().http("hello", _hello)


async def test_websocket_frame_pipelined_behind_the_handshake(port: int) -> None:
    """Bytes read past the request head (a client's first frame) are replayed to the websocket."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request, TextMessage
    from wsproto.frame_protocol import FrameProtocol

    client = WSConnection(ConnectionType.CLIENT)
    # wsproto will not send a frame before the 101; build the masked frame by hand.
    early = FrameProtocol(client=True, extensions=[]).send_data("early", fin=True)
    data = client.send(Request(host="x", target="/ws")) + bytes(early)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(data)
    events: list = []
    with trio.fail_after(5):
        while len([e for e in events if isinstance(e, TextMessage)]) < 2:
            client.receive_data(await stream.receive_some(65536))
            events.extend(client.events())
    assert isinstance(events[0], AcceptConnection)
    texts = [e.data for e in events if isinstance(e, TextMessage)]
    assert json.loads(texts[0])["hello"] == "/ws"
    assert texts[1] == "early"
    await stream.aclose()


async def test_upgrade_request_to_plain_route_gets_a_plain_answer(port: int) -> None:
    with pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/hello"):
            pass
    assert info.value.status_code == 200


@given(
    prefix=st.binary(max_size=40),
    held=st.binary(max_size=40),
    rest=st.binary(max_size=40),
    size=st.integers(min_value=1, max_value=9),
)
def test_prefixed_stream_replays_in_order_and_holds_until_release(
    prefix: bytes, held: bytes, rest: bytes, size: int
) -> None:
    async def main() -> None:
        send, receive = trio.testing.memory_stream_one_way_pair()
        await send.send_all(rest)
        await send.aclose()
        stream = PrefixedStream(prefix, receive, held=held, hold=True)
        out = b""
        while len(out) < len(prefix):
            out += await stream.receive_some(size)
        assert out == prefix
        with trio.move_on_after(60) as scope:
            await stream.receive_some(size)  # nothing more before release
        assert scope.cancelled_caught
        stream.release()
        while chunk := await stream.receive_some(size):
            assert len(chunk) <= size
            out += chunk
        assert out == prefix + held + rest

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
