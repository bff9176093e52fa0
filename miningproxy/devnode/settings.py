"""Settings of the embedded dev node."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from miningproxy.devnode.genesis import GENESIS_TIMESTAMP

OptimisticMode = Literal["works", "broken"]
OPTIMISTIC_MODES: tuple[str, ...] = ("works", "broken")


@dataclass(frozen=True)
class DevNodeSettings:
    """How the dev node behaves.

    Weight rule (explicit and simple, in the spirit of the real testnet where difficulty decays
    while no block arrives): a block with timestamp ``ts`` on a parent stamped ``parent_ts`` needs

        weight >= max(min_block_weight, block_weight - floor((ts - parent_ts) / weight_decay_seconds))

    i.e. one unit of weight less (half the work) for every full ``weight_decay_seconds`` since its
    parent; ``weight_decay_seconds = 0`` disables decay (always ``block_weight``). A LATER timestamp
    therefore never needs more weight: a template's weight (computed for ``timestamp_now``) is too
    low for a block stamped with the template data's ``timestamp_min`` once decay has kicked in.

    ``optimistic``: "broken" (what every node release does: a ``mining.submit`` with
    ``optimistic: true`` stores the block, then answers a fatal -32603 and closes the socket) or
    "works" (what the node intends: the result is the template for the next block, a dict).

    ``event_queue``: serve the node's event queue (``/v1a/event_ws``, ``GET /v1a/event``), as a node
    started with ``--enable-event-queue``; off, both answer as such a node without it
    (EVENT_WS_NOT_RUNNING, 503). The event stream's peer_id is ``peer_id``.
    """

    network: str = "privatenet"
    block_weight: float = 8.0
    min_block_weight: float = 1.0
    weight_decay_seconds: float = 0.0
    reward: int = 6400
    optimistic: OptimisticMode = "broken"
    genesis_timestamp: int = GENESIS_TIMESTAMP
    # The genesis of a real privatenet-fastmine node; changing it re-mines a genesis at this weight.
    genesis_block_weight: float = 8.0
    version: str = "0.69.0-devnode"
    peer_id: str = "d3f0de7e000000000000000000000000000000000000000000000000000000d0"
    event_queue: bool = True

    def __post_init__(self) -> None:
        def fail(name: str, what: str) -> ValueError:
            return ValueError(f"devnode setting {name}: {what}")

        if not self.network or not isinstance(self.network, str):
            raise fail("network", f"must be a non-empty name, got {self.network!r}")
        for name in ("block_weight", "min_block_weight", "genesis_block_weight"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or not 0 < value <= 64:
                raise fail(name, f"must be a number in (0, 64], got {value!r}")
        if self.min_block_weight > self.block_weight:
            raise fail(
                "min_block_weight", f"{self.min_block_weight} is above block_weight {self.block_weight}"
            )
        if not math.isfinite(self.weight_decay_seconds) or self.weight_decay_seconds < 0:
            raise fail(
                "weight_decay_seconds", f"must be >= 0 (0 = no decay), got {self.weight_decay_seconds!r}"
            )
        if isinstance(self.reward, bool) or not isinstance(self.reward, int) or not 0 < self.reward < 2**63:
            raise fail("reward", f"must be a positive integer (atomic units), got {self.reward!r}")
        if self.optimistic not in OPTIMISTIC_MODES:
            raise fail("optimistic", f"must be one of {', '.join(OPTIMISTIC_MODES)}, got {self.optimistic!r}")
        if not isinstance(self.event_queue, bool):
            raise fail("event_queue", f"must be true or false, got {self.event_queue!r}")
        if not isinstance(self.genesis_timestamp, int) or not 0 < self.genesis_timestamp < 2**32 - 10:
            raise fail("genesis_timestamp", f"must be a unix timestamp, got {self.genesis_timestamp!r}")
