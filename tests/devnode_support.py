"""Dev nodes for tests: one on a fixed, settable clock, and one a test can stop and start again."""

from __future__ import annotations

import trio

from miningproxy.devnode import DevNode, DevNodeSettings

NOW = 1795814406  # the real node's wall clock when the transcripts were taken


class Clock:
    """A wall clock a test sets by hand (the dev node stamps templates with it)."""

    def __init__(self, now: int = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return float(self.now)


async def start_devnode(nursery: trio.Nursery, **settings: object) -> tuple[DevNode, int]:
    """A dev node on a Clock, served on a free port; returns it and the port."""
    settings.setdefault("block_weight", 4)
    node = DevNode(DevNodeSettings(**settings), clock=Clock())  # type: ignore[arg-type]
    port = await nursery.start(node.serve, "127.0.0.1", 0)
    return node, port


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
