"""Hash benchmark: ``python bench/hash_bench.py [--seconds S] [--workers N] [--json]``.

Same measurement as ``miningproxy hash-bench``: the WorkerPool's per-worker rate against a
straightforward hashlib loop measured in the same run (see hashing/bench.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hashing.bench import format_hash_bench, run_hash_bench  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measurement time per side (default 5)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args(argv)
    result = run_hash_bench(args.seconds, args.workers)
    print(json.dumps(result) if args.json else format_hash_bench(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
