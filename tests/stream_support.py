"""What every raw test client needs from a trio stream."""

from __future__ import annotations

import trio


async def receive_or_eof(stream: trio.abc.ReceiveStream, max_bytes: int = 65536) -> bytes:
    """The next bytes the server sent; b"" once it closed, or the connection broke."""
    try:
        return await stream.receive_some(max_bytes)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return b""
