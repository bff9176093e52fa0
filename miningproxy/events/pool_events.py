"""The pool's own event stream (``/pool/event_ws``): the pool's accounting record.

It speaks the node's event protocol, so every event_ws client works with it. Its identity:
``peer_id`` is the proxy's id (made once, kept in the database), ``stream_id`` is made once with
the stream, ``network`` is the upstream network. Ids start at 0 with ``LOAD_STARTED``.

Event objects have the node's shape, ``{"id", "timestamp", "type", "data", "group_id": null}``,
with these types and ``data``:

``LOAD_STARTED``
    ``{}`` -- event 0, written when the stream is created.
``POOL_TEMPLATE_CHANGED``
    ``{"height", "parent_hash", "weight", "reward", "clean", "node"}`` -- the pool mines a new
    template; ``clean`` is true when the tip changed (every earlier job is stale).
``POOL_MINER_CONNECTED`` / ``POOL_MINER_DISCONNECTED``
    ``{"miner", "worker", "address", "peer"}`` (+ ``"reason"`` on disconnect) -- ``miner`` is the
    connection's id (unique per connection), ``worker`` the rig's worker name, ``address`` the
    address it mines for, ``peer`` its remote address (``""`` for local workers).
``POOL_SHARE_ACCEPTED``
    ``{"miner", "worker", "address", "job_id", "share_weight", "work", "hash", "height"}`` -- one
    accepted share. ``work`` is the share's work as a decimal integer string,
    ``floor(0.5 + 2**share_weight)`` (the rule the node uses for ``accumulated_weight_raw``):
    summing it is exact, and a string keeps it exact in JavaScript too. A share that is also a
    block is first a share: the ``POOL_BLOCK_FOUND`` follows it.
``POOL_BLOCK_FOUND``
    ``{"hash", "height", "weight", "miner", "worker", "address", "job_id"}``
``POOL_BLOCK_SUBMITTED`` / ``POOL_BLOCK_ACCEPTED``
    ``{"hash", "height", "miner", "worker", "address", "node"}``
``POOL_BLOCK_REJECTED``
    ``{"hash", "height", "miner", "worker", "address", "node", "status", "reason"}`` -- ``status``
    is ``rejected`` (the node refused it), ``stale`` (another block won) or ``error`` (no answer).
``POOL_UPSTREAM_CHANGED``
    ``{"node", "previous", "reason"}`` -- the mining upstream switched nodes (``node`` null: none).

Every block event names its miner, so a payout process never needs to join events. A reader that
starts from id 0 can recompute every address's accepted work and blocks exactly:
:func:`recompute_accounting` is that computation.

Writes are group-committed: :meth:`PoolEvents.record` assigns the next id at once (never blocks),
a background task commits everything recorded so far in one transaction, and
:meth:`PoolEvents.wait_durable` returns once an id is on disk. Await it before telling a rig its
share was accepted: then a crash loses at most what nobody was told, and since ids are only ever
made durable in order, it never leaves a gap.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from typing import Any

import trio

from miningproxy.events.block_journal import BlockJournal, JournaledBlock, encode_line
from miningproxy.events.feed import EventFeed
from miningproxy.events.log import EventLog, IdentityMismatch, StoredEvent, StreamIdentity
from miningproxy.events.metrics import EventMetrics
from miningproxy.events.stream import dumps

# The JSON string encoder the node's encoding (ensure_ascii=False) uses, quotes included.
_string: Callable[[str], str] = json.encoder.encode_basestring  # type: ignore[attr-defined]
_finite = math.isfinite

log = logging.getLogger("miningproxy.events.pool")

POOL_SEQ = "pool"
JOURNAL_STREAM = "found-blocks"  # write_errors' label for the found-block journal
PROXY_PEER_ID_KEY = "proxy.peer_id"

LOAD_STARTED = "LOAD_STARTED"
POOL_TEMPLATE_CHANGED = "POOL_TEMPLATE_CHANGED"
POOL_MINER_CONNECTED = "POOL_MINER_CONNECTED"
POOL_MINER_DISCONNECTED = "POOL_MINER_DISCONNECTED"
POOL_SHARE_ACCEPTED = "POOL_SHARE_ACCEPTED"
POOL_BLOCK_FOUND = "POOL_BLOCK_FOUND"
POOL_BLOCK_SUBMITTED = "POOL_BLOCK_SUBMITTED"
POOL_BLOCK_ACCEPTED = "POOL_BLOCK_ACCEPTED"
POOL_BLOCK_REJECTED = "POOL_BLOCK_REJECTED"
POOL_UPSTREAM_CHANGED = "POOL_UPSTREAM_CHANGED"
POOL_EVENT_TYPES = (
    LOAD_STARTED,
    POOL_TEMPLATE_CHANGED,
    POOL_MINER_CONNECTED,
    POOL_MINER_DISCONNECTED,
    POOL_SHARE_ACCEPTED,
    POOL_BLOCK_FOUND,
    POOL_BLOCK_SUBMITTED,
    POOL_BLOCK_ACCEPTED,
    POOL_BLOCK_REJECTED,
    POOL_UPSTREAM_CHANGED,
)


MINER_PARTS_CACHE = 65_536  # rigs whose share event text is kept (share_miner_part): one each
VALUE_PARTS_CACHE = 1024  # share weights, and heights, whose share event text is kept

_stored = partial(tuple.__new__, StoredEvent)  # builds a StoredEvent from a full 3-tuple, per share


class PoolEventsBusy(RuntimeError):
    """Too many events are waiting for the disk: the caller should refuse the work (the disk is stuck)."""


def weight_to_work(weight: float) -> int:
    """The work of a weight as an integer: ``floor(0.5 + 2**weight)``, as the node computes it."""
    return math.floor(0.5 + 2**weight)


def event_text(event_id: int, timestamp: float, event_type: str, data: Mapping[str, Any]) -> str:
    """An event object's JSON text, in the node's field order and encoding."""
    return dumps({"id": event_id, "timestamp": timestamp, "type": event_type, "data": data, "group_id": None})


def share_event_parts(
    miner: str, worker: str, address: str, job_id: str, share_weight: float, work: str, height: int
) -> tuple[str, str] | None:
    """A ``POOL_SHARE_ACCEPTED`` event's text around its id, timestamp and hash, which are all that
    change from one share of a job to the next: ``(head, tail)`` such that the event's JSON text is
    ``'{"id":ID,"timestamp":TS,' + head + HASH + tail``, HASH being the JSON string of the hash.
    None when a value is of another type than the usual ones (the generic encoder must do it)."""
    who = share_miner_part(miner, worker, address)
    weight = share_weight_part(share_weight, work)
    tail = share_height_part(height)
    if who is None or weight is None or tail is None or type(job_id) is not str:
        return None
    return f"{who}{_string(job_id)}{weight}", tail


# The pieces of share_event_parts, each made of what one kind of thing fixes: the rig, the share
# weight, the block height. repr() of a finite float and str() of an int are what the JSON
# encoder writes.


def share_miner_part(miner: str, worker: str, address: str) -> str | None:
    """The text from the event's type up to its job id's value."""
    if type(miner) is str and type(worker) is str and type(address) is str:
        return (
            f'"type":"POOL_SHARE_ACCEPTED","data":{{"miner":{_string(miner)},"worker":{_string(worker)},'
            f'"address":{_string(address)},"job_id":'
        )
    return None


def share_weight_part(share_weight: float, work: str) -> str | None:
    """The text after the job id's value, up to the hash's."""
    if type(share_weight) is float and type(work) is str and _finite(share_weight):
        return f',"share_weight":{share_weight!r},"work":{_string(work)},"hash":'
    return None


def share_height_part(height: int) -> str | None:
    """The text after the hash's value, to the end."""
    if type(height) is int:
        return f',"height":{height}}},"group_id":null}}'
    return None


def share_event_text(
    event_id: int,
    timestamp: float,
    miner: str,
    worker: str,
    address: str,
    job_id: str,
    share_weight: float,
    work: str,
    hash: str,
    height: int,
) -> str:
    """A ``POOL_SHARE_ACCEPTED`` event's JSON text: exactly ``event_text(..., POOL_SHARE_ACCEPTED,
    data)`` (same bytes), assembled from :func:`share_event_parts` instead of encoding a dict per
    share (the share path's hottest event). Values of other types than the usual ones take the
    generic way."""
    parts = share_event_parts(miner, worker, address, job_id, share_weight, work, height)
    if parts is not None and type(event_id) is int and type(timestamp) is float and type(hash) is str:
        if _finite(timestamp):
            return f'{{"id":{event_id},"timestamp":{timestamp!r},{parts[0]}{_string(hash)}{parts[1]}'
    return event_text(
        event_id,
        timestamp,
        POOL_SHARE_ACCEPTED,
        {
            "miner": miner,
            "worker": worker,
            "address": address,
            "job_id": job_id,
            "share_weight": share_weight,
            "work": work,
            "hash": hash,
            "height": height,
        },
    )


def open_pool_stream(
    event_log: EventLog, network: str, *, clock: Callable[[], float] = time.time
) -> StreamIdentity:
    """Create the pool stream on first use (identity + ``LOAD_STARTED`` in one transaction) or
    check the existing one; returns its identity.

    Raises IdentityMismatch when the database holds a pool stream of another network: one
    database records one network's pool (point ``[events] database`` elsewhere for another).
    """
    stored = event_log.identity(POOL_SEQ)
    if stored is not None:
        if stored.network != network:
            raise IdentityMismatch(
                POOL_SEQ, stored, StreamIdentity(stored.peer_id, network, stored.stream_id)
            )
        return stored
    peer_id = event_log.set_meta_once(PROXY_PEER_ID_KEY, secrets.token_hex(32))
    identity = StreamIdentity(peer_id, network, str(uuid.uuid4()))
    now = clock()
    event_log.append(POOL_SEQ, [StoredEvent(0, now, event_text(0, now, LOAD_STARTED, {}))], identity=identity)
    return identity


def _remember(table: dict[Any, str], bound: int, key: Any, part: str) -> str:
    """Keep ``part`` under ``key`` in a table of at most ``bound`` entries (when it is full, its
    older half goes: dicts keep their insertion order)."""
    if len(table) >= bound:
        for stale in list(islice(table, bound // 2)):
            del table[stale]
    table[key] = part
    return part


class PoolEvents:
    """The pool event writer. ``feed`` must be the ``pool`` feed of a log opened with open_pool_stream."""

    def __init__(
        self,
        feed: EventFeed,
        *,
        clock: Callable[[], float] = time.time,
        max_batch: int = 1000,
        max_pending: int = 100_000,
        retry_delay: float = 1.0,
        metrics: EventMetrics | None = None,
        journal: BlockJournal | None = None,
        journaled_before: Sequence[JournaledBlock] = (),
    ) -> None:
        if feed.identity is None or feed.last_id is None:
            raise ValueError("the pool feed has no stream yet: call open_pool_stream() before PoolEvents()")
        self.feed = feed
        self.clock = clock
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.retry_delay = retry_delay
        self.metrics = metrics
        self._next_id = feed.last_id + 1
        self._pending: deque[StoredEvent] = deque()
        self._wake = trio.Event()
        # A share event's text pieces by what they hold ("" where the values are not the usual
        # types): the rig's (share_miner_part), the weight's, the height's.
        self._miner_parts: dict[tuple[str, str, str], str] = {}
        self._weight_parts: dict[float, str] = {}
        self._height_parts: dict[int, str] = {}
        # Why the last write failed, while writes fail (disk full, read-only): work that needs a
        # record is refused at once instead of piling up behind a disk that takes nothing.
        self.failing: str | None = None
        # The found-block journal (an open BlockJournal, or None), what a previous run left in it
        # (kept in the file until recovery has put each block in the record: see
        # release_journaled_before), and the event id whose commit lets it be emptied: None when
        # nothing in it waits, infinity while a journaled block's POOL_BLOCK_FOUND is not recorded.
        self.journal = journal if journal is not None and journal.is_open else None
        self._stream_id = feed.identity.stream_id if self.journal is not None else ""  # (its lines')
        self.journaled_before = list(journaled_before)
        self._journal_needs: float | None = None
        if self.journal is not None and not self.journaled_before:
            self.journal.clear()  # (nothing, or only lines that were not blocks: logged at open)

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def last_recorded(self) -> int:
        """The newest id recorded (durable or not): wait_durable() of it covers everything so far."""
        return self._next_id - 1

    # --- the writer task -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Commit recorded events, oldest first, in batches. Cancelling it abandons what is not durable."""
        task_status.started()
        while True:
            if not self._pending:
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            batch = [self._pending[i] for i in range(min(self.max_batch, len(self._pending)))]
            try:
                await self.feed.append(batch)
            except Exception as exc:
                if self.metrics is not None:
                    self.metrics.write_errors.labels(POOL_SEQ).inc()
                if self.failing is None:
                    log.exception(
                        "writing %d pool events failed; shares are refused until the record is "
                        "writable again (retrying every %gs)",
                        len(batch),
                        self.retry_delay,
                    )
                self.failing = f"{type(exc).__name__}: {exc}"
                await trio.sleep(self.retry_delay)
                continue
            if self.failing is not None:
                log.warning("the pool record is writable again (%d events were waiting)", len(self._pending))
                self.failing = None
            for _ in batch:
                self._pending.popleft()
            if self.metrics is not None:
                self.metrics.appended.labels(POOL_SEQ).inc(len(batch))
            needs = self._journal_needs
            if needs is not None and batch[-1].id >= needs and not self.journaled_before:
                self._empty_journal()

    async def flush(self) -> None:
        """Wait until everything recorded so far is durable."""
        if self._next_id > 0:
            await self.wait_durable(self._next_id - 1)

    # --- recording -------------------------------------------------------------------------------

    def record(self, event_type: str, data: Mapping[str, Any], *, essential: bool = False) -> int:
        """Queue one event; returns its id at once. Raises PoolEventsBusy when the disk is far
        behind or failing, unless ``essential`` (block events: rare, and never to be lost)."""
        if event_type not in POOL_EVENT_TYPES:
            raise ValueError(f"unknown pool event type {event_type!r}")
        if not essential:
            self._check_room()
        event_id = self._next_id
        now = self.clock()
        self._pending.append(StoredEvent(event_id, now, event_text(event_id, now, event_type, data)))
        self._next_id += 1
        self._wake.set()
        return event_id

    def _check_room(self) -> None:
        if self.failing is not None:
            raise PoolEventsBusy(f"the pool record cannot be written: {self.failing}")
        if len(self._pending) >= self.max_pending:
            raise PoolEventsBusy(f"{len(self._pending)} pool events are waiting for the disk")

    async def wait_durable(self, event_id: int) -> None:
        """Return once event ``event_id`` is committed (what a rig may be told is on disk)."""
        await self.feed.wait_for(event_id)

    async def emit(self, event_type: str, data: Mapping[str, Any]) -> int:
        """record() and wait_durable() in one."""
        event_id = self.record(event_type, data)
        await self.wait_durable(event_id)
        return event_id

    # --- typed helpers (they return the event id; await wait_durable(id) where it matters) -------

    def template_changed(
        self, *, height: int, parent_hash: str, weight: float, reward: int, clean: bool, node: str
    ) -> int:
        return self.record(
            POOL_TEMPLATE_CHANGED,
            {
                "height": height,
                "parent_hash": parent_hash,
                "weight": weight,
                "reward": reward,
                "clean": clean,
                "node": node,
            },
        )

    def miner_connected(self, *, miner: str, worker: str, address: str, peer: str = "") -> int:
        return self.record(
            POOL_MINER_CONNECTED, {"miner": miner, "worker": worker, "address": address, "peer": peer}
        )

    def miner_disconnected(
        self, *, miner: str, worker: str, address: str, peer: str = "", reason: str = ""
    ) -> int:
        return self.record(
            POOL_MINER_DISCONNECTED,
            {"miner": miner, "worker": worker, "address": address, "peer": peer, "reason": reason},
        )

    def share_accepted(
        self,
        *,
        miner: str,
        worker: str,
        address: str,
        job_id: str,
        share_weight: float,
        hash: bytes | str,
        height: int,
    ) -> int:
        # record(POOL_SHARE_ACCEPTED, {...}) without the dict: the same text, a lot cheaper. It is
        # put together from pieces kept per rig, per share weight and per height: all that is not
        # the id, the time, the job id or the hash. (Pieces kept per job were made again for
        # nearly every share once the rigs outnumbered the cache: 8,192 jobs, 10,000 rigs.)
        self._check_room()
        event_id = self._next_id
        now = self.clock()
        who = self._miner_parts.get((miner, worker, address))
        if who is None:
            who = _remember(
                self._miner_parts, MINER_PARTS_CACHE, (miner, worker, address),
                share_miner_part(miner, worker, address) or "",
            )  # fmt: skip
        weight = self._weight_parts.get(share_weight)
        if weight is None:
            weight = _remember(
                self._weight_parts, VALUE_PARTS_CACHE, share_weight,
                share_weight_part(share_weight, str(weight_to_work(share_weight))) or "",
            )  # fmt: skip
        tail = self._height_parts.get(height)
        if tail is None:
            tail = _remember(self._height_parts, VALUE_PARTS_CACHE, height, share_height_part(height) or "")
        if (
            who
            and weight
            and tail
            # 2 == 2.0 and 1 == True: a piece found by an equal key of another type is not its own
            and type(share_weight) is float
            and type(height) is int
            and type(job_id) is str
            and type(hash) is bytes
            and type(now) is float
            and now - now == 0.0  # (finite)
        ):
            # A hash's hex digits need no JSON escaping.
            text = f'{{"id":{event_id},"timestamp":{now!r},{who}{_string(job_id)}{weight}"{hash.hex()}"{tail}'
        else:
            work = str(weight_to_work(share_weight))
            text = share_event_text(
                event_id, now, miner, worker, address, job_id, share_weight, work, _hex(hash), height
            )
        pending = self._pending
        if not pending:
            self._wake.set()  # (the writer waits only when nothing is pending)
        pending.append(_stored((event_id, now, text)))  # StoredEvent(...), without NamedTuple's __new__
        self._next_id += 1
        return event_id

    def journal_block(
        self,
        block_hash: bytes,
        height: int,
        weight: float,
        miner: str,
        worker: str,
        address: str,
        job_id: str,
    ) -> None:
        """Write a found block to the journal (block_journal.py): call it just before the block
        goes upstream, and :meth:`block_found` right after. By position: it is on the block's
        way upstream."""
        journal = self.journal
        if journal is None:
            return
        hash_hex = block_hash.hex()
        line = encode_line(
            self._stream_id, self.clock(), hash_hex, height, weight, miner, worker, address, job_id
        )
        if journal.write_line(line, hash_hex):
            self._journal_needs = math.inf  # until its POOL_BLOCK_FOUND has an id (block_found)
        elif self.metrics is not None:
            self.metrics.write_errors.labels(JOURNAL_STREAM).inc()

    def block_found(
        self,
        *,
        hash: bytes | str,
        height: int,
        weight: float,
        miner: str,
        worker: str,
        address: str,
        job_id: str,
    ) -> int:
        event_id = self.record(
            POOL_BLOCK_FOUND,
            essential=True,
            data={
                "hash": _hex(hash),
                "height": height,
                "weight": weight,
                "miner": miner,
                "worker": worker,
                "address": address,
                "job_id": job_id,
            },
        )
        if self._journal_needs is not None:
            self._journal_needs = event_id  # its commit covers every journaled block so far
        return event_id

    def release_journaled_before(self, recorded_upto: int | None) -> None:
        """Recovery has put every block of :attr:`journaled_before` in the record, the last one as
        event ``recorded_upto`` (None: the record had them all): the journal may be emptied once
        that is committed."""
        self.journaled_before = []
        if recorded_upto is not None:
            needs = self._journal_needs
            self._journal_needs = recorded_upto if needs is None else max(needs, recorded_upto)
        needs = self._journal_needs
        last = self.feed.last_id
        if needs is None or (last is not None and last >= needs):
            self._empty_journal()

    def _empty_journal(self) -> None:
        self._journal_needs = None
        if self.journal is not None:
            self.journal.clear()

    def block_submitted(
        self, *, hash: bytes | str, height: int, miner: str, worker: str, address: str, node: str
    ) -> int:
        return self.record(
            POOL_BLOCK_SUBMITTED, _block(hash, height, miner, worker, address, node), essential=True
        )

    def block_accepted(
        self, *, hash: bytes | str, height: int, miner: str, worker: str, address: str, node: str
    ) -> int:
        return self.record(
            POOL_BLOCK_ACCEPTED, _block(hash, height, miner, worker, address, node), essential=True
        )

    def block_rejected(
        self,
        *,
        hash: bytes | str,
        height: int,
        miner: str,
        worker: str,
        address: str,
        node: str,
        status: str,
        reason: str,
    ) -> int:
        data = _block(hash, height, miner, worker, address, node)
        data["status"] = status
        data["reason"] = reason
        return self.record(POOL_BLOCK_REJECTED, data, essential=True)

    def upstream_changed(self, *, node: str | None, previous: str | None, reason: str = "") -> int:
        return self.record(POOL_UPSTREAM_CHANGED, {"node": node, "previous": previous, "reason": reason})


def _hex(value: bytes | str) -> str:
    return value.hex() if isinstance(value, bytes | bytearray) else value


def _block(
    hash: bytes | str, height: int, miner: str, worker: str, address: str, node: str
) -> dict[str, Any]:
    return {
        "hash": _hex(hash),
        "height": height,
        "miner": miner,
        "worker": worker,
        "address": address,
        "node": node,
    }


# --- accounting -----------------------------------------------------------------------------------


@dataclass
class AddressAccount:
    """What one payout address did, as recorded in the pool stream."""

    shares: int = 0
    work: int = 0  # sum of the accepted shares' integer work
    blocks_found: int = 0
    blocks_accepted: int = 0
    blocks_rejected: int = 0
    workers: set[str] = field(default_factory=set)


class AccountingError(ValueError):
    """The events do not form a complete pool stream (a gap, a foreign event)."""


def recompute_accounting(events: Iterable[Mapping[str, Any] | str]) -> dict[str, AddressAccount]:
    """Every address's accepted shares, work and blocks, from the pool stream read from id 0.

    ``events`` are event objects, EVENT frames (as dicts or JSON text) or a mix. The ids must run
    0, 1, 2, ... without a gap (an incomplete record would give wrong payouts, so it is refused).
    A block counts once per outcome even if an outcome were recorded twice.
    """
    accounts: dict[str, AddressAccount] = {}
    expected = 0
    outcomes: dict[str, str] = {}
    for item in events:
        event = json.loads(item) if isinstance(item, str) else item
        if event.get("type") == "EVENT" and "event" in event:
            event = event["event"]
        event_id = event.get("id")
        if event_id != expected:
            raise AccountingError(f"expected event {expected}, got {event_id!r}: the record has a gap")
        expected += 1
        event_type = event.get("type")
        data = event.get("data") or {}
        if event_type == POOL_SHARE_ACCEPTED:
            account = accounts.setdefault(data["address"], AddressAccount())
            account.shares += 1
            account.work += int(data["work"])
            account.workers.add(data["worker"])
        elif event_type == POOL_BLOCK_FOUND:
            accounts.setdefault(data["address"], AddressAccount()).blocks_found += 1
        elif event_type in (POOL_BLOCK_ACCEPTED, POOL_BLOCK_REJECTED):
            outcome = "accepted" if event_type == POOL_BLOCK_ACCEPTED else "rejected"
            if outcomes.get(data["hash"]) == outcome:
                continue
            previous = outcomes.get(data["hash"])
            outcomes[data["hash"]] = outcome
            account = accounts.setdefault(data["address"], AddressAccount())
            if previous == "accepted":
                account.blocks_accepted -= 1
            elif previous == "rejected":
                account.blocks_rejected -= 1
            if outcome == "accepted":
                account.blocks_accepted += 1
            else:
                account.blocks_rejected += 1
    return accounts
