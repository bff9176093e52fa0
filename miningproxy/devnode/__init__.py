"""The embedded Hathor-compatible dev node (see server.py for the wire behaviour, chain.py for rules)."""

from miningproxy.devnode.chain import (
    BlockRejected,
    ChainBlock,
    ChainChange,
    ChainRules,
    DevChain,
    SubmitResult,
    SubmitStatus,
)
from miningproxy.devnode.server import DevNode, serve_devnode
from miningproxy.devnode.settings import DevNodeSettings

__all__ = [
    "BlockRejected",
    "ChainBlock",
    "ChainChange",
    "ChainRules",
    "DevChain",
    "DevNode",
    "DevNodeSettings",
    "SubmitResult",
    "SubmitStatus",
    "serve_devnode",
]
