"""A small HTTP/1.1 client for a node's REST API (``/v1a/version`` and friends), on h11.

One request per connection, bounded in time and size; every failure is a NodeHttpError saying
what went wrong.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11
import trio

MAX_BODY = 1 << 20


class NodeHttpError(Exception):
    pass


@dataclass(frozen=True)
class NodeResponse:
    status: int
    content_type: str
    body: bytes


def node_url(base_url: str, path: str) -> str:
    """``path`` under a node's API base URL (``http://h:8080/v1a/`` + ``version``)."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"invalid node URL {base_url!r}: expected http(s)://host[:port]/v1a/")
    base = parts.path if parts.path.endswith("/") else parts.path + "/"
    return f"{parts.scheme}://{parts.netloc}{base}{path.lstrip('/')}"


async def http_get(url: str, *, timeout: float = 5.0, max_body: int = MAX_BODY) -> NodeResponse:
    """GET ``url``; raises NodeHttpError (with the reason) on any failure, including a timeout."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        with trio.fail_after(timeout):
            if secure:
                stream: trio.abc.Stream = await trio.open_ssl_over_tcp_stream(
                    host, port, ssl_context=ssl.create_default_context(), https_compatible=True
                )
            else:
                stream = await trio.open_tcp_stream(host, port)
            async with stream:
                return await _exchange(stream, parts.netloc, target, max_body)
    except trio.TooSlowError:
        raise NodeHttpError(f"GET {url}: no answer within {timeout:g}s") from None
    except (OSError, trio.BrokenResourceError, h11.ProtocolError) as exc:
        raise NodeHttpError(f"GET {url}: {exc}") from None


async def _exchange(stream: trio.abc.Stream, netloc: str, target: str, max_body: int) -> NodeResponse:
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="GET",
        target=target,
        headers=[
            ("host", netloc),
            ("accept", "application/json"),
            ("user-agent", "miningproxy"),
            ("connection", "close"),
        ],
    )
    await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
    status, content_type, body = 0, "application/json", bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            conn.receive_data(data)
            if not data and conn.their_state is h11.SEND_BODY:
                raise NodeHttpError("the node closed the connection mid-response")
        elif isinstance(event, h11.Response):
            status = event.status_code
            for name, value in event.headers:
                if name == b"content-type":
                    content_type = value.decode("latin-1")
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > max_body:
                raise NodeHttpError(f"response larger than {max_body} bytes")
        elif isinstance(event, h11.EndOfMessage):
            return NodeResponse(status, content_type, bytes(body))
        elif isinstance(event, h11.ConnectionClosed):
            raise NodeHttpError("the node closed the connection without a response")
