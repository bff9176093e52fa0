"""Share validation: the hot path of the pool.

A share is a nonce for a job. It is checked against the job's own share target (a job keeps the
weight it was sent with, whatever vardiff decided since) using the job's cached midstate: two
SHA-256 compressions and a bytes comparison. A share whose hash also meets the block weight is a
block; only such checked blocks are ever submitted (the node disconnects on invalid ones).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

from hashing.header import NONCE_SIZE, HeaderHasher
from miningproxy.pool.jobs import Job

MAX_NONCE = (1 << (8 * NONCE_SIZE)) - 1


class ShareResult(NamedTuple):  # a tuple: one is made per share, and a frozen dataclass is slow to build
    accepted: bool
    reason: str  # "ok" or why it was rejected: invalid-solution, stale, duplicate, bad-nonce, storage-busy
    hash: bytes | None = None  # big-endian block hash, when computed
    is_block: bool = False


STALE = ShareResult(False, "stale")
DUPLICATE = ShareResult(False, "duplicate")
BAD_NONCE = ShareResult(False, "bad-nonce")
STORAGE_BUSY = ShareResult(False, "storage-busy")  # the accounting record cannot keep up

# Builds a ShareResult from a full 4-tuple without NamedTuple's Python-level __new__ (per share).
_result = partial(tuple.__new__, ShareResult)


def check_share(job: Job, nonce: int, tip: bytes | None) -> ShareResult:
    """Judge ``nonce`` for ``job``; ``tip`` is the current best block (the current template's
    first parent). A job built on another parent can no longer make a block: it is stale."""
    if not 0 <= nonce <= MAX_NONCE:
        return BAD_NONCE
    terms = job.terms
    if terms.tip != tip:
        return STALE
    seen = job.seen  # (job.seen_nonces and job.hasher, without their calls: every share)
    if seen is None:
        seen = job.seen = set()
    elif nonce in seen:
        return DUPLICATE
    hasher = job.midstate
    if hasher is None:
        hasher = job.midstate = HeaderHasher(job.header)
    block_hash = hasher.hash_nonce_bytes(nonce.to_bytes(NONCE_SIZE, "big"))
    if block_hash >= terms.share_target:
        return _result((False, "invalid-solution", block_hash, False))
    seen.add(nonce)
    return _result((True, "ok", block_hash, block_hash < terms.block_target))
