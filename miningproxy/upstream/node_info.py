"""A node's `GET /v1a/version`: which network it runs, so addresses can be checked against it."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import trio

from miningproxy.upstream.node_http import NodeHttpError, http_get, node_url

log = logging.getLogger("miningproxy.upstream")


class NodeInfoError(Exception):
    pass


async def fetch_network_name(base_url: str, *, timeout: float = 10.0) -> str:
    """The ``network`` field of the node's /v1a/version (e.g. "mainnet", "testnet-india")."""
    url = node_url(base_url, "version")
    try:
        answer = await http_get(url, timeout=timeout)
    except NodeHttpError as exc:
        raise NodeInfoError(str(exc)) from None
    if answer.status != 200:
        raise NodeInfoError(f"GET {url}: HTTP {answer.status}")
    try:
        info = json.loads(answer.body)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply
        raise NodeInfoError(f"GET {url}: not JSON") from None
    network = info.get("network") if isinstance(info, dict) else None
    if not isinstance(network, str) or not network:
        raise NodeInfoError(f"GET {url}: the answer has no network name")
    return network


async def learn_network(
    nodes: Sequence[str], *, backoff_initial: float = 1.0, backoff_max: float = 60.0
) -> str:
    """Ask each node in turn until one names its network; retry with backoff while none answers."""
    delay = backoff_initial
    while True:
        for url in nodes:
            try:
                return await fetch_network_name(url)
            except NodeInfoError as exc:
                log.info("network of %s not known yet: %s", url, exc)
        await trio.sleep(delay)
        delay = min(delay * 2, backoff_max)
