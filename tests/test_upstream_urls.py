"""ws_url: a node's websocket URL from its HTTP API base URL."""

from __future__ import annotations

import pytest

from miningproxy.upstream.urls import ws_url


@pytest.mark.parametrize(
    ("base", "path", "expected"),
    [
        ("http://h:8080/v1a/", "mining_ws", "ws://h:8080/v1a/mining_ws"),
        ("http://h:8080/v1a", "mining_ws", "ws://h:8080/v1a/mining_ws"),
        ("https://node.example/v1a/", "ws/", "wss://node.example/v1a/ws/"),
        ("HTTPS://node.example/v1a/", "event_ws", "wss://node.example/v1a/event_ws"),
        ("ws://10.0.0.1:80/v1a/", "/mining_ws", "ws://10.0.0.1:80/v1a/mining_ws"),
        ("wss://n/", "mining_ws", "wss://n/mining_ws"),
        ("http://n", "mining_ws", "ws://n/mining_ws"),
        ("http://[::1]:8080/v1a/", "mining_ws", "ws://[::1]:8080/v1a/mining_ws"),
        ("  http://h:8080/v1a/ ", "mining_ws", "ws://h:8080/v1a/mining_ws"),
    ],
)
def test_derives_ws_urls(base, path, expected):
    assert ws_url(base, path) == expected


@pytest.mark.parametrize(
    ("base", "why"),
    [
        ("ftp://h/v1a/", "scheme"),
        ("h:8080/v1a/", "scheme"),
        ("/v1a/", "scheme"),
        ("", "empty"),
        ("http:///v1a/", "no host"),
        ("http://h:notaport/v1a/", "port"),
        ("http://h:70000/", "port"),
        ("http://h:0/", "port 0"),
        ("http://h/v1a/?x=1", "query"),
        ("http://h/v1a/#frag", "fragment"),
        ("http://user:pw@h/v1a/", "credentials"),
        ("http://h /v1a/", "whitespace"),
    ],
)
def test_rejects_bad_urls_naming_them(base, why):
    with pytest.raises(ValueError) as info:
        ws_url(base, "mining_ws")
    assert repr(base) in str(info.value)
    assert why.split()[0] in str(info.value).lower()


def test_rejects_non_strings():
    with pytest.raises(ValueError, match="string"):
        ws_url(None, "mining_ws")  # type: ignore[arg-type]
