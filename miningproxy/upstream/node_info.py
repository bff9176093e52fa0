"""A node's `GET /v1a/version`: which network it runs, so addresses can be checked against it.

A minimal HTTP/1.1 client on h11 (already a dependency): one GET, bounded in size and time.
"""

from __future__ import annotations

import json
import ssl
from typing import Any
from urllib.parse import urlsplit

import h11
import trio

MAX_BODY = 1 << 20


class NodeInfoError(Exception):
    pass


async def http_get_json(url: str, *, timeout: float = 10.0) -> Any:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise NodeInfoError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        with trio.fail_after(timeout):
            stream: trio.abc.Stream = await trio.open_tcp_stream(parts.hostname, port)
            if parts.scheme == "https":
                stream = trio.SSLStream(stream, ssl.create_default_context(), server_hostname=parts.hostname)
            async with stream:
                return await _exchange(stream, parts.netloc, target, url)
    except (OSError, trio.BrokenResourceError, trio.TooSlowError, h11.ProtocolError, ssl.SSLError) as exc:
        raise NodeInfoError(f"GET {url}: {exc or type(exc).__name__}") from None


async def _exchange(stream: trio.abc.Stream, host: str, target: str, url: str) -> Any:
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(method="GET", target=target, headers=[("Host", host), ("Connection", "close")])
    await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
    status, body = None, bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                raise NodeInfoError(f"GET {url}: answer larger than {MAX_BODY} bytes")
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            break
    if status != 200:
        raise NodeInfoError(f"GET {url}: HTTP {status}")
    try:
        return json.loads(body)
    except ValueError:
        raise NodeInfoError(f"GET {url}: not JSON") from None


async def fetch_network_name(base_url: str, *, timeout: float = 10.0) -> str:
    """The ``network`` field of the node's /v1a/version (e.g. "mainnet", "testnet-india")."""
    info = await http_get_json(base_url.rstrip("/") + "/version", timeout=timeout)
    network = info.get("network") if isinstance(info, dict) else None
    if not isinstance(network, str) or not network:
        raise NodeInfoError(f"{base_url}version has no network name")
    return network
