"""One rig's Hathor Stratum session, sans-IO.

The session is fed lines (or framing errors), work signals and clock ticks, each with the current
time, and answers with bytes to send (:meth:`Session.data_to_send`), a close decision
(:attr:`Session.close_reason`: flush what is queued, then close) and events for the server
(:meth:`Session.take_events`: ban points, limit hits, weights for the histogram). It talks to the
pool only through :class:`JobSource` (``PoolService`` in production), so it is tested without
sockets, threads or trio.

Wire rules the real clients depend on (cpuminer, ccminer and cgminer Hathor forks, the node's own
StratumClient):

- the reply to ``subscribe`` is the very next line the rig receives (cpuminer and ccminer read
  exactly one line and give up otherwise), jobs only after it;
- a reply's ``id`` is the request's ``id`` untouched (ccminer ``strcmp``s the string id of its
  subscribe, cgminer matches integer ids of its submits);
- ``weight`` is always a JSON float: jansson's ``json_real_value`` reads an integer as 0 and the C
  miners then drop the job; it is also never 0 for the same reason;
- a fresh job at least every ``job_interval`` seconds (cpuminer reconnects after 300 s of
  silence and its threads stop mining work older than 600 s).

Payout: in ``pool`` mode jobs pay the pool's address and the rig's address (when it gives one) and
worker name are kept for accounting; in ``solo`` mode jobs pay the rig's own address, given in the
subscribe params or as the authorize user (``ADDRESS`` or ``ADDRESS.worker``); without one the rig
gets error 22 and is closed. An address of another network is always error 22 and a close.
A non-address authorize user in pool mode simply names the worker.

Share replies: accepted -> "ok"; invalid solution -> 30 with the hash and the job's target; stale
(job built on an old tip, or evicted from the history) -> 31; unknown job -> 32; duplicate -> 34;
a nonce that does not fit in nonce_size (16 bytes) -> 30 with a message saying so (the rig keeps
its connection: it is a bad share, not a protocol violation); a nonce or job_id that is not hex at
all, or missing params -> -32602 Invalid params, which closes the connection like every JSON-RPC
error at or below -32600.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

# The short way's decoder (see Session.receive_many): half the standard library scanner's time for
# a submit line. It reads integers beyond 64 bits as floats, so every line that is not the short
# way's, and every submit whose id is not an int, a string or null, is decoded again by the
# standard library.
from orjson import loads as _fast_loads

from hashing.header import NONCE_SIZE
from miningproxy.hathor.addresses import Address, AddressError, decode_address
from miningproxy.hathor.networks import Network
from miningproxy.pool.hashrate import HashrateMeter
from miningproxy.pool.jobs import Generation, Job, JobTerms
from miningproxy.pool.shares import ShareResult
from miningproxy.pool.stats import MinerId
from miningproxy.stratum import messages as m
from miningproxy.stratum.framing import FramerEvent, LineTooLong, NotUtf8
from miningproxy.stratum.settings import StratumSettings
from miningproxy.stratum.vardiff import Vardiff

DEFAULT_WORKER = "default"
MAX_WORKER_NAME = 64
EXPIRED_HISTORY = 64  # job ids evicted from the history that are still answered "stale"
VERSION_TIMEOUT = 60.0  # seconds to wait for a client.get_version answer
SHUTDOWN_MESSAGE = "Pool is shutting down, please reconnect shortly"

_JOB_ID = re.compile(r"[0-9a-fA-F]{32}")
_HEX = re.compile(r"[0-9a-fA-F]+")
_WORKER_UNSAFE = re.compile(r"[^\x21-\x7e]")


class JobMaker(Protocol):
    """Makes the jobs (``JobFactory``): the session asks it directly, once per rig per block."""

    def mint(self, payout_script: bytes | None, share_weight: float) -> tuple[JobTerms, str, bytes]:
        """A fresh job's terms, id and header, paying ``payout_script`` (None: the pool)."""
        ...


class JobSource(Protocol):
    """What a session needs from the pool (``PoolService`` has exactly this)."""

    @property
    def generation(self) -> Generation | None: ...

    @property
    def jobs(self) -> JobMaker: ...

    def judge_share(self, miner: MinerId, job: Job, nonce: int, now: float) -> ShareResult:
        """Judge (and record) a share; an accepted one is owed a :meth:`credit_shares`."""
        ...

    def credit_shares(self, miner: MinerId, count: int, work: float, now: float) -> None: ...


# --- events for the server -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Penalty:
    points: float
    reason: str


@dataclass(frozen=True, slots=True)
class LimitHit:
    limit: str
    detail: str


@dataclass(frozen=True, slots=True)
class WeightUsed:
    weight: float  # a job went out at a share weight different from the previous job's


@dataclass(frozen=True, slots=True)
class ShareRejected:
    reason: str  # a share the pool never saw (unknown or expired job): the pool did not count it


SessionEvent = Penalty | LimitHit | WeightUsed | ShareRejected


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# One decoder for every line: json.loads(text, parse_constant=...) builds a new one per call.
_decoder = json.JSONDecoder(parse_constant=_no_constant)
_scan_once = _decoder.scan_once


def decode_line(text: str) -> Any:
    """``_decoder.decode(text)``, faster for the usual line (an object with no surrounding
    whitespace): the scanner alone, without decode's two whitespace scans. Anything else, and
    every error, goes through decode itself."""
    if text[:1] == "{":
        try:
            value, end = _scan_once(text, 0)
        except (StopIteration, ValueError):
            pass
        else:
            if end == len(text):
                return value
    return _decoder.decode(text)


def parse_nonce(raw: Any) -> int | None:
    """A submitted nonce as an integer: big-endian hex with or without 0x (an integer is taken
    as is). None when it is not a nonce at all; overflow is left to the share check."""
    if type(raw) is str and raw.isascii() and raw.encode().isalnum():
        # The usual nonce. Of ASCII letters and digits, int(raw, 16) takes exactly what is
        # accepted below (hex digits after an optional 0x), and rejects the rest. (The bytes'
        # isalnum: the same answer for ASCII, at a third of str.isalnum's cost, measured.)
        try:
            return int(raw, 16)
        except ValueError:
            return None
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw if raw >= 0 else None
    if not isinstance(raw, str):
        return None
    text = raw.strip()
    if text[:2] in ("0x", "0X"):
        text = text[2:]
    if not _HEX.fullmatch(text):
        return None
    return int(text, 16)


def worker_name(text: str) -> str:
    name = _WORKER_UNSAFE.sub("_", text.strip())[:MAX_WORKER_NAME]
    return name or DEFAULT_WORKER


_ANONYMOUS = MinerId("", DEFAULT_WORKER)  # every session's miner until it says who it is


class Session:
    # Slotted: one per rig, and the fan-out touches every rig's on every block (attributes at
    # fixed offsets in the object, no per-instance dict: less memory, fewer cache misses).
    __slots__ = (
        "_awaiting_address_until", "_current", "_expired", "_expired_at", "_job_at", "_job_ids",
        "_job_ids_at", "_jobs", "_last_job_at", "_last_weight", "_outbox", "_outbox_bytes",
        "_pending_version", "_seq", "_unbooked", "_unsynced_accepts", "_version_asked", "accepted", "address",
        "blocks", "client_version", "close_reason", "connected_at", "events", "jobs_queued", "last_job_taken",
        "last_share_at", "meter", "miner", "network", "peer", "pool", "rejected", "settings",
        "shutting_down", "solo", "subscribed", "user_agent", "vardiff", "version_rtt", "worker",
    )  # fmt: skip

    def __init__(
        self,
        pool: JobSource,
        settings: StratumSettings,
        network: Network | None,
        *,
        payout_mode: str = "pool",
        peer: str = "",
        now: float = 0.0,
    ) -> None:
        if payout_mode not in ("pool", "solo"):
            raise ValueError(f"payout_mode must be 'pool' or 'solo', got {payout_mode!r}")
        self.pool = pool
        self.settings = settings
        self.network = network  # None until the upstream's network is known: "node syncing" till then
        self.solo = payout_mode == "solo"
        self.peer = peer
        self.connected_at = now
        self.subscribed = False
        self.shutting_down = False
        self.close_reason: str | None = None
        self.address: Address | None = None
        self.worker = DEFAULT_WORKER
        # Who the shares are credited to (the address is kept in pool mode too, for accounting).
        # Made again whenever address or worker change (_identity_changed), not per share: the
        # address's base58 costs a SHA-256.
        self.miner = _ANONYMOUS
        self.user_agent: str | None = None
        self.client_version: str | None = None
        self.version_rtt: float | None = None
        self.vardiff = Vardiff(settings.vardiff, now)
        self.meter = HashrateMeter()
        self.accepted = 0
        self.rejected: Counter[str] = Counter()
        # An "ok" for a share is queued that the pool's accounting record may not hold on disk
        # yet: the transport must wait for the record before writing it (take_unsynced_accepts).
        self._unsynced_accepts = False
        self.blocks = 0
        self.last_share_at: float | None = None
        # The job history: the last job_history jobs by id, their ids in a ring (oldest next to go
        # at _job_ids_at), and a ring of the ids that left it, answered "stale" rather than "not
        # found". Rings, not an OrderedDict: every rig gets a job on every block, and moving a
        # job through them is two stores, not two linked-list insertions and removals.
        self._jobs: dict[str, Job] = {}  # job id -> job (sent at its created_at)
        self._job_ids: list[str | None] = [None] * settings.job_history
        self._job_ids_at = 0
        self._expired: list[str | None] | None = None  # made when the first job leaves the history
        self._expired_at = 0
        self._current: Job | None = None
        self._last_job_at = now
        # A job whose line was handed over (take_new_job) but which is not in the history yet:
        # (job id, terms, header, sent at, clean). See book().
        self._unbooked: tuple[str, JobTerms, bytes, float, bool] | None = None
        self._last_weight: float | None = None
        self._awaiting_address_until: float | None = None
        self._outbox: list[bytes] = []  # encoded lines, in order
        self._job_at = -1  # where the one unsent job line is in _outbox (-1: none)
        self._outbox_bytes = 0
        # Events for the server, in order; read it to see whether there are any, take them with
        # take_events (the fan-out checks the list itself: no call per rig when it is empty).
        self.events: list[SessionEvent] = []
        self._seq = 0  # ids of our requests: jobs "0", "1", ...; get_version an integer
        self.jobs_queued = 0  # jobs queued so far (the newest unsent one replaces older unsent ones)
        self.last_job_taken = 0  # jobs_queued as of the last data_to_send() that carried a job
        self._pending_version: dict[int, float] = {}
        self._version_asked = False

    # --- identity and state --------------------------------------------------------------------

    @property
    def current_job(self) -> Job | None:
        if self._unbooked is not None:
            self.book()
        return self._current

    @property
    def waiting_for_address(self) -> bool:
        return self._awaiting_address_until is not None

    def hashrate(self, now: float) -> float:
        return self.meter.rate(now)

    def status(self, now: float) -> dict[str, Any]:
        if self._unbooked is not None:
            self.book()
        return {
            "peer": self.peer,
            "address": self.address.base58 if self.address else None,
            "worker": self.worker,
            "subscribed": self.subscribed,
            "weight": self.vardiff.weight,
            "job_weight": self._current.share_weight if self._current else None,
            "hashrate": self.meter.rate(now),
            "accepted": self.accepted,
            "rejected": dict(self.rejected),
            "blocks": self.blocks,
            "connected_for": now - self.connected_at,
            "last_share_at": self.last_share_at,
            "user_agent": self.user_agent,
            "version": self.client_version,
            "version_rtt": self.version_rtt,
        }

    # --- outputs -------------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Everything queued for the rig, in order; empties the queue."""
        outbox = self._outbox
        if not outbox:
            return b""
        data = outbox[0] if len(outbox) == 1 else b"".join(outbox)  # usually one job, or one reply
        if self._job_at >= 0:
            self.last_job_taken = self.jobs_queued  # the newest job is always the one queued
            self._job_at = -1
        outbox.clear()
        self._outbox_bytes = 0
        return data

    @property
    def has_output(self) -> bool:
        return bool(self._outbox)

    def take_events(self) -> Sequence[SessionEvent]:
        events = self.events
        if not events:
            return ()  # the server asks after every line and every job: no new list for nothing
        self.events = []
        return events

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has something to do."""
        if self.close_reason is not None:
            return None
        if self._unbooked is not None:
            self.book()
        due: list[float] = []
        if not self.subscribed:
            due.append(self.connected_at + self.settings.subscribe_timeout)
        if self._awaiting_address_until is not None:
            due.append(self._awaiting_address_until)
        if self._current is not None and not self.shutting_down:
            due.append(self._last_job_at + self.settings.job_interval)
            check = self.vardiff.next_check()
            if check is not None:
                due.append(check)
        if self._pending_version:
            due.append(min(self._pending_version.values()) + VERSION_TIMEOUT)
        return min(due) if due else None

    def close(self, reason: str) -> None:
        """Decide to close: what is queued is still flushed, nothing else happens."""
        if self.close_reason is None:
            self.close_reason = reason

    # --- inputs --------------------------------------------------------------------------------

    def receive(self, event: FramerEvent, now: float) -> None:
        """One framer event: a line (a ``str``) or a framing error."""
        self.receive_many((event,), now)

    def receive_line(self, text: str, now: float) -> None:
        self.receive_many((text,), now)

    def receive_many(self, events: Sequence[FramerEvent], now: float) -> None:
        """What one read brought, in order: lines (``str``) and framing errors, all at ``now``.

        The usual line, a submit of a job the rig holds with a hex nonce (the shape every rig
        sends, nearly every line of a busy connection), takes a short way with the same outcome
        as the general one (:meth:`_line`, :meth:`_message` and :meth:`_submit`; a differential
        test holds them together): decoded by orjson, judged here, and the accepted ones credited
        to the live stats together at the end (a call and three hashrate meters once per read
        instead of once per share). Anything else first settles what is owed, then goes the
        general way, decoded again by the standard library (exact for any integer)."""
        if self.close_reason is not None:
            return
        if self._unbooked is not None:
            self.book()
        jobs = self._jobs
        judge = self.pool.judge_share
        count = 0  # accepted shares not yet credited, worth work in all
        work = 0.0
        try:
            for event in events:
                # The short way takes {"id": ..., "method": "submit" or "mining.submit", "params":
                # {"job_id": a job held, "nonce": what parse_nonce reads}}; anything else falls
                # through below.
                try:
                    message = _fast_loads(event) if type(event) is str and event[:1] == "{" else None
                except ValueError:  # (orjson.JSONDecodeError) the general way reports it
                    message = None
                if type(message) is dict:
                    params = message.get("params")
                    method = message.get("method")
                    if type(params) is dict and (method == "submit" or method == "mining.submit"):
                        job_id = params.get("job_id")
                        raw = params.get("nonce")
                        msgid = message.get("id")
                        job = jobs.get(job_id) if type(job_id) is str else None
                        # The usual ids: int, str, null. orjson reads an integer beyond 64 bits as
                        # a float, so any other id (a float, or a list or object that may hold
                        # one) goes the general way, whose decoder is exact.
                        if job is not None and (type(msgid) is int or type(msgid) is str or msgid is None):
                            nonce = parse_nonce(raw)  # (as _submit; None: the general way says why)
                            if nonce is not None:
                                outcome = judge(self.miner, job, nonce, now)
                                if outcome[0]:  # (.accepted)
                                    count += 1
                                    work += job.terms.share_work
                                    self._accepted(job, outcome, msgid, now)
                                else:
                                    self._rejected(outcome, job, job_id, raw, msgid)
                                if self.close_reason is not None:
                                    return
                                continue
                if count:
                    self._credit(count, work, now)
                    count, work = 0, 0.0
                if type(event) is str:  # decoded again, by the standard library's exact decoder
                    self._line(event, now)
                else:
                    self._framing_error(event)
                if self.close_reason is not None:
                    return
        finally:
            if count:
                self._credit(count, work, now)

    def _credit(self, count: int, work: float, now: float) -> None:
        """``count`` accepted shares (their "ok" queued by :meth:`_accepted`) worth ``work``."""
        self.accepted += count
        self.last_share_at = now
        # Their "ok" must not be written before the pool's record of them is durable (set here,
        # once per read: nothing takes the outbox while a read is being handled).
        self._unsynced_accepts = True
        self.meter.add(now, work)
        self.pool.credit_shares(self.miner, count, work, now)

    def _framing_error(self, event: FramerEvent) -> None:
        if isinstance(event, LineTooLong):
            limit = self.settings.max_line
            self.events.append(LimitHit("max_line", f"line of more than {limit} bytes"))
            self._penalize(self.settings.ban.garbage, "oversized line")
            self._error(None, m.INVALID_REQUEST, {"message": f"line longer than {limit} bytes"})
        elif isinstance(event, NotUtf8):
            self._penalize(self.settings.ban.garbage, "invalid UTF-8")
            self._error(None, m.PARSE_ERROR, {"message": "line is not valid UTF-8"})

    def _line(self, text: str, now: float) -> None:
        try:
            message = decode_line(text)
        except (ValueError, RecursionError):
            self._penalize(self.settings.ban.garbage, "not JSON")
            self._error(None, m.PARSE_ERROR, {"message": text[:200]})
            return
        if not isinstance(message, dict):
            self._penalize(self.settings.ban.garbage, "not a JSON object")
            self._error(None, m.INVALID_REQUEST, {"message": "expected a JSON object"})
            return
        self._message(message, now)

    def _message(self, message: dict[str, Any], now: float) -> None:
        msgid = message.get("id")
        if isinstance(msgid, float) and not math.isfinite(msgid):
            msgid = None  # 1e999 parses as infinity, which JSON cannot carry back
        if "method" in message:
            method = message["method"]
            handler = _HANDLERS.get(method) if isinstance(method, str) else None
            if handler is not None:
                handler(self, message.get("params"), msgid, now)
            elif not isinstance(method, str):
                self._penalize(self.settings.ban.garbage, "method is not a string")
                self._error(msgid, m.INVALID_REQUEST, {"message": "method must be a string"})
            else:
                self._error(
                    msgid, m.METHOD_NOT_FOUND, {"method": method, "supported_methods": SUPPORTED_METHODS}
                )
        elif "result" in message or "error" in message:
            self._response(message, now)
        else:
            self._penalize(self.settings.ban.garbage, "not a request")
            self._error(msgid, m.INVALID_REQUEST, {"message": "not a request, result or error"})

    def new_work(self, clean: bool, now: float) -> bool:
        """The pool has new work (a new template, or a refresh): queue a new job; True if it did."""
        if not self.mining:
            return False
        queued = self.jobs_queued
        self._send_job(now, clean=clean)
        return self.jobs_queued != queued

    def take_new_job(self, clean: bool, now: float) -> bytes | None:
        """:meth:`new_work` then :meth:`data_to_send`, for a session with nothing queued: the new
        job's line, handed over at once (the fan-out writes it straight away). None when no job
        was made, or when output is queued (or an "ok" still waits for the record): then nothing
        changed, and ``new_work`` is the way.

        The job goes into the session's history (and vardiff's account) at :meth:`book`, not
        here: the fan-out writes every rig's line first and books them all after, so the last
        rig's line does not wait for the others' bookkeeping. Every method that reads the
        history books first, so none of them can tell the difference; only the job's weight
        event (:attr:`events`) comes at booking."""
        if (
            self._outbox
            or self._unsynced_accepts
            or not self.subscribed  # (not self.mining, spelled out: once per rig per block)
            or self._awaiting_address_until is not None
            or self.close_reason is not None
            or self.shutting_down
        ):
            return None
        line = self._mint(now, clean)
        if line is not None:
            self.last_job_taken = self.jobs_queued
        return line

    def book(self) -> None:
        """Put the job handed over by :meth:`take_new_job` into the history: the job itself,
        vardiff's account of it, the weight event. Done by whatever reads them first."""
        unbooked = self._unbooked
        if unbooked is None:
            return
        self._unbooked = None
        job_id, terms, header, now, clean = unbooked
        job = Job(job_id, terms, header, now, clean)
        weight = terms.share_weight
        self.vardiff.job_sent(weight, now, terms.generation.template.weight)
        self._jobs[job_id] = job
        ids, at = self._job_ids, self._job_ids_at
        gone = ids[at]
        ids[at] = job_id
        at += 1
        self._job_ids_at = at if at < len(ids) else 0
        if gone is not None:  # the history is full: its oldest job leaves for the expired ring
            self._jobs.pop(gone, None)
            expired = self._expired
            if expired is None:
                expired = self._expired = [None] * EXPIRED_HISTORY
            slot = self._expired_at
            expired[slot] = gone
            self._expired_at = slot + 1 if slot + 1 < EXPIRED_HISTORY else 0
        self._current = job
        self._last_job_at = now
        if weight != self._last_weight:
            self._last_weight = weight
            self.events.append(WeightUsed(weight))

    def tick(self, now: float) -> None:
        if self.close_reason is not None:
            return
        if self._unbooked is not None:
            self.book()
        if not self.subscribed and now >= self.connected_at + self.settings.subscribe_timeout:
            self.events.append(
                LimitHit("subscribe_timeout", f"no subscribe in {self.settings.subscribe_timeout:g}s")
            )
            self.close("subscribe timeout")
            return
        if self._awaiting_address_until is not None and now >= self._awaiting_address_until:
            self._error(m.NO_ID, m.INVALID_ADDRESS, {"message": self._no_address_message()})
            self.close("solo mode without a payout address")
            return
        if self.mining:
            if self.vardiff.tick(now) is not None or now >= self._last_job_at + self.settings.job_interval:
                self._send_job(now, clean=False)
        for msgid, sent_at in list(self._pending_version.items()):
            if now >= sent_at + VERSION_TIMEOUT:
                del self._pending_version[msgid]

    def begin_shutdown(self, now: float, message: str = SHUTDOWN_MESSAGE) -> None:
        """Tell the rig we are going away; keep answering what is already on the wire."""
        if self.close_reason is not None or self.shutting_down:
            return
        self.shutting_down = True
        self._push(m.request(None, "client.show_message", [message]))
        self._push(m.request(None, "client.reconnect", []))

    # --- methods -------------------------------------------------------------------------------

    @property
    def mining(self) -> bool:
        """Subscribed, with a payout settled, and neither closing nor shutting down: gets jobs."""
        return (
            self.subscribed
            and self._awaiting_address_until is None
            and self.close_reason is None
            and not self.shutting_down
        )

    def _subscribe(self, params: Any, msgid: Any, now: float) -> None:
        if self.shutting_down:
            self._error(msgid, m.SHUTTING_DOWN)
            return
        if self.pool.generation is None or self.network is None:
            self._error(msgid, m.NODE_SYNCING)
            return
        if isinstance(params, dict):
            agent = params.get("agent")
            if isinstance(agent, str):
                self.user_agent = agent[:128]
            address = params.get("address")
            if isinstance(address, str) and not address.strip():
                address = None  # an empty address is no address (ccminer without one may send "")
            login = params.get("login")
            if address is not None:
                if not self._set_address(address, msgid):
                    return
            elif isinstance(login, str) and login.strip() and not self._identify(login.strip(), msgid):
                return  # a login-style subscribe: {"login": "ADDRESS.worker", "pass": ...}
        elif isinstance(params, list) and params and isinstance(params[0], str):
            self.user_agent = params[0][:128]  # the usual ["agent/1.0", session] of Bitcoin Stratum
        self.subscribed = True
        self._reply(msgid, "ok")
        if self.solo and self.address is None:
            self._awaiting_address_until = now + self.settings.authorize_timeout
            return
        self._start_mining(now)

    def _authorize(self, params: Any, msgid: Any, now: float) -> None:
        user: Any = None
        if isinstance(params, list) and params:
            user = params[0]
        elif isinstance(params, dict):
            user = params.get("user") or params.get("username") or params.get("login")
        payout_before = self.address
        if self.network is None:
            self._error(msgid, m.NODE_SYNCING)  # addresses cannot be checked yet
            return
        if isinstance(user, str) and user.strip():
            if not self._identify(user.strip(), msgid):
                return
        elif self.solo and self.address is None:
            self._error(msgid, m.INVALID_ADDRESS, {"message": self._no_address_message()})
            self.close("solo mode without a payout address")
            return
        self._reply(msgid, "ok")
        if self._awaiting_address_until is not None and self.address is not None:
            self._start_mining(now)
        elif self.solo and self.mining and self.address != payout_before:
            self._send_job(now, clean=True)  # the payout changed: old jobs pay someone else

    def _submit(self, params: Any, msgid: Any, now: float) -> None:
        job_id: Any = None
        raw_nonce: Any = None
        if isinstance(params, dict):
            job_id, raw_nonce = params.get("job_id"), params.get("nonce")
        elif isinstance(params, list) and len(params) >= 2:
            job_id, raw_nonce = (params[0], params[1]) if len(params) == 2 else (params[1], params[2])
        # The usual share names a job we hold, spelled as we sent it: the lookup is the check.
        job = self._jobs.get(job_id) if type(job_id) is str else None
        if job is None and self.pool.generation is None:  # (a job held means the pool has a template)
            self._error(msgid, m.NODE_SYNCING)
            return
        if job_id is None or raw_nonce is None:
            self._penalize(self.settings.ban.garbage, "malformed submit")
            self._error(msgid, m.INVALID_PARAMS, {"params": params, "required": ["job_id", "nonce"]})
            return
        if job is None:
            if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
                self._penalize(self.settings.ban.garbage, "malformed job id")
                self._error(
                    msgid, m.INVALID_PARAMS, {"job_id": job_id, "message": "job_id must be 32 hex characters"}
                )
                return
        nonce = parse_nonce(raw_nonce)
        if nonce is None:
            self._penalize(self.settings.ban.garbage, "malformed nonce")
            self._error(
                msgid,
                m.INVALID_PARAMS,
                {"nonce": raw_nonce, "message": "nonce must be a big-endian hex string"},
            )
            return
        if job is None:
            job_id = job_id.lower()
            job = self._jobs.get(job_id)
        if job is None:
            if self._expired is not None and job_id in self._expired:
                self._reject("stale", msgid, self._stale_data(job_id))
            else:
                self._penalize(self.settings.ban.invalid_share, "unknown job")
                self._reject("job-not-found", msgid, self._stale_data(job_id))
            return
        outcome = self.pool.judge_share(self.miner, job, nonce, now)
        if outcome.accepted:
            self._credit(1, job.terms.share_work, now)  # (first: it marks the "ok" to come unsynced)
            self._accepted(job, outcome, msgid, now)
        else:
            self._rejected(outcome, job, job_id, raw_nonce, msgid)

    def _rejected(self, outcome: ShareResult, job: Job, job_id: str, raw_nonce: Any, msgid: Any) -> None:
        self.rejected[outcome.reason] += 1
        if outcome.reason == "stale":
            self._error(msgid, m.STALE_JOB, self._stale_data(job_id))
        elif outcome.reason == "duplicate":
            self._penalize(self.settings.ban.invalid_share, "duplicate share")
            self._error(msgid, m.DUPLICATE_SOLUTION, {"job_id": job_id, "nonce": raw_nonce})
        elif outcome.reason == "storage-busy":  # our disk's fault, not the rig's: no ban points
            self._error(msgid, m.NOT_RECORDED, {"message": "the pool cannot record shares right now"})
        elif outcome.reason == "bad-nonce":
            self._penalize(self.settings.ban.invalid_share, "nonce overflow")
            self._error(
                msgid,
                m.INVALID_SOLUTION,
                {
                    "message": f"nonce does not fit in nonce_size ({NONCE_SIZE} bytes)",
                    "nonce_size": NONCE_SIZE,
                },
            )
        else:
            self._penalize(self.settings.ban.invalid_share, "invalid solution")
            self._error(
                msgid,
                m.INVALID_SOLUTION,
                {"hash": (outcome.hash or b"").hex(), "target": job.share_target.hex()},
            )

    @property
    def unsynced_accepts(self) -> bool:
        """Whether queued output holds an "ok" not yet taken by :meth:`take_unsynced_accepts`."""
        return self._unsynced_accepts

    def take_unsynced_accepts(self) -> bool:
        """True once after share acceptances were queued: what follows must not be written before
        the pool's record of them is durable."""
        unsynced, self._unsynced_accepts = self._unsynced_accepts, False
        return unsynced

    def _accepted(self, job: Job, outcome: ShareResult, msgid: Any, now: float) -> None:
        """An accepted share's reply and vardiff, all but the counting (:meth:`_credit`)."""
        terms = job.terms
        if outcome.is_block:
            self.blocks += 1
        # _reply(msgid, "ok") and _push_line, inline: every share (2% of the share path's
        # instructions, callgrind)
        line = m.encode_ok(msgid)
        self._outbox.append(line)
        self._outbox_bytes += len(line)
        if self._outbox_bytes > self.settings.max_outbox:
            self._outbox_overflow()
        if self.vardiff.share(terms.share_weight, job.created_at, now) is not None and self.mining:
            self._send_job(now, clean=False)  # a retarget changes the next job only

    def _configure(self, params: Any, msgid: Any, now: float) -> None:
        # Stratum extensions (version rolling and friends) make no sense for Hathor headers.
        names = params[0] if isinstance(params, list) and params and isinstance(params[0], list) else []
        self._reply(msgid, {name: False for name in names if isinstance(name, str)})

    def _true(self, params: Any, msgid: Any, now: float) -> None:
        self._reply(msgid, True)

    def _pong(self, params: Any, msgid: Any, now: float) -> None:
        self._reply(msgid, "pong")

    def _response(self, message: dict[str, Any], now: float) -> None:
        """An answer to one of our requests: only client.get_version's is of interest."""
        msgid = message.get("id")
        if isinstance(msgid, str) and msgid.isdigit():
            msgid = int(msgid)
        if isinstance(msgid, int) and not isinstance(msgid, bool) and msgid in self._pending_version:
            sent_at = self._pending_version.pop(msgid)
            self.version_rtt = now - sent_at
            answer = message.get("result")
            if isinstance(answer, str):
                self.client_version = answer[:128]

    # --- helpers -------------------------------------------------------------------------------

    def _start_mining(self, now: float) -> None:
        self._awaiting_address_until = None
        self._send_job(now, clean=True)
        if self.settings.get_version and not self._version_asked:
            self._version_asked = True
            msgid = self._next_id()
            self._pending_version[msgid] = now
            self._push(m.request(msgid, "client.get_version", []))

    def _set_address(self, raw: Any, msgid: Any) -> bool:
        if not isinstance(raw, str):
            return self._bad_address(msgid, "address must be a string")
        try:
            self.address = decode_address(raw.strip(), self.network)
        except AddressError as exc:
            return self._bad_address(msgid, str(exc))
        self._identity_changed()
        return True

    def _identity_changed(self) -> None:
        self.miner = MinerId(self.address.base58 if self.address else "", self.worker)

    def _identify(self, user: str, msgid: Any) -> bool:
        """``ADDRESS``, ``ADDRESS.worker`` or (pool mode, or an address given before) a worker name."""
        head, dot, worker = user.partition(".")
        try:
            address = decode_address(head, self.network)
        except AddressError as exc:
            if _is_address_elsewhere(head):
                return self._bad_address(msgid, str(exc))
            if self.solo and self.address is None:
                return self._bad_address(msgid, f"{exc}; {self._no_address_message()}")
            self.worker = worker_name(user)
            self._identity_changed()
            return True
        self.address = address
        if dot and worker.strip():
            self.worker = worker_name(worker)
        self._identity_changed()
        return True

    def _bad_address(self, msgid: Any, message: str) -> bool:
        self._error(msgid, m.INVALID_ADDRESS, {"message": message})
        self.close("invalid address")
        return False

    def _no_address_message(self) -> str:
        return (
            f"solo mining pays each rig: give a {self.network.name if self.network else 'Hathor'} address in the subscribe params "
            f"or as the authorize user (ADDRESS or ADDRESS.worker)"
        )

    def _send_job(self, now: float, *, clean: bool) -> None:
        """Make a new job, put it in the history and queue its line (nothing when the pool has no
        template). The fan-out's way is take_new_job: the line first, the history after."""
        line = self._mint(now, clean)
        if line is not None:
            self.book()
            self._push_line(line, job=True)

    def _mint(self, now: float, clean: bool) -> bytes | None:
        """A new job's line, its job waiting for :meth:`book` (an earlier one is booked first),
        or None when the pool has no template (not once subscribed: the pool never forgets its
        template)."""
        if self._unbooked is not None:
            self.book()
        try:
            terms, job_id, header = self.pool.jobs.mint(
                self.address.script if self.solo and self.address else None, self.vardiff.weight
            )
        except LookupError:
            return None
        self._unbooked = (job_id, terms, header, now, clean)
        self.jobs_queued += 1
        msgid = self._seq
        self._seq = msgid + 1
        # The line from its cached parts (m.job_parts says how they join)
        head, after_data, after_id, tail = _LINE_PARTS.get((terms, clean)) or _line_parts(terms, clean)
        return f"{head}{header.hex()}{after_data}{job_id}{after_id}{msgid:d}{tail}".encode("ascii")

    def _stale_data(self, job_id: str) -> dict[str, Any]:
        return {"current_job": self._current.job_id if self._current else None, "job_id": job_id}

    def _reject(self, reason: str, msgid: Any, data: dict[str, Any]) -> None:
        """A share the pool never sees (its job is unknown here): answered and counted by us."""
        self.rejected[reason] += 1
        self.events.append(ShareRejected(reason))
        self._error(msgid, m.STALE_JOB if reason == "stale" else m.JOB_NOT_FOUND, data)

    def _next_id(self) -> int:
        msgid = self._seq
        self._seq += 1
        return msgid

    def _penalize(self, points: float, reason: str) -> None:
        if points > 0:
            self.events.append(Penalty(points, reason))

    def _reply(self, msgid: Any, value: Any) -> None:
        if value == "ok":
            self._push_line(m.encode_ok(msgid))  # (the accepted share's own path calls it directly)
        else:
            self._push(m.result(msgid, value))

    def _error(self, msgid: Any, err: tuple[int, str], data: Any = None) -> None:
        self._push(m.error(msgid, err, data))
        if m.is_fatal(err):
            self.close(f"JSON-RPC error {err[0]} ({err[1]})")

    def _push(self, message: dict[str, Any], *, job: bool = False) -> None:
        self._push_line(m.encode(message), job=job)

    def _push_line(self, line: bytes, *, job: bool = False) -> None:
        outbox = self._outbox
        if job:
            if self._job_at >= 0:
                # Latest-job semantics: a job the rig has not even received yet is dropped for the
                # newer one (so the outbox never holds more than one job).
                self._outbox_bytes -= len(outbox.pop(self._job_at))
            self._job_at = len(outbox)
        outbox.append(line)
        self._outbox_bytes += len(line)
        if self._outbox_bytes > self.settings.max_outbox:
            self._outbox_overflow()

    def _outbox_overflow(self) -> None:
        self.events.append(
            LimitHit("max_outbox", f"{self._outbox_bytes} bytes queued for a rig that does not read")
        )
        self._outbox.clear()
        self._job_at = -1
        self._outbox_bytes = 0
        self.close("slow consumer")


def _is_address_elsewhere(text: str) -> bool:
    """A valid address, but of a network other than ours."""
    try:
        decode_address(text)
    except AddressError:
        return False
    return True


# The job line's parts for each (terms, clean) of late (see messages.job_parts): every rig at one
# weight in a fan-out gets a job on the same terms, so all but the first find theirs here (an
# entry is a dict lookup, where a call with four arguments to hash was not). In solo mode every
# rig's terms are its own (its own payout script), but the parts depend only on the weight,
# "clean" and the tip: a rig's first job on new terms finds them in the second table.
_LINE_PARTS: dict[tuple[JobTerms, bool], tuple[str, str, str, str]] = {}
_LINE_PARTS_BY_VALUE: dict[tuple[float, bool, str], tuple[str, str, str, str]] = {}
_MAX_LINE_PARTS = 4096  # (as many as the factory keeps terms: a weight per rig must not thrash it)


def _line_parts(terms: JobTerms, clean: bool) -> tuple[str, str, str, str]:
    if len(_LINE_PARTS) >= _MAX_LINE_PARTS:
        _LINE_PARTS.clear()  # (old terms are of old templates: none comes back)
    key = (float(terms.share_weight), clean, terms.generation.tip_hex)
    parts = _LINE_PARTS_BY_VALUE.get(key)
    if parts is None:
        if len(_LINE_PARTS_BY_VALUE) >= _MAX_LINE_PARTS:
            _LINE_PARTS_BY_VALUE.clear()
        parts = _LINE_PARTS_BY_VALUE[key] = m.job_parts(NONCE_SIZE, *key)
    _LINE_PARTS[terms, clean] = parts
    return parts


# The methods a rig may call, by name (one table for every session: a per-session dict of bound
# methods cost ~1.6 KiB per rig).
_HANDLERS: dict[str, Callable[[Session, Any, Any, float], None]] = {
    "subscribe": Session._subscribe,
    "mining.subscribe": Session._subscribe,
    "login": Session._subscribe,
    "authorize": Session._authorize,
    "mining.authorize": Session._authorize,
    "submit": Session._submit,
    "mining.submit": Session._submit,
    "configure": Session._configure,
    "mining.configure": Session._configure,
    "multi_version": Session._true,
    "mining.multi_version": Session._true,
    "mining.extranonce.subscribe": Session._true,
    "mining.suggest_difficulty": Session._true,  # cgminer may send it; the weight is ours to pick
    "mining.suggest_target": Session._true,
    "mining.ping": Session._pong,
}
SUPPORTED_METHODS = tuple(sorted(_HANDLERS))
