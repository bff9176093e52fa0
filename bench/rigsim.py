"""Rig simulator: many raw TCP Stratum rigs in one process, on a bare epoll loop.

``python -m bench.rigsim --port P --count N [--mode stratum|echo|bare] [--window W] [--no-authorize]
[--stale-waits]``

It connects ``N`` rigs (a bounded number of connects at a time, so the listen backlog never
overflows), subscribes and authorizes each (``ADDRESS.rigI``; ``--no-authorize``: subscribe only),
and prints ``{"ready": R, "failed": F, ...}`` once every rig holds a job or has failed; ``ready``
counts the rigs still connected. Then it obeys JSON commands on stdin, one answer line each:

``{"cmd": "shares", "seconds": S, "warmup": W}``
    every rig keeps ``window`` valid shares in flight (a reply frees a slot, which is refilled at
    once); answers the replies counted in the S seconds after a warm-up of W seconds, the
    refusals by error code, the rigs still connected and why any others were closed, the
    seconds the simulator spent finding shares and the lowest and highest job weight. With
    ``--stale-waits``, once a share is answered "stale job" (31) every rig sends one share per
    job and waits for the next: the policy of the node's own Stratum and tx-mining-service.
``{"cmd": "arm"}``
    answers ``{"armed": true}`` at once; then, when every rig has received its next clean job
    (a line holding ``"clean":true``), answers ``{"arrivals": [monotonic seconds, ...], "kernel":
    [...]}``: when the simulator read each rig's job, and the kernel's receive stamp of the read
    that brought it (``SO_TIMESTAMPNS``, CLOCK_REALTIME; None if the kernel gave none). The stamp
    is the moment the job reached the rig's socket, however long the simulator took to get to
    that socket among thousands of others.
``{"cmd": "acks"}``
    opens a UDP socket for read acknowledgements and answers ``{"port": P}``: a fake node told to
    (``bench/fakenode.py``) sends each nonce it read there.
``{"cmd": "submit", "count": K, "gap": G}``
    rig 0 sends K shares that meet its job's weight, one at a time: the next G seconds after the
    previous reply (if the server answers) and, after ``acks``, its acknowledgement; answers
    ``{"sends": [[nonce_hex, monotonic, wall, kernel], ...]}``: the
    ``time.monotonic()`` and ``time.time()`` taken right before the ``send``, and the kernel's
    software transmit stamp of the share's last byte (CLOCK_REALTIME, ``SO_TIMESTAMPING``, see
    :mod:`bench.kstamp`: on loopback, the moment the bytes reach the server's socket, within a few
    microseconds), or None if the kernel gave none.
``{"cmd": "quit"}``

Modes: ``stratum`` (the proxy), ``echo`` (a line-echo server: the echoed subscribe makes a rig
ready, an echoed submit counts as its reply; a fixed job is mined so the rig's work per share is
the same), ``relay`` (a server that answers nothing: a rig is ready once connected) and
``bare`` (a server that answers the subscribe with a job line and later broadcasts
one). Times are ``time.monotonic()`` (CLOCK_MONOTONIC): comparable across processes.

The simulator does the least per line it can (byte tests, JSON only for jobs), so one core of it
can drive one core of a server.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import select
import socket
import sys
import time

from bench import kstamp
from bench.common import PRIVATENET_ADDRESS, json_object, raise_nofile
from hashing.pow import target_to_bytes, weight_to_target

CONNECTS_IN_FLIGHT = 256
FAKE_HEADER = bytes(range(64))
FAKE_WEIGHT = 0.1
FIRST_SHARE_ID = 100
_sha256 = hashlib.sha256


def cpu_seconds(pid: int | list[int] | None) -> float:
    """User + system CPU time of process ``pid`` (all its threads), or of several processes
    together, so far; 0 without a pid."""
    if pid is None:
        return 0.0
    total = 0
    for one in pid if isinstance(pid, list) else [pid]:
        with open(f"/proc/{one}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class Rig:
    __slots__ = (
        "index", "sock", "fd", "inbuf", "outbuf", "connected", "ready", "mid", "target", "job_id",
        "nonce", "next_id", "inflight", "arrived", "arrived_k", "last_reply", "written", "tx_base",
        "tx_stamps", "weight", "sent_on_job", "closed",
    )  # fmt: skip

    def __init__(self, index: int, sock: socket.socket) -> None:
        self.index = index
        self.sock = sock
        self.fd = sock.fileno()
        self.inbuf = b""
        self.outbuf = b""
        self.connected = False
        self.ready = False
        self.mid = None
        self.target = b""
        self.job_id = b""
        self.nonce = index << 64  # rigs never search the same nonces
        self.next_id = FIRST_SHARE_ID
        self.inflight = 0
        self.arrived: float | None = None  # time.monotonic() when the simulator read the clean job
        self.arrived_k: float | None = None  # the kernel's receive stamp of it (CLOCK_REALTIME)
        self.last_reply = b""
        self.written = 0  # bytes the kernel took from send()
        self.tx_base: int | None = None  # self.written when transmit stamps were turned on
        self.tx_stamps: dict[int, float] | None = None  # offset of a send's last byte -> its stamp
        self.weight = 0.0  # the job's share weight
        self.sent_on_job = 0  # shares sent for the current job
        self.closed = False  # failed: its socket is closed and it is out of the simulator

    def set_job(self, header: bytes, weight: float, job_id: str) -> None:
        self.mid = _sha256(header)
        self.target = target_to_bytes(weight_to_target(weight))
        self.job_id = job_id.encode()
        self.weight = weight
        self.sent_on_job = 0

    def share(self) -> tuple[int, bytes]:
        """The next nonce that meets the job's weight, as a submit line."""
        mid, target = self.mid, self.target
        nonce = self.nonce
        while True:
            nonce += 1
            h = mid.copy()  # type: ignore[attr-defined]
            h.update(nonce.to_bytes(16, "big"))
            if _sha256(h.digest()).digest()[::-1] < target:
                break
        self.nonce = nonce
        msgid = self.next_id
        self.next_id += 1
        line = b'{"id":%d,"method":"submit","params":{"job_id":"%s","nonce":"%032x"}}\n' % (
            msgid,
            self.job_id,
            nonce,
        )
        return nonce, line


def _error_code(line: bytes) -> str:
    """A refusal's error code, as text ("?" when the line does not say one)."""
    error = (json_object(line) or {}).get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return str(code) if isinstance(code, int) else "?"


class Simulator:
    def __init__(
        self,
        host: str,
        port: int,
        count: int,
        mode: str,
        window: int,
        address: str = PRIVATENET_ADDRESS,
        authorize: bool = True,
        stale_waits: bool = False,
    ) -> None:
        self.host, self.port, self.count, self.mode, self.window = host, port, count, mode, window
        self.address = address
        self.authorize = authorize
        # A server that answers a share 31 "stale job" takes one share per job (the node's own
        # Stratum, tx-mining-service): with stale_waits every rig then sends one share per job
        # and waits for the next, instead of resubmitting into refusals.
        self.stale_waits = stale_waits
        self.one_per_job = False
        self.hashing = 0.0  # seconds spent finding shares while counting
        self.weights: list[float] = []  # [lowest, highest] job weight received while counting
        self.epoll = select.epoll()
        self.rigs: dict[int, Rig] = {}
        self.started = 0
        self.pending = 0  # connected or connecting, not ready yet
        self.ready = 0
        self.failed: list[str] = []
        self.sharing = False
        self.counting = False
        self.ok = 0
        self.errors = 0
        self.first_error = b""
        self.error_codes: dict[str, int] = {}  # refusals counted by their error code
        self.armed = False
        self.arrived = 0
        self.deferred: list[tuple[Rig, bytes]] = []
        self.stdin = b""
        self.commands: list[dict] = []
        self.epoll.register(0, select.EPOLLIN)
        self.acks: socket.socket | None = None  # see open_acks()
        self.acked: set[bytes] = set()

    # --- plumbing --------------------------------------------------------------------------------

    def say(self, **answer: object) -> None:
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()

    def connect_more(self) -> None:
        while self.started < self.count and self.pending < CONNECTS_IN_FLIGHT:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            kstamp.enable_rx_stamps(sock)  # arrivals are stamped by the kernel (see arm())
            rig = Rig(self.started, sock)
            self.started += 1
            self.pending += 1
            code = sock.connect_ex((self.host, self.port))
            if code not in (0, errno.EINPROGRESS):
                self.failed.append(os.strerror(code))
                sock.close()
                self.pending -= 1
                continue
            self.rigs[rig.fd] = rig
            self.epoll.register(rig.fd, select.EPOLLOUT | select.EPOLLIN)

    def send(self, rig: Rig, data: bytes) -> None:
        if rig.outbuf:
            rig.outbuf += data
            return
        try:
            sent = rig.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:  # the server closed: a reset, a broken pipe
            self.fail(rig, f"send: {exc} (last line {rig.last_reply[:200]!r})")
            return
        rig.written += sent
        if sent < len(data):
            rig.outbuf = data[sent:]
            self.epoll.modify(rig.fd, select.EPOLLIN | select.EPOLLOUT)

    def on_connected(self, rig: Rig) -> None:
        code = rig.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self.fail(rig, f"connect: {os.strerror(code)}")
            return
        rig.connected = True
        self.epoll.modify(rig.fd, select.EPOLLIN)
        # Subscribe with the address as the node's own Stratum expects it, then authorize with
        # ADDRESS.worker as cgminer-style pools expect it. Not to a server without authorize: the
        # node answers it -32601 and closes the connection, as it does every code <= -32600.
        address = self.address.encode()
        hello = b'{"id":1,"method":"subscribe","params":{"address":"%s"}}\n' % address
        if self.authorize:
            hello += b'{"id":2,"method":"authorize","params":["%s.rig%d","x"]}\n' % (address, rig.index)
        self.send(rig, hello)
        if self.mode == "relay" and not rig.closed:  # a relay answers nothing: mine the fixed job at once
            rig.set_job(FAKE_HEADER, FAKE_WEIGHT, "00" * 16)
            self.became_ready(rig)

    def fail(self, rig: Rig, reason: str) -> None:
        if rig.closed:
            return
        rig.closed = True
        self.failed.append(reason)
        self.epoll.unregister(rig.fd)
        del self.rigs[rig.fd]
        rig.sock.close()
        if rig.ready:
            self.ready -= 1  # (counted once, as failed: ``ready`` is the rigs still mining)
        else:
            self.pending -= 1

    def became_ready(self, rig: Rig) -> None:
        rig.ready = True
        self.ready += 1
        self.pending -= 1

    # --- lines -----------------------------------------------------------------------------------

    def on_line(self, rig: Rig, line: bytes, now: float) -> None:
        mode = self.mode
        if b'"job"' in line and b'"method"' in line:  # "method":"job" (or "method": "job", the node's)
            message = json.loads(line)
            if message.get("method") == "job":
                params = message["params"]
                rig.set_job(bytes.fromhex(params["data"]), params["weight"], params["job_id"])
                if self.counting:
                    self._saw_weight(params["weight"])
                if not rig.ready:
                    self.became_ready(rig)
                return
        if mode == "echo":
            if not rig.ready:
                rig.set_job(FAKE_HEADER, FAKE_WEIGHT, "00" * 16)
                self.became_ready(rig)
            elif b'"method":"submit"' in line:
                self.on_reply(rig, True, line)
            return
        if line.startswith(b'{"result":"ok"'):  # the proxy's replies, without a JSON parse
            self.on_reply(rig, True, line)
        elif line.startswith(b'{"error"'):
            self.on_reply(rig, False, line)
        elif line.strip():
            # Any other server's spelling (spaces, key order, result true): parse it.
            message = json_object(line)
            if message is None:
                return
            if message.get("method") == "client.get_version":
                reply = {"id": message.get("id"), "result": "rigsim/1.0", "error": None}
                self.send(rig, json.dumps(reply).encode() + b"\n")
            elif "result" in message or "error" in message:
                ok = message.get("error") is None and message.get("result") in ("ok", True)
                self.on_reply(rig, ok, line)

    def on_reply(self, rig: Rig, ok: bool, line: bytes) -> None:
        rig.last_reply = line
        if rig.inflight <= 0:
            return  # a reply to subscribe or authorize
        rig.inflight -= 1
        if ok:
            if self.counting:
                self.ok += 1
            return
        code = _error_code(line)
        if code == "31" and self.stale_waits:
            self.one_per_job = True
        if self.counting:
            self.errors += 1
            self.first_error = self.first_error or line
            self.error_codes[code] = self.error_codes.get(code, 0) + 1

    def _saw_weight(self, weight: float) -> None:
        if not self.weights:
            self.weights = [weight, weight]
        elif weight < self.weights[0]:
            self.weights[0] = weight
        elif weight > self.weights[1]:
            self.weights[1] = weight

    def refill(self, rig: Rig) -> None:
        """Bring the rig's shares in flight back to the window, in one write as a pipelining
        client does (one share per job where the server takes no more)."""
        missing = self.window - rig.inflight
        if self.one_per_job:
            if rig.sent_on_job:
                return
            missing = min(missing, 1)
        rig.inflight += missing
        rig.sent_on_job += missing
        if self.counting:
            started = time.perf_counter()
            data = b"".join(rig.share()[1] for _ in range(missing))
            self.hashing += time.perf_counter() - started
        else:
            data = b"".join(rig.share()[1] for _ in range(missing))
        self.send(rig, data)

    def on_readable(self, rig: Rig) -> None:
        stamp = None
        try:
            if self.armed:
                data, ancdata, _, _ = rig.sock.recvmsg(262144, kstamp.ANCILLARY_SIZE)
                stamp = kstamp.rx_stamp(ancdata)
            else:
                data = rig.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.fail(rig, f"recv: {exc} (last line {rig.last_reply[:200]!r})")
            return
        now = time.monotonic()
        if not data:
            self.fail(rig, f"closed by the server (last line {rig.last_reply[:200]!r})")
            return
        if self.armed:
            # Stamp now, parse later: parsing here would delay the stamps of the sockets after it.
            if rig.arrived is None and (b'"clean":true' in data or b'"clean": true' in data):
                rig.arrived, rig.arrived_k = now, stamp
                self.arrived += 1
            self.deferred.append((rig, data))
            return
        self.take(rig, data, now)

    def take(self, rig: Rig, data: bytes, now: float) -> None:
        buffer = rig.inbuf + data if rig.inbuf else data
        if buffer[-1:] == b"\n":
            rig.inbuf = b""
            lines = buffer.split(b"\n")
            lines.pop()
        else:
            lines = buffer.split(b"\n")
            rig.inbuf = lines.pop()
        for line in lines:
            self.on_line(rig, line, now)
            if rig.closed:  # (a reply written back failed)
                return
        if self.sharing and rig.inflight < self.window and rig.ready:
            self.refill(rig)

    def poll(self, timeout: float) -> None:
        for fd, mask in self.epoll.poll(timeout):
            if fd == 0:
                self.read_stdin()
                continue
            rig = self.rigs.get(fd)
            if rig is None:
                if self.acks is not None and fd == self.acks.fileno():
                    self.read_acks()
                continue
            if not rig.connected:
                if mask & (select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP):
                    self.on_connected(rig)
                continue
            if mask & select.EPOLLOUT and rig.outbuf:
                data, rig.outbuf = rig.outbuf, b""
                self.send(rig, data)
                if rig.closed:
                    continue
                if not rig.outbuf:
                    self.epoll.modify(rig.fd, select.EPOLLIN)
            if mask & select.EPOLLERR and rig.tx_stamps is not None:
                self.take_tx_stamps(rig)  # the error queue holds transmit stamps: drain it
            if mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                self.on_readable(rig)

    def read_stdin(self) -> None:
        data = os.read(0, 65536)
        if not data:
            self.commands.append({"cmd": "quit"})
            return
        self.stdin += data
        while b"\n" in self.stdin:
            line, _, self.stdin = self.stdin.partition(b"\n")
            if line.strip():
                self.commands.append(json.loads(line))

    # --- phases ----------------------------------------------------------------------------------

    def connect_all(self, timeout: float) -> None:
        started = time.monotonic()
        deadline = started + timeout
        while self.ready + len(self.failed) < self.count and time.monotonic() < deadline:
            self.connect_more()
            self.poll(0.05)
        self.say(
            ready=self.ready,
            failed=len(self.failed),
            failures=sorted(set(self.failed))[:5],
            seconds=time.monotonic() - started,
        )

    def shares(self, seconds: float, warmup: float, pid: int | list[int] | None = None) -> None:
        self.sharing, self.ok, self.errors, self.first_error = True, 0, 0, b""
        self.error_codes, self.hashing, self.weights = {}, 0.0, []
        for rig in self.rigs.values():
            if rig.ready:
                self.refill(rig)
        start = time.monotonic() + warmup
        end = start + seconds
        while (now := time.monotonic()) < start:
            self.poll(start - now)
        cpu0 = cpu_seconds(pid)
        self.counting = True
        for rig in self.rigs.values():
            if rig.ready:
                self._saw_weight(rig.weight)
        while (now := time.monotonic()) < end:
            self.poll(end - now)
        self.counting = False
        elapsed = time.monotonic() - start
        cpu = cpu_seconds(pid) - cpu0
        ok, errors = self.ok, self.errors
        self.sharing = False
        drain = time.monotonic() + 5.0  # let the shares in flight come back before the next run
        while any(r.inflight for r in self.rigs.values()) and time.monotonic() < drain:
            self.poll(0.05)
        self.say(
            ok=ok,
            errors=errors,
            seconds=elapsed,
            rate=ok / elapsed,
            server_cpu=cpu,
            cpu_rate=ok / cpu if cpu > 0 else None,
            rigs=len(self.rigs),
            first_error=self.first_error[:300].decode(errors="replace"),
            error_codes=self.error_codes,
            hashing=self.hashing,
            weights=self.weights,
            one_per_job=self.one_per_job,
            failures=sorted(set(self.failed))[:5],  # why rigs were closed since they connected
        )

    def arm(self, timeout: float) -> None:
        for rig in self.rigs.values():
            rig.arrived = rig.arrived_k = None
        self.armed, self.arrived = True, 0
        self.say(armed=True)
        deadline = time.monotonic() + timeout
        while self.arrived < len(self.rigs) and time.monotonic() < deadline:
            self.poll(min(0.05, max(0.0, deadline - time.monotonic())))
        self.armed = False
        deferred, self.deferred = self.deferred, []
        for rig, data in deferred:
            if rig.fd in self.rigs:
                self.take(rig, data, time.monotonic())
        arrived = [r for r in self.rigs.values() if r.arrived is not None]
        self.say(
            arrivals=[r.arrived for r in arrived],
            kernel=[r.arrived_k for r in arrived],
            missing=len(self.rigs) - len(arrived),
        )

    def open_acks(self) -> int:
        if self.acks is None:
            self.acks = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.acks.bind(("127.0.0.1", 0))
            self.acks.setblocking(False)
            self.epoll.register(self.acks.fileno(), select.EPOLLIN)
        return self.acks.getsockname()[1]

    def read_acks(self) -> None:
        assert self.acks is not None
        while True:
            try:
                self.acked.add(self.acks.recv(256))
            except (BlockingIOError, InterruptedError):
                return

    def take_tx_stamps(self, rig: Rig) -> None:
        assert rig.tx_stamps is not None
        for key, stamp in kstamp.read_tx_stamps(rig.sock):
            rig.tx_stamps[key] = stamp

    def submit(self, count: int, gap: float) -> None:
        rig = next(iter(self.rigs.values()))
        if rig.tx_stamps is None:
            kstamp.enable_tx_stamps(rig.sock)
            rig.tx_base, rig.tx_stamps = rig.written, {}
        assert rig.tx_base is not None
        sends, keys = [], []
        for _ in range(count):
            nonce, line = rig.share()
            rig.inflight += self.mode != "relay"  # a relay never answers: do not wait for it
            keys.append(rig.written + len(line) - 1 - rig.tx_base)  # the share's last byte
            sent_at = time.monotonic()
            wall = time.time()
            self.send(rig, line)
            if rig.closed:
                break
            self.take_tx_stamps(rig)  # on loopback the stamp is queued before send() returns
            sends.append([f"{nonce:032x}", sent_at, wall])
            # The next share only once this one is answered and, with acks, read by the node: a
            # node that fell behind would otherwise stamp this submit with the next one's time.
            ack = f"{nonce:032x}".encode() if self.acks is not None else None
            deadline = sent_at + 10.0
            while (
                rig.inflight or (ack is not None and ack not in self.acked)
            ) and time.monotonic() < deadline:
                self.poll(0.01)
            self.acked.discard(ack)  # type: ignore[arg-type]
            until = time.monotonic() + gap
            while (now := time.monotonic()) < until:
                self.poll(until - now)
        self.take_tx_stamps(rig)
        for entry, key in zip(sends, keys, strict=True):
            entry.append(rig.tx_stamps.pop(key, None))
        rig.tx_stamps.clear()
        self.say(sends=sends, last_reply=rig.last_reply[:200].decode(errors="replace"))

    def serve(self) -> None:
        while True:
            while not self.commands:
                self.poll(1.0)
            command = self.commands.pop(0)
            cmd = command.get("cmd")
            if cmd == "quit":
                return
            if cmd == "shares":
                self.shares(float(command["seconds"]), float(command.get("warmup", 0.3)), command.get("pid"))
            elif cmd == "arm":
                self.arm(float(command.get("timeout", 60.0)))
            elif cmd == "submit":
                self.submit(int(command["count"]), float(command.get("gap", 0.002)))
            elif cmd == "acks":
                self.say(port=self.open_acks())
            elif cmd == "ping":
                self.say(pong=True, rigs=len(self.rigs), failed=len(self.failed))
            else:
                self.say(error=f"unknown command {cmd!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--mode", choices=("stratum", "echo", "bare", "relay"), default="stratum")
    parser.add_argument("--window", type=int, default=1, help="shares in flight per rig")
    parser.add_argument("--connect-timeout", type=float, default=120.0)
    parser.add_argument(
        "--address", default=PRIVATENET_ADDRESS, help="payout address (rigs are ADDRESS.rigN)"
    )
    parser.add_argument(
        "--stale-waits",
        action="store_true",
        help="after a 31 (stale job) reply, send one share per job (the node's policy)",
    )
    parser.add_argument(
        "--no-authorize",
        dest="authorize",
        action="store_false",
        help="subscribe only (the node's own Stratum closes a connection that sends authorize)",
    )
    args = parser.parse_args(argv)
    raise_nofile(args.count + 64)
    sim = Simulator(
        args.host,
        args.port,
        args.count,
        args.mode,
        args.window,
        args.address,
        args.authorize,
        args.stale_waits,
    )
    sim.connect_all(args.connect_timeout)
    sim.serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
