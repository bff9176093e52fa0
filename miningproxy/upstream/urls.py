"""Deriving a node's websocket URLs from its HTTP API base URL."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

_WS_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}


def ws_url(base_url: str, path: str) -> str:
    """The websocket URL for ``path`` under a node's API base URL.

    http -> ws and https -> wss; ws/wss are kept. The base path (e.g. ``/v1a/``) is kept and
    ``path`` appended to it: ``ws_url("http://h:8080/v1a/", "mining_ws") == "ws://h:8080/v1a/mining_ws"``.
    Raises ValueError naming the URL when it is not an absolute http(s)/ws(s) URL with a host.
    """
    if not isinstance(base_url, str):
        raise ValueError(f"node URL must be a string, got {base_url!r}")
    text = base_url.strip()
    if not text or any(c.isspace() for c in text):
        raise ValueError(f"invalid node URL {base_url!r}: empty or contains whitespace")
    try:
        parts = urlsplit(text)
        port = parts.port  # validates the port (range, digits)
    except ValueError as e:
        raise ValueError(f"invalid node URL {base_url!r}: {e}") from None
    scheme = _WS_SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise ValueError(
            f"invalid node URL {base_url!r}: scheme must be http, https, ws or wss, got {parts.scheme!r}"
        )
    if not parts.hostname:
        raise ValueError(f"invalid node URL {base_url!r}: no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"invalid node URL {base_url!r}: credentials in the URL are not supported")
    if parts.query or parts.fragment:
        raise ValueError(f"invalid node URL {base_url!r}: a base URL takes no query or fragment")
    if port == 0:
        raise ValueError(f"invalid node URL {base_url!r}: port 0")
    base_path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return urlunsplit((scheme, parts.netloc, base_path + path.lstrip("/"), "", ""))
