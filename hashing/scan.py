"""Nonce scanning: find nonces whose block hash meets a target, as fast as pure Python allows.

Per nonce the work is two SHA-256 compressions (the header's compression is cached in a midstate),
so the loop is built around the C calls and nothing else:

- the nonce is split into a 14-byte high part, hashed into a per-block copy of the midstate, and a
  2-byte low part taken from a prebuilt table of the 65536 byte strings (no int->bytes per nonce);
- method lookups are bound to locals once per block;
- the raw digest is little-endian, so the most significant byte of the big-endian hash is the
  LAST raw byte: ``d[31] <= top`` (top = first byte of the target) rejects all but a sliver of
  nonces with one index, and only candidates pay for the reversal and the exact bytes comparison;
- the SHA-256 implementation is chosen by measurement (see :func:`fastest_impl`): on CPython 3.11
  the builtin ``_sha256`` beats OpenSSL for these tiny inputs because OpenSSL's per-call context
  allocation/copy costs more than the compression it saves.

Per nonce this costs ~0.73 us on CPython 3.11 (x86-64): ~75% is the two ``digest()`` calls, i.e. the
two software compressions; the rest the copy/constructor/update calls; the interpreter's own share is
small. Measured alternatives that did not win: map()/itertools pipelines that push the loop into C
(equal at best with ~1k-nonce batches, slower with large ones as the live hash objects fall out of
the cache), hashing the full 80-byte message per nonce instead of copying the midstate, OpenSSL for
either stage (its per-call context allocation and copy cost more than the SHA-NI compression saves),
unbound method descriptors instead of bound methods, and ``bytes.endswith`` as the prefilter
(argument parsing makes it ~4x slower than an index).
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from hashing.header import HEADER_SIZE, NONCE_SIZE
from hashing.pow import target_compare_key, weight_compare_key

NONCE_SPACE = 2 ** (8 * NONCE_SIZE)

_LOW_BITS = 16
_LOW_SIZE = 1 << _LOW_BITS
_LOW_MASK = _LOW_SIZE - 1
_HIGH_BYTES = NONCE_SIZE - _LOW_BITS // 8


@functools.cache
def _low_table() -> list[bytes]:
    """The 65536 two-byte big-endian suffixes, built once per process (~5 ms, ~2.5 MB)."""
    return [i.to_bytes(2, "big") for i in range(_LOW_SIZE)]


@dataclass(frozen=True)
class ShaImpl:
    """A SHA-256 constructor used for the inner (midstate + nonce) and the outer (32-byte) hash."""

    name: str
    inner: Callable[..., Any]
    outer: Callable[..., Any]


def _constructors() -> dict[str, Callable[..., Any]]:
    found: dict[str, Callable[..., Any]] = {"openssl": hashlib.sha256}
    # CPython's own SHA-256: `_sha256` up to 3.11, `_sha2` (HACL*) from 3.12. Private modules, so
    # they are optional: hashlib always works.
    for module, name in (("_sha2", "builtin"), ("_sha256", "builtin")):
        try:
            found[name] = __import__(module).sha256
            break
        except (ImportError, AttributeError):
            continue
    return found


def available_impls() -> list[ShaImpl]:
    """Every inner/outer combination of the SHA-256 constructors this interpreter has."""
    cons = _constructors()
    return [ShaImpl(f"{a}+{b}" if a != b else a, cons[a], cons[b]) for a in cons for b in cons]


def _time_impl(impl: ShaImpl, header: bytes, n: int) -> float:
    t0 = time.process_time()  # CPU time: being descheduled by a neighbour does not count
    for _ in _iter_hits(impl, header, b"", 0, n):
        pass
    return time.process_time() - t0


@functools.cache
def fastest_impl() -> ShaImpl:
    """Pick the quickest implementation by timing each on a few thousand nonces (~30 ms, once).

    Rounds are interleaved and the best round of each counts, so a burst of load from a neighbour
    spoils single samples rather than a whole candidate.
    """
    impls = available_impls()
    if len(impls) == 1:
        return impls[0]
    header = bytes(range(HEADER_SIZE))
    best: dict[str, float] = {impl.name: float("inf") for impl in impls}
    for _ in range(15):
        for impl in impls:
            best[impl.name] = min(best[impl.name], _time_impl(impl, header, 512))
    return min(impls, key=lambda impl: best[impl.name])


def _compare_key(target: int | float) -> bytes:
    # int = target, float = weight. bool is an int subclass that is surely a caller mistake.
    if isinstance(target, bool):
        raise TypeError("target must be an int target or a float weight, not bool")
    if isinstance(target, int):
        return target_compare_key(target)
    if isinstance(target, float):
        return weight_compare_key(target)
    raise TypeError(f"target must be an int target or a float weight, got {type(target).__name__}")


def _check_range(start: int, count: int) -> None:
    if start < 0 or count < 0 or start + count > NONCE_SPACE:
        raise ValueError(f"nonce range [{start}, {start}+{count}) is outside [0, 2**128)")


def _iter_hits(
    impl: ShaImpl, header: bytes, key: bytes, start: int, count: int
) -> Iterator[tuple[int, bytes]]:
    """Yield (nonce, big-endian hash) for every nonce in [start, start+count) with hash < key."""
    if not count:
        return
    low_table = _low_table()
    inner = impl.inner
    outer = impl.outer
    mid = inner(header)
    # A hash can only meet the key if its most significant byte is <= the key's first byte.
    # The empty key (used to time implementations) is met by nothing.
    top = key[0] if key else -1
    stop = start + count
    for high in range(start >> _LOW_BITS, ((stop - 1) >> _LOW_BITS) + 1):
        base = high << _LOW_BITS
        block_mid = mid.copy()
        block_mid.update(high.to_bytes(_HIGH_BYTES, "big"))
        copy = block_mid.copy
        lows = low_table[max(start - base, 0) : min(stop - base, _LOW_SIZE)]
        for low in lows:
            h = copy()
            h.update(low)
            d = outer(h.digest()).digest()
            if d[31] <= top:
                d = d[::-1]
                if d < key:
                    yield base | (low[0] << 8 | low[1]), d


class Scanner:
    """Scans one header against one target; cheap to build (per job), reusable for many ranges.

    ``target`` is an int target (hash < target) or a float weight (Hathor's target for it).
    """

    __slots__ = ("header", "key", "impl")

    def __init__(self, header: bytes, target: int | float, *, impl: ShaImpl | None = None) -> None:
        if len(header) != HEADER_SIZE:
            raise ValueError(f"mining header must be {HEADER_SIZE} bytes, got {len(header)}")
        self.header = bytes(header)
        self.key = _compare_key(target)
        self.impl = impl if impl is not None else fastest_impl()

    def iter_hits(self, start: int, count: int) -> Iterator[tuple[int, bytes]]:
        """Lazily yield (nonce, big-endian hash) for each hit in [start, start+count), in order."""
        _check_range(start, count)
        return _iter_hits(self.impl, self.header, self.key, start, count)

    def hits(self, start: int, count: int) -> list[tuple[int, bytes]]:
        """All hits in [start, start+count), in nonce order."""
        return list(self.iter_hits(start, count))

    def first(self, start: int, count: int) -> tuple[int, bytes] | None:
        """The first hit in [start, start+count), or None."""
        return next(self.iter_hits(start, count), None)


def scan(header: bytes, target: int | float, start: int, count: int) -> int | None:
    """First nonce in [start, start+count) whose block hash meets ``target``, or None.

    ``target`` is an int target (the hash, read big-endian, must be below it) or a float weight
    (Hathor's ``int(2**(256-w) - 1)``). Pass weights as floats: an int is always a target.
    """
    hit = Scanner(header, target).first(start, count)
    return None if hit is None else hit[0]


def split_nonce_space(worker_index: int, n_workers: int, nonce_size: int = NONCE_SIZE) -> tuple[int, int]:
    """The (start, count) share of the 2**(8*nonce_size) nonces that worker ``worker_index`` owns.

    The space is cut into ``n_workers`` contiguous ranges in worker order; the first
    ``space % n_workers`` ranges get one extra nonce. The ranges are pairwise disjoint and their
    union is the whole space, so N workers scanning their own range never repeat each other's work.
    Contiguous ranges (rather than strides) keep each worker on its fast sequential path.
    """
    if n_workers < 1:
        raise ValueError(f"n_workers must be >= 1, got {n_workers}")
    if not 0 <= worker_index < n_workers:
        raise ValueError(f"worker_index must lie in [0, {n_workers}), got {worker_index}")
    if nonce_size < 0:
        raise ValueError(f"nonce_size must be >= 0, got {nonce_size}")
    space = 2 ** (8 * nonce_size)
    base, extra = divmod(space, n_workers)
    start = worker_index * base + min(worker_index, extra)
    return start, base + (1 if worker_index < extra else 0)
