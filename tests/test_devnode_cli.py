"""`miningproxy devnode` arguments and startup."""

from __future__ import annotations

import argparse
import json

import pytest
import trio
import trio_websocket

from miningproxy.devnode.cli import add_arguments, parse_listen, run_devnode_from_args, settings_from_args
from miningproxy.devnode.settings import DevNodeSettings


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="miningproxy devnode")
    add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults() -> None:
    args = _parse()
    assert args.listen == "127.0.0.1:8090"
    assert settings_from_args(args) == DevNodeSettings()


def test_options_map_to_settings() -> None:
    args = _parse(
        "--network",
        "privatenet-x",
        "--block-weight",
        "12",
        "--min-weight",
        "4",
        "--weight-decay",
        "30",
        "--optimistic",
        "works",
        "--reward",
        "800",
    )
    assert settings_from_args(args) == DevNodeSettings(
        network="privatenet-x",
        block_weight=12,
        min_block_weight=4,
        weight_decay_seconds=30,
        optimistic="works",
        reward=800,
    )


def test_bad_options() -> None:
    with pytest.raises(SystemExit):
        _parse("--optimistic", "maybe")
    with pytest.raises(ValueError, match="min_block_weight"):
        settings_from_args(_parse("--block-weight", "2", "--min-weight", "3"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:8090", ("127.0.0.1", 8090)), ("0.0.0.0:0", ("0.0.0.0", 0)), ("[::1]:80", ("::1", 80))],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["8090", "host:", ":8090", "h:99999", "h:x"])
def test_parse_listen_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="--listen"):
        parse_listen(text)


async def test_run_from_args_serves(nursery: trio.Nursery) -> None:
    args = _parse("--listen", "127.0.0.1:0", "--block-weight", "3", "--network", "privatenet-cli")
    port = await nursery.start(run_devnode_from_args, args)
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/v1a/mining_ws") as ws:
        with trio.fail_after(5):
            notify = json.loads(await ws.get_message())
    assert notify["params"][0]["weight"] == 3
