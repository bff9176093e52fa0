"""The `miningproxy` command: run, devnode, hash-bench, --version."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from miningproxy import __version__

EXIT_CONFIG = 2


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="miningproxy", description="Stratum mining pool proxy for Hathor")
    parser.add_argument("--version", action="version", version=f"miningproxy {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="run the proxy")
    run.add_argument("--config", required=True, help="TOML configuration file (see configs/)")

    bench = commands.add_parser("hash-bench", help="measure local hashing speed against a naive baseline")
    bench.add_argument("--seconds", type=_positive_float, default=5.0, help="seconds per measurement")
    bench.add_argument(
        "--workers", type=_positive_int, default=None, help="worker processes (default: cores)"
    )
    bench.add_argument("--json", action="store_true", help="print one JSON object")

    devnode = commands.add_parser("devnode", help="run the embedded Hathor-compatible dev node alone")
    from miningproxy.devnode.cli import add_arguments

    add_arguments(devnode)
    return parser


def setup_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def _hash_bench(args: argparse.Namespace) -> int:
    import os

    from hashing.bench import format_hash_bench, run_hash_bench

    workers = args.workers or os.cpu_count() or 1
    result = run_hash_bench(args.seconds, workers)
    print(json.dumps(result) if args.json else format_hash_bench(result))
    return 0


def _run(args: argparse.Namespace) -> int:
    import trio

    from miningproxy.app import run_app
    from miningproxy.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"miningproxy: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.log.level)
    from miningproxy.limits import apply_open_file_limit

    config = apply_open_file_limit(config)  # raise RLIMIT_NOFILE; fit stratum.max_connections under it
    from miningproxy import gcpolicy

    gcpolicy.apply()  # no full-heap collection pauses on every few blocks with many rigs
    gcpolicy.freeze_startup()
    errors: list[ConfigError] = []
    try:
        trio.run(run_app, config)
    except* ConfigError as group:  # values that can only be checked against the live upstream
        errors.extend(group.exceptions)  # type: ignore[arg-type]
    except* KeyboardInterrupt:
        pass
    for exc in errors:
        print(f"miningproxy: config error: {exc}", file=sys.stderr)
    return EXIT_CONFIG if errors else 0


def _devnode(args: argparse.Namespace) -> int:
    import trio

    from miningproxy.devnode.cli import run_devnode_from_args

    setup_logging("info")
    try:
        trio.run(run_devnode_from_args, args)
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args)
    if args.command == "hash-bench":
        return _hash_bench(args)
    if args.command == "devnode":
        return _devnode(args)
    parser.print_help()
    return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
