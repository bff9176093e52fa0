"""Kernel timestamps of loopback TCP bytes, for latencies that must not include a process's wake-up.

Linux stamps a packet with CLOCK_REALTIME as it crosses the network stack, on request:

* receive side, ``SO_TIMESTAMPNS``: ``recvmsg`` returns (``SCM_TIMESTAMPNS`` control message) the
  time the last packet it read entered the stack. On loopback that happens inside the sender's
  ``write`` (``loopback_xmit`` -> ``netif_rx``, stamped before the backlog queue:
  ``net.core.netdev_tstamp_prequeue`` = 1, the default), so it is the moment the peer's write
  reached this socket, whenever this process gets around to reading it.
* send side, ``SO_TIMESTAMPING`` with ``SOF_TIMESTAMPING_TX_SOFTWARE``: the time the last byte of
  each ``send`` is handed to the device (for loopback: in ``loopback_xmit``, a few microseconds
  before the peer's receive stamp of the same packet), read back from the socket's error queue
  (``MSG_ERRQUEUE``) with the byte offset of that last byte (``SOF_TIMESTAMPING_OPT_ID`` +
  ``OPT_ID_TCP``: offsets count from the setsockopt).

:class:`WsMessageStamps` follows the client-to-server websocket frames in a byte stream and gives
each complete data message the receive stamp of the chunk that completed it. Both clocks are
CLOCK_REALTIME: compare them with each other (or ``time.time()``), never with ``time.monotonic()``.

The constants are Linux's generic ones (x86-64, arm64, ...), which Python's socket module does
not export.
"""

from __future__ import annotations

import socket
import struct
from collections import deque
from typing import NamedTuple

SO_TIMESTAMPNS = 35  # SO_TIMESTAMPNS_OLD == SCM_TIMESTAMPNS: struct timespec of the native ABI
SO_TIMESTAMPING = 37  # SO_TIMESTAMPING_OLD == SCM_TIMESTAMPING: struct scm_timestamping (3 timespecs)
IP_RECVERR = 11
IPV6_RECVERR = 25
SOL_IPV6 = 41
SO_EE_ORIGIN_TIMESTAMPING = 4
SCM_TSTAMP_SND = 0
SOF_TIMESTAMPING_TX_SOFTWARE = 1 << 1
SOF_TIMESTAMPING_SOFTWARE = 1 << 4
SOF_TIMESTAMPING_OPT_ID = 1 << 7
SOF_TIMESTAMPING_OPT_TSONLY = 1 << 11
SOF_TIMESTAMPING_OPT_ID_TCP = 1 << 16  # Linux >= 6.2: offsets from the write sequence, not snd_una
TX_FLAGS = (
    SOF_TIMESTAMPING_TX_SOFTWARE
    | SOF_TIMESTAMPING_SOFTWARE
    | SOF_TIMESTAMPING_OPT_ID
    | SOF_TIMESTAMPING_OPT_ID_TCP
    | SOF_TIMESTAMPING_OPT_TSONLY
)
ANCILLARY_SIZE = 256
_TIMESPEC = struct.Struct("@ll")
_EXTENDED_ERR = struct.Struct("=IBBBBII")  # struct sock_extended_err


def _timespec(data: bytes, offset: int = 0) -> float | None:
    sec, nsec = _TIMESPEC.unpack_from(data, offset)
    return sec + nsec * 1e-9 if sec or nsec else None


# --- receive side --------------------------------------------------------------------------------


def enable_rx_stamps(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)


def rx_stamp(ancdata: list[tuple[int, int, bytes]]) -> float | None:
    """The ``SCM_TIMESTAMPNS`` stamp in ``recvmsg``'s ancillary data (seconds, CLOCK_REALTIME), or
    None: the packet was not stamped (the stack stamps only once some socket has asked)."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            return _timespec(data)
    return None


# --- send side -----------------------------------------------------------------------------------


def enable_tx_stamps(sock: socket.socket) -> None:
    """Stamp every later ``send`` on ``sock`` as it leaves; key = offset of its last byte from now
    (before Linux 6.2, which lacks ``OPT_ID_TCP``: from the first unacknowledged byte, the same on
    an idle connection)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, TX_FLAGS)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, TX_FLAGS & ~SOF_TIMESTAMPING_OPT_ID_TCP)


def tx_stamp(ancdata: list[tuple[int, int, bytes]]) -> tuple[int, float] | None:
    """(key, stamp) of one error-queue message holding a send ("SND") software timestamp, else None."""
    stamp: float | None = None
    key: int | None = None
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPING and len(data) >= 3 * _TIMESPEC.size:
            stamp = _timespec(data)  # [0] software, [1] deprecated, [2] hardware
        elif (level, kind) in ((socket.IPPROTO_IP, IP_RECVERR), (SOL_IPV6, IPV6_RECVERR)):
            if len(data) >= _EXTENDED_ERR.size:
                _errno, origin, _type, _code, _pad, info, data_ = _EXTENDED_ERR.unpack_from(data)
                if origin == SO_EE_ORIGIN_TIMESTAMPING and info == SCM_TSTAMP_SND:
                    key = data_
    if stamp is None or key is None:
        return None
    return key, stamp


def read_tx_stamps(sock: socket.socket) -> list[tuple[int, float]]:
    """Drain ``sock``'s error queue (without blocking): the send stamps it held, as (key, stamp)."""
    out = []
    while True:
        try:
            _, ancdata, _, _ = sock.recvmsg(0, ANCILLARY_SIZE, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return out
        found = tx_stamp(ancdata)
        if found is not None:
            out.append(found)


# --- websocket messages in a received byte stream --------------------------------------------------


class MessageStamp(NamedTuple):
    stamp: float | None  # receive stamp of the chunk holding the message's last byte
    size: int  # payload bytes of the message (all its frames)
    shared: bool  # that chunk held bytes after the message too: the stamp may be of a later write


class WsMessageStamps:
    """Feed it every chunk a websocket server reads (``feed(data, stamp)``), from the connection's
    first byte; :attr:`messages` then holds one :class:`MessageStamp` per complete data message
    (text or binary, fragmented or not), in order, as the websocket library will deliver them.
    Control frames (ping, pong, close) are skipped. A connection whose HTTP head is not a websocket
    upgrade is ignored (``active`` turns False).

    The stamp of a TCP ``recvmsg`` is that of the last packet it read (and the kernel gives packets
    merged in the receive queue the later stamp), so a message is stamped exactly when it ends a
    chunk: ``shared`` flags the others.
    """

    def __init__(self) -> None:
        self.messages: deque[MessageStamp] = deque()
        self.active = True
        self._head: bytes | None = b""  # the HTTP head so far; None once it is over
        self._header = b""  # a frame header split across chunks
        self._left = 0  # payload bytes of the current frame not seen yet
        self._in_frame = False
        self._data_frame = False
        self._fin = False
        self._size = 0  # payload bytes of the current message so far

    def feed(self, data: bytes, stamp: float | None) -> None:
        if not self.active or not data:
            return
        pos = 0
        if self._head is not None:
            head = self._head + data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                self._head = head[-65536:]
                return
            if b"websocket" not in head[:end].lower():
                self.active = False
                return
            pos = end + 4 - len(self._head)
            self._head = None
        n = len(data)
        while pos < n:
            if self._in_frame:
                take = min(self._left, n - pos)
                pos += take
                self._left -= take
                if self._data_frame:
                    self._size += take
                if self._left == 0:
                    self._end_frame(stamp, pos < n)
                continue
            header = self._header + data[pos : pos + 14]
            need = _header_size(header)
            if need is None or len(header) < need:
                self._header = header
                return
            pos += need - len(self._header)
            self._header = b""
            self._start_frame(header[:need])
            if self._left == 0:
                self._end_frame(stamp, pos < n)

    def _start_frame(self, header: bytes) -> None:
        opcode = header[0] & 0x0F
        self._fin = bool(header[0] & 0x80)
        self._data_frame = opcode < 8  # continuation, text, binary
        length = header[1] & 0x7F
        if length == 126:
            length = int.from_bytes(header[2:4], "big")
        elif length == 127:
            length = int.from_bytes(header[2:10], "big")
        self._left = length
        self._in_frame = True

    def _end_frame(self, stamp: float | None, more: bool) -> None:
        self._in_frame = False
        if self._data_frame and self._fin:
            self.messages.append(MessageStamp(stamp, self._size, more))
            self._size = 0


def _header_size(header: bytes) -> int | None:
    """A frame header's size from its first two bytes (None: not known yet)."""
    if len(header) < 2:
        return None
    length = header[1] & 0x7F
    size = 2 + (2 if length == 126 else 8 if length == 127 else 0)
    return size + (4 if header[1] & 0x80 else 0)
