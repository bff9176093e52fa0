"""A dev node served on a fixed port that a test can stop and start again (same chain)."""

from __future__ import annotations

import trio

from miningproxy.devnode import DevNode, DevNodeSettings


class Served:
    """A DevNode served on a fixed port that a test can stop and start again (same chain)."""

    def __init__(self, node: DevNode) -> None:
        self.node = node
        self.port = 0
        self._scope: trio.CancelScope | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1a/"

    async def start(self, nursery: trio.Nursery) -> None:
        self.port = await nursery.start(self._serve)

    async def _serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as self._scope:
            await self.node.serve("127.0.0.1", self.port, task_status=task_status)

    def stop(self) -> None:
        assert self._scope is not None
        self._scope.cancel()


def devnode(**settings) -> Served:
    settings.setdefault("block_weight", 4)
    return Served(DevNode(DevNodeSettings(**settings)))
