"""The trio layer around :class:`~miningproxy.stratum.session.Session`: listeners and connections.

Each connection is three tasks in its own nursery, which die with the connection:

- the reader feeds bytes through the :class:`~miningproxy.stratum.framing.LineFramer` into the
  session;
- the writer sends what the session queued. It is the only task that can block on a rig, and it is
  bounded: a rig whose socket takes nothing for ``send_timeout`` seconds, or that lets more than
  ``max_outbox`` bytes pile up, is cut off;
- the timer calls ``session.tick`` at the session's next deadline (subscribe timeout, the job
  refresh every ``job_interval`` seconds, vardiff's idle checks).

New work is fanned out by one task: for each work signal of the pool it walks the sessions and
queues a job in each (never waiting for any socket: a slow rig only delays its own writer, and
its queue keeps only the newest unsent job).

A connection from a load balancer named in ``proxy_protocol_from`` first gives up its PROXY
protocol header (:mod:`~miningproxy.stratum.proxy_protocol`): the rig's address in it is the one
limited, banned and logged.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import socket
import ssl
from collections import Counter
from typing import Any

import trio

from miningproxy.events.pool_events import PoolEventsBusy
from miningproxy.hathor.networks import Network
from miningproxy.metrics import Metrics
from miningproxy.pool.stats import MinerId
from miningproxy.stratum.ban import BanList
from miningproxy.stratum.framing import LineFramer
from miningproxy.stratum.held import HeldOutputs
from miningproxy.stratum.metrics import StratumMetrics
from miningproxy.stratum.proxy_protocol import (
    MAX_HEADER,
    ProxyHeader,
    ProxyHeaderError,
    header_length,
    parse_header,
)
from miningproxy.stratum.readhub import ReadHub
from miningproxy.stratum.session import LimitHit, Penalty, Session, ShareRejected, WeightUsed
from miningproxy.stratum.settings import StratumSettings

log = logging.getLogger("miningproxy.stratum")

RECEIVE_SIZE = 65536
FAN_OUT_BATCH = 64  # sessions handed a job between two checkpoints of the fan-out task
CLOSE_FLUSH = 1.0  # seconds to flush final lines at shutdown


def ssl_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def _transport(stream: trio.abc.Stream) -> Any:
    """The stream under any TLS layers (a SocketStream on a listener's connections)."""
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    return stream


def peer_of(stream: trio.abc.Stream) -> tuple[str, int]:
    inner = _transport(stream)
    try:
        address = inner.socket.getpeername()
        return str(address[0]), int(address[1])
    except (AttributeError, OSError, IndexError, TypeError, ValueError):
        return "?", 0


def _in_networks(ip: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # an IPv4 balancer seen through a dual-stack listener
    return any(address in network for network in networks)


async def read_proxy_header(stream: trio.abc.Stream) -> ProxyHeader | None:
    """Take the PROXY header from the start of ``stream`` (under any TLS layer: the balancer sends
    it before the handshake), and not one byte more: the bytes are peeked first, and only the
    header's are read. None when the peer closed without sending a byte (a TCP health check)."""
    sock = _transport(stream).socket
    head = b""
    while True:
        peeked = await sock.recv(MAX_HEADER - len(head), socket.MSG_PEEK)
        if not peeked:
            if not head:
                return None
            raise ProxyHeaderError("the connection closed before its PROXY header ended")
        length = header_length(head + peeked)
        head += await sock.recv(len(peeked) if length is None else length - len(head))
        if length is not None and len(head) == length:
            return parse_header(head)


class StratumServer:
    """``await nursery.start(server.run)`` serves until :meth:`shutdown` (or cancellation)."""

    def __init__(
        self,
        pool: Any,  # PoolService: .work, .generation, .jobs, .judge_share, .credit_shares, .stats
        settings: StratumSettings,
        network: Network | None,
        *,
        metrics: Metrics,
        payout_mode: str = "pool",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.pool = pool
        # Told of every job written (each rig, each new block): looked up once, not per job.
        self._job_delivered = pool.job_delivered if self._pool_has("job_delivered") else None
        self.settings = settings.check()
        self._proxy_networks = self.settings.proxy_networks()
        self.network = network
        self.payout_mode = payout_mode
        self._ssl_context = ssl_context
        self.metrics = StratumMetrics(metrics)
        if settings.per_worker_metrics:
            self.metrics.add_worker_hashrates(self.worker_hashrates)
        self.bans = BanList(settings.ban)
        self.ports: list[int] = []  # bound plain ports, once running
        self.tls_ports: list[int] = []
        # In connection order (a dict, not a set): the fan-out walks the rigs' objects in the order
        # they were allocated, and the oldest rigs get their jobs first.
        self._connections: dict[_Connection, None] = {}
        self._per_ip: Counter[str] = Counter()
        self._miners: Counter[MinerId] = Counter()  # live subscribed connections per miner
        self._accepting = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._shutting_down = False
        self._changed = trio.Event()  # set whenever a connection goes away
        # Connections holding output with an "ok" until the pool record commits it, oldest first
        # (so the ids they wait for never decrease): one commit releases them all, without waking
        # a task per rig. The watchdog closes any that waits longer than send_timeout.
        self._awaiting_record: HeldOutputs[_Connection] = HeldOutputs()
        self._awaiting_wake = trio.Event()
        self._record_listener: Any = None  # the PoolEvents whose commits we listen to
        self._hub = ReadHub()  # reads every plain-TCP rig socket from one task

    # --- running -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[StratumServer] = trio.TASK_STATUS_IGNORED) -> None:
        s = self.settings
        context = None
        if s.tls_listen is not None:  # a bad certificate fails here, before any socket is open
            context = self._ssl_context or ssl_context(s.tls_cert or "", s.tls_key or "")
        listeners: list[trio.abc.Listener[Any]] = list(
            await trio.open_tcp_listeners(s.listen[1], host=s.listen[0])
        )
        self.ports = sorted({listener.socket.getsockname()[1] for listener in listeners})  # type: ignore[attr-defined]
        if s.tls_listen is not None and context is not None:
            raw = await trio.open_tcp_listeners(s.tls_listen[1], host=s.tls_listen[0])
            self.tls_ports = sorted({listener.socket.getsockname()[1] for listener in raw})
            listeners += [trio.SSLListener(listener, context, https_compatible=False) for listener in raw]
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._hub.run)
            nursery.start_soon(self._fan_out)
            nursery.start_soon(self._watch_awaiting_record)
            await nursery.start(self._accept, listeners)
            log.info(
                "stratum listening on %s:%s%s (%s mode)",
                s.listen[0],
                ",".join(map(str, self.ports)),
                f", TLS on {s.tls_listen[0]}:{','.join(map(str, self.tls_ports))}" if s.tls_listen else "",
                self.payout_mode,
            )
            task_status.started(self)
        log.info("stratum server stopped")

    async def _accept(
        self, listeners: list[trio.abc.Listener[Any]], *, task_status: trio.TaskStatus[Any]
    ) -> None:
        with self._accepting:
            await trio.serve_listeners(
                self._handle, listeners, handler_nursery=self._nursery, task_status=task_status
            )

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting, ask every rig to reconnect, answer what is already on the wire for
        ``grace`` seconds (default ``shutdown_grace``), then close everything; run() returns."""
        if self._shutting_down:
            return
        self._shutting_down = True
        grace = self.settings.shutdown_grace if grace is None else grace
        self._accepting.cancel()
        now = trio.current_time()
        connections = list(self._connections)
        log.info("stratum shutting down: asking %d rigs to reconnect", len(connections))
        for conn in connections:
            conn.session.begin_shutdown(now)
            self._after(conn)
        await self._wait_closed(grace)
        for conn in list(self._connections):
            conn.session.close("shutdown")
            conn.wake()
        await self._wait_closed(CLOSE_FLUSH)
        for conn in list(self._connections):
            conn.kill()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _wait_closed(self, timeout: float) -> None:
        with trio.move_on_after(timeout):
            while self._connections:
                self._changed = trio.Event()
                await self._changed.wait()

    def set_network(self, network: Network | None) -> None:
        """The upstream's network, once known (until then rigs are answered 10 "node syncing":
        their addresses could not be checked against the network's version bytes)."""
        self.network = network
        for conn in self._connections:
            conn.session.network = network

    # --- state for metrics, health and the API -------------------------------------------------

    @property
    def connections(self) -> int:
        return len(self._connections)

    def sessions(self) -> list[Session]:
        return [conn.session for conn in self._connections]

    def rigs(self) -> list[dict[str, Any]]:
        now = trio.current_time()
        return [conn.session.status(now) for conn in self._connections]

    def worker_hashrates(self) -> list[tuple[MinerId, float]]:
        try:
            now = trio.current_time()
        except RuntimeError:  # a scrape outside trio: sessions live on trio's clock
            return []
        miners = {conn.session.miner for conn in self._connections if conn.session.subscribed}
        stats = getattr(self.pool, "stats", None)
        out = []
        for miner in sorted(miners, key=str):
            entry = stats.miners.get(miner) if stats is not None else None
            out.append((miner, entry.rate(now) if entry is not None else 0.0))
        return out

    # --- connections ---------------------------------------------------------------------------

    async def _handle(self, stream: trio.abc.Stream) -> None:
        ip, port = peer_of(stream)
        now = trio.current_time()
        if self._shutting_down:
            return
        if self._proxy_networks and _in_networks(ip, self._proxy_networks):
            client = await self._proxy_client(stream, ip, port)
            if client is None:
                return
            ip, port = client
            now = trio.current_time()
        refusal = self._refusal(ip, now)
        if refusal is not None:
            limit, detail = refusal
            self._limit_hit(limit, f"{ip}:{port}", detail)
            return
        session = Session(
            self.pool, self.settings, self.network, payout_mode=self.payout_mode, peer=f"{ip}:{port}", now=now
        )
        conn = _Connection(self, stream, session, ip)
        self._connections[conn] = None
        self._per_ip[ip] += 1
        self.metrics.rigs.inc()
        log.debug("rig connected from %s:%d", ip, port)
        try:
            if isinstance(stream, trio.SSLStream):
                with trio.move_on_after(self.settings.subscribe_timeout) as handshake:
                    await stream.do_handshake()
                if handshake.cancelled_caught:
                    session.close("TLS handshake timeout")
                    return
            await conn.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError) as exc:
            session.close(f"connection error: {exc!r}")
        except Exception:
            log.exception("rig %s: unexpected error; closing its connection", session.peer)
            session.close("internal error")
        finally:
            self._connections.pop(conn, None)
            self._stop_awaiting_record(conn)
            self._per_ip[ip] -= 1
            if self._per_ip[ip] <= 0:
                del self._per_ip[ip]
            self.metrics.rigs.dec()
            if conn.consumer:
                self.pool.unregister_consumer()
            self._count_miner(conn, None)
            self._changed.set()
            log.log(
                logging.INFO if session.subscribed else logging.DEBUG,
                "rig %s (%s) disconnected: %s; %d accepted, %d rejected, %d blocks",
                session.peer,
                session.miner,
                session.close_reason or "connection lost",
                session.accepted,
                sum(session.rejected.values()),
                session.blocks,
            )

    async def _proxy_client(self, stream: trio.abc.Stream, ip: str, port: int) -> tuple[str, int] | None:
        """A balancer's connection: the rig's address from its PROXY header (the balancer's own
        when the header names none: its health check); None, counted and logged, when the header
        is bad or does not come within subscribe_timeout."""
        timeout = self.settings.subscribe_timeout
        with trio.move_on_after(timeout):
            try:
                header = await read_proxy_header(stream)
            except ProxyHeaderError as exc:
                self._limit_hit("proxy_header", f"{ip}:{port}", str(exc))
                return None
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                log.debug("balancer connection %s:%d lost before its PROXY header: %r", ip, port, exc)
                return None
            if header is None:  # connected and closed: a balancer's TCP check, not a fault
                log.debug("balancer connection %s:%d closed before sending anything", ip, port)
                return None
            return header.source or (ip, port)
        self._limit_hit("proxy_header", f"{ip}:{port}", f"no PROXY header within {timeout:g}s")
        return None

    def _refusal(self, ip: str, now: float) -> tuple[str, str] | None:
        if self.bans.banned(ip, now):
            return "banned", "refused: IP is banned"
        if len(self._connections) >= self.settings.max_connections:
            return "max_connections", f"refused: {self.settings.max_connections} connections open"
        if self._per_ip[ip] >= self.settings.max_per_ip:
            return "max_per_ip", f"refused: {self.settings.max_per_ip} connections from this IP"
        return None

    async def wait_records_durable(self) -> None:
        events = getattr(self.pool, "events", None)
        if events is not None:
            await events.flush()

    def _await_record(self, conn: _Connection, events: Any, need: int, deadline: float) -> None:
        """``conn`` holds output until the record's id ``need`` is committed."""
        if self._record_listener is not events:
            if self._record_listener is not None:
                self._record_listener.feed.remove_listener(self._record_committed)
            events.feed.add_listener(self._record_committed)
            self._record_listener = events
        if not self._awaiting_record:
            self._awaiting_wake.set()
        self._awaiting_record.hold(conn, need, deadline)

    def _stop_awaiting_record(self, conn: _Connection) -> None:
        self._awaiting_record.drop(conn)

    def _record_committed(self) -> None:
        """The record committed (a feed listener): write the output of every connection whose
        events are now on disk. Must not raise: it runs in the record's writer."""
        events = self._record_listener
        durable = -1 if events is None or events.feed.last_id is None else events.feed.last_id
        for conn in self._awaiting_record.release(durable):
            try:
                conn.release_held()
            except Exception:
                log.exception("rig %s: writing after the record's commit failed", conn.session.peer)
                conn.session.close("internal error")
                conn.kill()

    async def _watch_awaiting_record(self) -> None:
        """Close a connection whose "ok" waited send_timeout for the record (a stuck disk): the
        rig is not frozen forever; its reconnect gets refusals until the disk recovers."""
        timeout = self.settings.send_timeout
        while True:
            oldest = self._awaiting_record.oldest()
            if oldest is None:
                self._awaiting_wake = trio.Event()
                await self._awaiting_wake.wait()
                continue
            conn, deadline = oldest
            if trio.current_time() < deadline:
                await trio.sleep_until(deadline)
                continue
            self._awaiting_record.drop(conn)
            conn._held = None
            conn.session.close("accounting record not durable")
            self._limit_hit("record_timeout", conn.session.peer, f"shares not on disk after {timeout:g}s")
            conn.kill()

    def _pool_has(self, name: str) -> bool:
        return callable(getattr(self.pool, name, None))

    def _delivered(self, signal: Any, count: int = 1) -> None:
        delivered = self._job_delivered
        if delivered is not None:
            delivered(signal, count)

    def _count_miner(self, conn: _Connection, miner: MinerId | None) -> None:
        """Keep count of the connections per miner; the pool forgets a miner's stats when the last
        one goes (its live series go with it; an idle but connected rig is never forgotten)."""
        old = conn.miner
        if old == miner:
            return
        conn.miner = miner
        events = getattr(self.pool, "events", None)
        peer = conn.session.peer
        if miner is not None:
            self._miners[miner] += 1
            if self._miners[miner] == 1 and events is not None:
                _record(
                    events.miner_connected,
                    miner=str(miner),
                    worker=miner.worker,
                    address=miner.address,
                    peer=peer,
                )
        if old is not None:
            self._miners[old] -= 1
            if self._miners[old] <= 0:
                del self._miners[old]
                if events is not None:
                    _record(
                        events.miner_disconnected,
                        miner=str(old),
                        worker=old.worker,
                        address=old.address,
                        peer=peer,
                        reason=conn.session.close_reason or "",
                    )
                stats = getattr(self.pool, "stats", None)
                if stats is not None:
                    stats.forget(old)

    def _after(self, conn: _Connection, *, timer: bool = True) -> None:
        """After the session took input: act on its events and wake the connection's tasks
        (the timer only if ``timer``: pass False when the input cannot have brought the
        session's next deadline forward)."""
        self._settle(conn)
        conn.wake(timer=timer)

    def _settle(self, conn: _Connection) -> None:
        """Act on what the session's input changed: its miner, its being a consumer, its events."""
        session = conn.session
        if session.subscribed and session.miner is not conn.miner:
            self._count_miner(conn, session.miner)
        if not conn.consumer and session.current_job is not None and self._pool_has("register_consumer"):
            conn.consumer = True  # a mining rig counts in the pool's job broadcast latency
            self.pool.register_consumer()
        for event in session.take_events():
            if isinstance(event, Penalty):
                self._penalize(conn, event)
            elif isinstance(event, WeightUsed):
                self.metrics.weights.observe(event.weight)
            elif isinstance(event, ShareRejected):
                self.metrics.shares.labels("rejected", event.reason).inc()
            elif isinstance(event, LimitHit):
                self._limit_hit(event.limit, session.peer, event.detail)

    def _penalize(self, conn: _Connection, penalty: Penalty) -> None:
        now = trio.current_time()
        if not self.bans.add(conn.ip, penalty.points, now):
            return
        self._limit_hit(
            "ban",
            conn.session.peer,
            f"banned for {self.settings.ban.duration:g}s (last straw: {penalty.reason})",
        )
        for other in list(self._connections):
            if other.ip == conn.ip:
                other.session.close("banned")
                other.kill()

    def _limit_hit(self, limit: str, peer: str, detail: str) -> None:
        self.metrics.limit_hits.labels(limit).inc()
        log.warning("stratum limit %s hit by %s: %s", limit, peer, detail)

    async def _fan_out(self) -> None:
        async for signal in self.pool.work.subscribe():
            if self._shutting_down:
                return
            connections = list(self._connections)
            clean = signal.clean
            handed: list[_Connection] = []  # rigs handed their job's line: booked once all are out
            for start in range(0, len(connections), FAN_OUT_BATCH):
                now = trio.current_time()
                # A batch's jobs are built first and written after: each write's system call
                # runs the kernel's whole TCP path, and keeping the two loops apart keeps each
                # one's code and data in the CPU's caches (bench.fanout, 1,000 rigs: p99 75-85
                # ms interleaved, 36-47 ms apart). The build loop also settles each rig's
                # bookkeeping and takes its bytes, so the write loop is little but the writes.
                writes: list[tuple[_Connection, bytes, int]] = []
                jobs: list[tuple[_Connection, bytes, int]] = []  # new jobs alone, to write now
                for conn in connections[start : start + FAN_OUT_BATCH]:
                    session = conn.session
                    try:
                        # The usual rig: nothing queued, a socket we may write to at once. Its
                        # job's line is handed over directly, not queued and taken back.
                        # (conn.writable_now(), spelled out: once per rig per block.)
                        line = (
                            session.take_new_job(clean, now)
                            if conn._direct
                            and not conn._writing
                            and not conn._unsent
                            and conn._held is None
                            and session.close_reason is None
                            else None
                        )
                        if line is not None:
                            jobs.append((conn, line, session.last_job_taken))
                            continue
                        if session.new_work(clean, now):
                            conn.job_queued(signal)
                    except Exception:
                        log.exception("rig %s: cannot build its job; closing its connection", session.peer)
                        session.close("internal error")
                        conn.kill()
                    self._settle(conn)
                    out = conn.take_output()
                    if isinstance(out, tuple):
                        writes.append((conn, *out))
                    elif not out:
                        conn.wake_writer()
                delivered = 0
                for conn, data, taken in jobs:
                    if conn.send_new_job(data, taken, signal):
                        delivered += 1
                for conn, data, taken in writes:
                    if not conn.send_output(data, taken):
                        conn.wake_writer()
                if delivered:
                    self._delivered(signal, delivered)  # one note for the batch, not one per rig
                handed.extend(conn for conn, _, _ in jobs)
                await trio.lowlevel.checkpoint()
            await self._book_jobs(handed)

    async def _book_jobs(self, handed: list[_Connection]) -> None:
        """After a fan-out: put each handed-over job in its session's history (anything that
        reads the history meanwhile books it first: a share read between two batches finds its
        job) and act on the events that makes (a new weight)."""
        for start in range(0, len(handed), FAN_OUT_BATCH):
            for conn in handed[start : start + FAN_OUT_BATCH]:
                session = conn.session
                session.book()
                # A job changes neither the rig's miner nor its being a consumer (its first one
                # does, and comes with a weight event); only its events (a new weight) want
                # settling. A job never brings the session's next deadline forward (it only
                # pushes job_interval back), so the timer sleeps on undisturbed.
                if session.events:
                    self._settle(conn)
            await trio.lowlevel.checkpoint()


class _Connection:
    # Slotted, like Session: one per rig, touched by every fan-out.
    __slots__ = (
        "_direct", "_framer", "_held", "_hub_fd", "_killed", "_reading", "_scope", "_timer_deadline",
        "_socket", "_timer_wake", "_undelivered", "_unsent", "_unsent_taken", "_writer_wake", "_writing",
        "consumer", "ip", "miner", "server", "session", "stream",
    )  # fmt: skip

    def __init__(self, server: StratumServer, stream: trio.abc.Stream, session: Session, ip: str) -> None:
        self.server = server
        self.stream = stream
        self.session = session
        self.ip = ip
        self._scope: trio.CancelScope | None = None
        self._writer_wake = trio.Event()
        self._timer_wake = trio.Event()
        self._timer_deadline = math.inf
        self._killed = False
        self.consumer = False  # registered with the pool as a job consumer
        self.miner: MinerId | None = None  # as counted in the server's per-miner tally
        self._undelivered: tuple[Any, int] | None = None  # (work signal, session.jobs_queued then)
        # Plain TCP: queued lines are written at once by whoever queued them (see flush_now), one
        # system call and no task switch; the writer task only takes over when the socket is full
        # or an "ok" must wait for the accounting record. TLS always goes through the writer.
        self._direct = isinstance(stream, trio.SocketStream)
        # A plain-TCP rig's socket, for its descriptor: fileno() is -1 once it is closed, so a
        # descriptor the kernel has since given another rig is never used. The standard library's
        # socket under trio's wrapper when there is one (its fileno() is C; the wrapper's is a
        # Python call, made for every read, write and job); the wrapper otherwise.
        self._socket: Any = None
        if self._direct:
            wrapper = stream.socket  # type: ignore[attr-defined]
            inner = getattr(wrapper, "_sock", None)
            self._socket = inner if isinstance(inner, socket.socket) else wrapper
        self._writing = False  # the writer holds bytes it has not finished sending
        self._unsent = b""  # what a direct write could not send: the writer sends it first
        self._unsent_taken = 0
        # Output with an "ok" waiting for the pool record: (bytes, jobs taken, the record id that
        # must be durable first, deadline). The server writes it on the commit (release_held).
        self._held: tuple[bytes, int, int, float] | None = None
        self._framer = LineFramer(server.settings.max_line)
        self._reading: trio.Event | None = None  # set when reading through the hub is over
        self._hub_fd = -1  # the descriptor the hub watches for us

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            if self._killed:
                nursery.cancel_scope.cancel()
            nursery.start_soon(self._reader)
            nursery.start_soon(self._writer)
            nursery.start_soon(self._timer)

    def wake(self, *, timer: bool = True) -> None:
        if not self.flush_now():
            self._writer_wake.set()
        if not timer:
            return
        deadline = self.session.next_deadline()
        if deadline is None or deadline < self._timer_deadline:
            self._timer_wake.set()

    def wake_writer(self) -> None:
        self._writer_wake.set()

    def job_queued(self, signal: Any) -> None:
        """A job for ``signal`` is queued; the pool hears when it is written. A clean signal is
        kept over later refreshes: the newer job written also answers it."""
        if self._undelivered is None or signal.clean:
            self._undelivered = (signal, self.session.jobs_queued)

    def flush_now(self) -> bool:
        """Write what the session queued straight to the socket when that can neither reorder
        bytes nor block: plain TCP, the writer idle, no "ok" in it that must wait for the pool's
        record. True when nothing is left for the writer."""
        out = self.take_output()
        if isinstance(out, tuple):
            return self.send_output(*out)
        return out

    def writable_now(self) -> bool:
        """Whether a line may go straight to the socket now, as far as the connection goes: plain
        TCP, nothing unsent or in the writer's hands, no output held for the record, the session
        open. (Whether the session has queued lines of its own is for it to say: take_new_job.)
        The fan-out spells this out inline; a test pins the two together."""
        return (
            self._direct
            and not self._writing
            and not self._unsent
            and self._held is None
            and self.session.close_reason is None
        )

    def send_new_job(self, data: bytes, taken: int, signal: Any) -> bool:
        """Write a job line the fan-out took with ``writable_now`` true: True when the socket took
        it whole and the caller should count it delivered for ``signal``; otherwise the writer
        task takes over (woken here) and reports the delivery itself once the rest is out."""
        if self._undelivered is not None:  # (not expected when writable) the older note first
            self.job_queued(signal)
            if not self.send_output(data, taken):
                self._writer_wake.set()
            return False
        if self._write(data, taken):
            return True
        self.job_queued(signal)  # the writer sends the rest, then tells the pool
        self._writer_wake.set()
        return False

    def take_output(self) -> tuple[bytes, int] | bool:
        """:meth:`flush_now`'s first half: the queued bytes to write at once with the jobs they
        take, or, when there is nothing to write now, whether nothing is left for the writer.
        Send the bytes with :meth:`send_output` before anything else can write to this rig."""
        session = self.session
        if not self._direct or self._writing or self._unsent or session.close_reason is not None:
            return False
        if self._held is not None:
            return True  # the server writes it, and calls this again, once the record commits
        if not session.has_output:
            return True
        if session.unsynced_accepts:
            events = getattr(self.server.pool, "events", None)
            data = session.data_to_send()
            taken = session.last_job_taken
            session.take_unsynced_accepts()
            if events is not None:
                # Every share this rig was told about has an id <= the last one recorded.
                need = events.last_recorded
                durable = events.feed.last_id
                if durable is None or durable < need:
                    deadline = trio.current_time() + self.server.settings.send_timeout
                    self._held = (data, taken, need, deadline)
                    self.server._await_record(self, events, need, deadline)
                    return True
        else:
            data = session.data_to_send()
            taken = session.last_job_taken
        return data, taken

    def send_output(self, data: bytes, taken: int) -> bool:
        """:meth:`flush_now`'s second half: write what :meth:`take_output` took; True when the
        socket took it all (else the writer must send the rest)."""
        if not self._write(data, taken):
            return False
        self._written(taken)
        return True

    def _write(self, data: bytes, taken: int) -> bool:
        """Send ``data`` (holding jobs up to number ``taken``) now; True when the socket took it
        all. Otherwise the rest waits in ``_unsent`` for the writer task, or the send failed and
        the session is closed: either way the writer must run."""
        # (_send_now, inline: once per rig per block)
        fd = self._socket.fileno()
        try:
            if fd < 0:
                raise trio.ClosedResourceError("socket closed")
            sent = os.write(fd, data)
        except BlockingIOError:
            sent = 0
        except (trio.ClosedResourceError, OSError) as exc:
            self.session.close(f"send failed: {exc!r}")
            return False
        if sent < len(data):  # the socket is full: the writer waits for room
            self._unsent, self._unsent_taken = data[sent:], taken
            return False
        return True

    def release_held(self) -> None:
        """The record holds what the held output answers: write it (the writer takes over what
        the socket does not take at once), then whatever was queued meanwhile."""
        held, self._held = self._held, None
        if held is None:
            return
        if not self.send_output(held[0], held[1]) or not self.flush_now():
            self._writer_wake.set()

    def _send_now(self, data: bytes) -> int:
        """Send what the socket takes right now, without blocking or yielding; returns the count."""
        fd = self._socket.fileno()  # -1 once the socket is closed
        if fd < 0:
            raise trio.ClosedResourceError("socket closed")
        try:
            return os.write(fd, data)
        except BlockingIOError:
            return 0

    def _written(self, taken: int) -> None:
        """Bytes holding jobs up to number ``taken`` are on the wire: the pool hears of its job."""
        if self._undelivered is not None and taken >= self._undelivered[1]:
            self.server._delivered(self._undelivered[0])
            self._undelivered = None

    def kill(self) -> None:
        self._killed = True
        if self._scope is not None:
            self._scope.cancel()

    async def _reader(self) -> None:
        hub = self.server._hub
        if self._direct and hub.running:
            await self._read_through(hub)
            return
        framer = self._framer
        session = self.session
        try:
            while session.close_reason is None:
                data = await self.stream.receive_some(RECEIVE_SIZE)
                if not data:
                    session.close("peer closed the connection")
                    break
                session.receive_many(framer.feed(data), trio.current_time())
                self.server._after(self)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError) as exc:
            session.close(f"receive failed: {exc!r}")
        self.server._after(self)

    async def _read_through(self, hub: ReadHub) -> None:
        """Plain TCP: the server's read hub calls :meth:`_readable` whenever the socket has data;
        this task only waits until reading is over (EOF, error, closed session, or killed)."""
        fd = self.stream.socket.fileno()  # type: ignore[attr-defined]
        if fd < 0:
            return
        self._reading = trio.Event()
        self._hub_fd = fd
        hub.add(fd, self._readable, self._read_failed)
        try:
            await self._reading.wait()
        finally:
            hub.remove(fd)  # before the socket is closed: its number may be reused

    def _readable(self) -> None:
        """One read and the lines in it, in the hub's task (see :class:`ReadHub`)."""
        session = self.session
        if self._reading is None or self._reading.is_set():
            return
        fd = self._socket.fileno()  # -1 once closed
        try:
            if fd < 0:
                raise trio.ClosedResourceError("socket closed")
            data = os.read(fd, RECEIVE_SIZE)
        except BlockingIOError:
            return
        except (trio.ClosedResourceError, OSError) as exc:
            session.close(f"receive failed: {exc!r}")
            self._end_reading()
            return
        if not data:
            session.close("peer closed the connection")
            self._end_reading()
            return
        session.receive_many(self._framer.feed(data), trio.current_time())
        if session.close_reason is not None:
            self._end_reading()
        else:
            # Replies go out with the rest of the hub's batch (a found block is already upstream:
            # the pool enqueued it while judging the share).
            self.server._hub.after_batch(self._after_read, self._read_failed)

    def _after_read(self) -> None:
        self.server._after(self)

    def _read_failed(self, exc: BaseException) -> None:
        """Handling a read raised (a bug): this rig's connection ends, nobody else's."""
        if not isinstance(exc, trio.ClosedResourceError):
            self.session.close("internal error")
            self.kill()
        self._end_reading()

    def _end_reading(self) -> None:
        if self._reading is not None and not self._reading.is_set():
            self._reading.set()
            # At once: a socket at EOF stays readable, and the hub would call back until the
            # reader task gets to its own remove().
            self.server._hub.remove(self._hub_fd)
            self.server._after(self)

    async def _writer(self) -> None:
        session = self.session
        timeout = self.server.settings.send_timeout
        while True:
            unsynced = False
            need = None
            if self._held is not None:  # closing (or woken) while output waits for the record
                data, taken, need, _ = self._held
                self._held = None
                self.server._stop_awaiting_record(self)
                unsynced = True
            elif self._unsent:
                data, taken, self._unsent = self._unsent, self._unsent_taken, b""
            else:
                data = session.data_to_send()
                taken = session.last_job_taken
                unsynced = bool(data) and session.take_unsynced_accepts()
            if data:
                self._writing = True
                if unsynced:
                    # A rig told "ok" may rely on the share being in the accounting record. A
                    # record that stays unwritable (disk full) must not freeze the rig forever:
                    # close it unanswered; its reconnect gets refusals until the disk recovers.
                    with trio.move_on_after(timeout) as durable:
                        if need is None:
                            await self.server.wait_records_durable()
                        else:
                            await self.server.pool.events.wait_durable(need)
                    if durable.cancelled_caught:
                        session.close("accounting record not durable")
                        self.server._limit_hit(
                            "record_timeout", session.peer, f"shares not on disk after {timeout:g}s"
                        )
                        break
                try:
                    sent = self._send_now(data) if self._direct else 0
                    if sent < len(data):
                        with trio.move_on_after(timeout) as scope:
                            await self.stream.send_all(data[sent:])
                        if scope.cancelled_caught:
                            session.close("send timeout")
                            self.server._limit_hit(
                                "send_timeout", session.peer, f"socket took nothing for {timeout:g}s"
                            )
                            break
                except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError) as exc:
                    session.close(f"send failed: {exc!r}")
                    break
                self._writing = False
                self._written(taken)
                continue
            if session.close_reason is not None:
                break
            await self._writer_wake.wait()
            self._writer_wake = trio.Event()
        self.kill()

    async def _timer(self) -> None:
        session = self.session
        while True:
            deadline = session.next_deadline()
            self._timer_deadline = math.inf if deadline is None else deadline
            self._timer_wake = trio.Event()
            with trio.move_on_at(self._timer_deadline):
                await self._timer_wake.wait()
            now = trio.current_time()
            if deadline is not None and now >= deadline:
                session.tick(now)
                self.server._after(self)


def _record(write: Any, **fields: Any) -> None:
    """Write a miner event to the pool's record; a record that cannot keep up loses this
    informational event (logged), never the connection."""
    try:
        write(**fields)
    except PoolEventsBusy as exc:
        log.warning("pool record busy, %s not recorded: %s", write.__name__, exc)
