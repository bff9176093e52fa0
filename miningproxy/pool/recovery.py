"""Blocks found before a restart whose fate the record never got: settle them against the node.

The pool record says ``POOL_BLOCK_FOUND`` in the step that writes the block upstream (the block
first: it is never held up for the record), durable at the record's next commit a few ms later,
before the rig hears "ok" for it; and its fate (``POOL_BLOCK_ACCEPTED`` / ``POOL_BLOCK_REJECTED``)
once the node has decided. Just before the block goes upstream it is also written to the
found-block journal (:mod:`miningproxy.events.block_journal`): a proxy killed before the commit
leaves the block there, and on start-up each journaled block the record lacks is recorded again
(only a power loss within those few ms can still lose a block's record; the block itself is the
node's by then). A proxy stopped between the commit and the fate (SIGKILL, a crash, a SIGTERM
whose grace ran out) leaves a found block without a fate: a block reported found and then
forgotten. On start-up the record is scanned up to its last event before this run, and each such
block (and each one recorded again from the journal) is judged against the node once it serves
templates:

1. the node's tip is the block -> accepted;
2. the node's ``/v1a/transaction?id=`` knows it (needs the node's wallet index): accepted, or
   stale when the node voided it; "not found" means the node never got it -> error;
3. else the node's ``/v1a/status`` best chain (its last blocks, height and hash): the block's
   height is in that window -> accepted when the hash is there, stale when another block is;
4. else the fate cannot be learned: recorded as ``error`` with the reason, never left open.

The struct of a block is not in the record, so a block the node never got cannot be resubmitted;
by then its parent is no longer the tip anyway.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from miningproxy.events.pool_events import (
    POOL_BLOCK_ACCEPTED,
    POOL_BLOCK_FOUND,
    POOL_BLOCK_REJECTED,
    PoolEvents,
)
from miningproxy.upstream.node_http import NodeHttpError, http_get, node_url

log = logging.getLogger("miningproxy.pool.recovery")

READ_CHUNK = 5000
_BLOCK_MARK = "POOL_BLOCK_"  # cheap filter: only events that may be block events are parsed


@dataclass(frozen=True)
class UnsettledBlock:
    event_id: int
    timestamp: float
    hash: str
    height: int
    miner: str
    worker: str
    address: str
    job_id: str


def _block_events(rows: Iterable[tuple[int, str]]) -> Iterator[tuple[int, dict[str, Any], dict[str, Any]]]:
    """(id, event, its data) of the rows that may be block events (the others are not parsed)."""
    for event_id, text in rows:
        if _BLOCK_MARK in text:
            event = json.loads(text)
            yield event_id, event, event.get("data") or {}


def unsettled_blocks(rows: Iterable[tuple[int, str]]) -> list[UnsettledBlock]:
    """The found blocks without a later fate, in the order found, from (id, event text) rows."""
    found: dict[str, UnsettledBlock] = {}
    for event_id, event, data in _block_events(rows):
        block_hash = data.get("hash")
        if event.get("type") == POOL_BLOCK_FOUND and isinstance(block_hash, str):
            found[block_hash] = UnsettledBlock(
                event_id,
                float(event.get("timestamp") or 0.0),
                block_hash,
                int(data.get("height") or 0),
                str(data.get("miner", "")),
                str(data.get("worker", "")),
                str(data.get("address", "")),
                str(data.get("job_id", "")),
            )
        elif event.get("type") in (POOL_BLOCK_ACCEPTED, POOL_BLOCK_REJECTED):
            found.pop(block_hash, None)
    return sorted(found.values(), key=lambda b: b.event_id)


def judge_from_tx(block: UnsettledBlock, answer: Any) -> tuple[str, str] | None:
    """The fate from a node's /v1a/transaction answer; None when it does not tell."""
    if not isinstance(answer, dict):
        return None
    if answer.get("success") is True:
        meta = answer.get("meta")
        voided = meta.get("voided_by") if isinstance(meta, dict) else None
        if voided == []:
            return "accepted", "the node has it in its best chain (settled after a restart)"
        if voided:
            return "stale", "the node has it but voided it (settled after a restart)"
        return None
    message = answer.get("message")
    if answer.get("success") is False and isinstance(message, str) and "not found" in message.lower():
        return "error", "the node never got it: the proxy stopped before submitting it"
    return None


def judge_from_chain(block: UnsettledBlock, best: Sequence[tuple[int, str]]) -> tuple[str, str] | None:
    """The fate from the node's best chain window ([height, hash] pairs); None outside it."""
    heights = {height: block_hash for height, block_hash in best}
    if not heights or not min(heights) <= block.height <= max(heights):
        return None
    if heights.get(block.height) == block.hash:
        return "accepted", f"the node's best chain has it at height {block.height} (settled after a restart)"
    return (
        "stale",
        f"the node's best chain has another block at height {block.height} (settled after a restart)",
    )


async def _get_json(url: str) -> Any:
    try:
        answer = await http_get(url, timeout=10.0)
    except NodeHttpError as exc:
        log.info("%s", exc)
        return None
    if answer.status != 200:
        return None
    try:
        return json.loads(answer.body)
    except (ValueError, RecursionError):
        return None


def _best_chain(status: Any) -> list[tuple[int, str]]:
    dag = status.get("dag") if isinstance(status, dict) else None
    pairs = dag.get("best_blockchain") if isinstance(dag, dict) else None
    best = []
    for pair in pairs if isinstance(pairs, list) else []:
        if (
            isinstance(pair, list)
            and len(pair) == 2
            and isinstance(pair[0], int)
            and isinstance(pair[1], str)
        ):
            best.append((pair[0], pair[1]))
    return best


async def fate_from_node(block: UnsettledBlock, node: str, tip: bytes | None) -> tuple[str, str]:
    if tip is not None and tip.hex() == block.hash:
        return "accepted", "the node's tip is this block (settled after a restart)"
    fate = judge_from_tx(block, await _get_json(node_url(node, f"transaction?id={block.hash}")))
    if fate is None:
        fate = judge_from_chain(block, _best_chain(await _get_json(node_url(node, "status"))))
    if fate is None:
        fate = (
            "error",
            "fate unknown: the proxy stopped before the node answered, and the node cannot tell "
            "(no wallet index, and the block is older than its status window)",
        )
    return fate


async def read_record(events: PoolEvents, upto: int) -> list[tuple[int, str]]:
    """The pool record's events up to id ``upto``, read in a worker thread in chunks."""
    feed = events.feed
    rows: list[tuple[int, str]] = []
    start = feed.first_id or 0
    while start <= upto:
        chunk = await trio.to_thread.run_sync(
            feed.log.read, feed.seq, start, min(READ_CHUNK, upto - start + 1)
        )
        if not chunk:
            break
        rows.extend((event_id, text) for event_id, text in chunk if _BLOCK_MARK in text)
        start = chunk[-1][0] + 1
    return rows


async def settle_unfinished_blocks(pool: Any, nodes: Sequence[str], *, upto: int | None) -> int:
    """Record a fate for every block found before this run without one; returns how many.

    ``pool`` is the PoolService (``.events``, ``.generation``, ``.work``, ``.metrics``);
    ``upto`` the record's last event id before this run started writing (None: empty record).
    A failure here is logged, never allowed to stop the proxy.
    """
    try:
        return await _settle(pool, nodes, upto)
    except Exception:
        log.exception("settling the blocks found before the restart failed")
        return 0


def rerecord_journaled(events: PoolEvents, rows: Sequence[tuple[int, str]]) -> list[UnsettledBlock]:
    """Record again each block the found-block journal kept from before the restart and the
    record (``rows``: its block events up to then) lacks: a proxy killed between submitting a
    block and committing its ``POOL_BLOCK_FOUND``. Returns them, without a fate yet; once they
    are committed the journal may be emptied."""
    previous = events.journaled_before
    if not previous:
        return []
    identity = events.feed.identity
    recorded = _found_hashes(rows)
    blocks: list[UnsettledBlock] = []
    for entry in previous:
        if identity is None or entry.stream_id != identity.stream_id:
            log.error(
                "found-block journal: block %s (height %d, by %s) belongs to another pool record "
                "(stream %s, not %s): not recorded in this one",
                entry.hash,
                entry.height,
                entry.miner,
                entry.stream_id,
                identity.stream_id if identity else None,
            )
            continue
        if entry.hash in recorded:
            continue
        recorded.add(entry.hash)
        event_id = events.block_found(
            hash=entry.hash,
            height=entry.height,
            weight=entry.weight,
            miner=entry.miner,
            worker=entry.worker,
            address=entry.address,
            job_id=entry.job_id,
        )
        log.warning(
            "block %s (height %d, by %s) was submitted before the restart but missing from the "
            "record: recorded again from the found-block journal",
            entry.hash,
            entry.height,
            entry.miner,
        )
        blocks.append(
            UnsettledBlock(
                event_id,
                entry.timestamp,
                entry.hash,
                entry.height,
                entry.miner,
                entry.worker,
                entry.address,
                entry.job_id,
            )
        )
    events.release_journaled_before(blocks[-1].event_id if blocks else None)
    return blocks


def _found_hashes(rows: Iterable[tuple[int, str]]) -> set[str]:
    """Every block the rows say was found, settled or not."""
    return {
        data["hash"]
        for _, event, data in _block_events(rows)
        if event.get("type") == POOL_BLOCK_FOUND and isinstance(data.get("hash"), str)
    }


async def _settle(pool: Any, nodes: Sequence[str], upto: int | None) -> int:
    events: PoolEvents | None = pool.events
    if events is None or upto is None:
        return 0
    rows = await read_record(events, upto)
    blocks = unsettled_blocks(rows) + rerecord_journaled(events, rows)
    if not blocks:
        return 0
    log.warning(
        "%d block(s) found before the restart have no recorded fate: asking the node once it serves templates",
        len(blocks),
    )
    if pool.generation is None:
        async for _ in pool.work.subscribe():
            break
    generation = pool.generation
    node = generation.node if generation is not None and generation.node else nodes[0]
    for block in blocks:
        tip = pool.tip
        status, reason = await fate_from_node(block, node, tip)
        fields = {
            "hash": block.hash,
            "height": block.height,
            "miner": block.miner,
            "worker": block.worker,
            "address": block.address,
            "node": node,
        }
        if status == "accepted":
            events.block_accepted(**fields)
        else:
            events.block_rejected(**fields, status=status, reason=reason)
        pool.metrics.blocks.labels("recovered").inc()
        log.log(
            logging.INFO if status == "accepted" else logging.WARNING,
            "block found before the restart %s: height=%d hash=%s (%s)",
            status,
            block.height,
            block.hash,
            reason,
        )
    return len(blocks)
