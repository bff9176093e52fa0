"""Relaying the node's ``GET /v1a/version`` (event queue clients call it next to event_ws).

The node's answer is relayed byte for byte and cached briefly, so clients polling it do not each
cost a request to the node.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from miningproxy.api.http import HttpRequest, HttpResponse
from miningproxy.upstream.node_http import NodeHttpError, NodeResponse, http_get, node_url


class VersionRelay:
    """``GET /v1a/version``: the first node that answers, byte for byte, cached ``cache_seconds``."""

    def __init__(self, nodes: Sequence[str], *, cache_seconds: float = 30.0, timeout: float = 5.0) -> None:
        if not nodes:
            raise ValueError("VersionRelay needs at least one node URL")
        self.urls = [node_url(node, "version") for node in nodes]
        self.cache_seconds = cache_seconds
        self.timeout = timeout
        self._cached: tuple[float, NodeResponse] | None = None
        self._lock = trio.Lock()  # concurrent callers share one upstream request

    async def handle(self, request: HttpRequest) -> HttpResponse:
        async with self._lock:
            now = trio.current_time()
            if self._cached is not None and now - self._cached[0] < self.cache_seconds:
                response = self._cached[1]
            else:
                problems = []
                response = None
                for url in self.urls:
                    try:
                        answer = await http_get(url, timeout=self.timeout)
                    except NodeHttpError as exc:
                        problems.append(str(exc))
                        continue
                    if answer.status == 200:
                        response = answer
                        break
                    problems.append(f"GET {url}: HTTP {answer.status}")
                if response is None:
                    return HttpResponse.json(
                        {"error": "no upstream node answered /version", "detail": problems}, 502
                    )
                self._cached = (now, response)
        return HttpResponse(200, response.body, content_type=response.content_type)
