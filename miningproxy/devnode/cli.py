"""``miningproxy devnode``: run the embedded Hathor-compatible dev node.

The lead wires this into miningproxy/cli.py: ``add_arguments(subparser)`` then
``trio.run(run_devnode_from_args, args)``.
"""

from __future__ import annotations

import argparse
import logging
from functools import partial

import trio

from miningproxy.devnode.server import DevNode, serve_devnode
from miningproxy.devnode.settings import OPTIMISTIC_MODES, DevNodeSettings

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:8090"


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8090`` for IPv6) -> (host, port)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not host:
        raise argparse.ArgumentTypeError(f"--listen must be HOST:PORT, got {value!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"--listen port must be 0..65535, got {port}")
    return host.strip("[]"), port


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = DevNodeSettings()
    parser.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"HTTP/websocket address (default {DEFAULT_LISTEN})",
    )
    parser.add_argument(
        "--network", default=defaults.network, help=f"network name (default {defaults.network})"
    )
    parser.add_argument(
        "--block-weight",
        type=float,
        default=defaults.block_weight,
        help=f"weight a block needs right after its parent (default {defaults.block_weight:g})",
    )
    parser.add_argument(
        "--min-weight",
        type=float,
        default=defaults.min_block_weight,
        help=f"floor of the decayed weight (default {defaults.min_block_weight:g})",
    )
    parser.add_argument(
        "--weight-decay",
        type=float,
        default=defaults.weight_decay_seconds,
        metavar="SECONDS",
        help="the required weight drops by 1 per SECONDS since the parent block; 0 = no decay (default 0)",
    )
    parser.add_argument(
        "--optimistic",
        choices=OPTIMISTIC_MODES,
        default=defaults.optimistic,
        help="mining.submit with optimistic=true: 'broken' as every node release (block stored, then a "
        "fatal error and close) or 'works' (result = next template) (default %(default)s)",
    )
    parser.add_argument(
        "--reward",
        type=int,
        default=defaults.reward,
        help=f"block reward in atomic units (default {defaults.reward})",
    )
    parser.add_argument(
        "--no-event-queue",
        dest="event_queue",
        action="store_false",
        default=defaults.event_queue,
        help="run without the event queue, as a node without --enable-event-queue: /v1a/event_ws answers "
        "EVENT_WS_NOT_RUNNING (default: the event queue is on)",
    )


def settings_from_args(args: argparse.Namespace) -> DevNodeSettings:
    return DevNodeSettings(
        network=args.network,
        block_weight=args.block_weight,
        min_block_weight=args.min_weight,
        weight_decay_seconds=args.weight_decay,
        optimistic=args.optimistic,
        reward=args.reward,
        event_queue=getattr(args, "event_queue", True),
    )


async def run_devnode_from_args(
    args: argparse.Namespace, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run until cancelled (Ctrl-C); ``task_status.started(bound port)``. Bad values raise
    ValueError/ArgumentTypeError naming the option."""
    listen = args.listen if isinstance(args.listen, tuple) else parse_listen(args.listen)
    host, port = listen
    settings = settings_from_args(args)
    node = DevNode(settings)
    log.info(
        "devnode %s: block weight %g (min %g, decay %s), optimistic %s, event queue %s",
        settings.network,
        settings.block_weight,
        settings.min_block_weight,
        f"1 per {settings.weight_decay_seconds:g}s" if settings.weight_decay_seconds else "off",
        settings.optimistic,
        "on" if settings.event_queue else "off",
    )
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(partial(serve_devnode, settings, host, port, node=node))
        shown = f"[{host}]" if ":" in host else host
        log.info(
            "devnode ready: http://%s:%d/v1a/ (mining: ws://%s:%d/v1a/mining_ws, admin: ws://%s:%d/v1a/ws, "
            "events: ws://%s:%d/v1a/event_ws%s)",
            shown,
            bound,
            shown,
            bound,
            shown,
            bound,
            shown,
            bound,
            "" if settings.event_queue else " (off)",
        )
        task_status.started(bound)
