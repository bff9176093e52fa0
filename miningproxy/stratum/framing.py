"""Bytes in, lines out: the newline framing of Stratum, with a hard limit on line length.

Pure and incremental: :meth:`LineFramer.feed` takes whatever the socket returned and yields the
complete lines in it. A line longer than ``max_line`` bytes (found as soon as the buffer exceeds
the limit, never by buffering without bound) or one that is not UTF-8 is reported as an event of
its own; after an oversized line the framer stops (the connection is going to be closed).
Trailing ``\\r`` is dropped (some clients end lines with CRLF) and blank lines are skipped. A line
is its text (a ``str``): lines are most of what rigs send, and each would otherwise cost an object.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LineTooLong:
    length: int  # bytes seen without a newline (at least max_line + 1)


@dataclass(frozen=True, slots=True)
class NotUtf8:
    raw: bytes  # the start of the offending line, for the log


FramerEvent = str | LineTooLong | NotUtf8  # a str is a line


class LineFramer:
    __slots__ = ("max_line", "_buffer", "_scanned", "_broken")

    def __init__(self, max_line: int = 16384) -> None:
        self.max_line = max_line
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer already known to hold no newline
        self._broken = False

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[FramerEvent]:
        if self._broken:
            return []
        if not self._buffer and data[-1:] == b"\n" and len(data) <= self.max_line + 1:
            # The usual read: whole lines, none of which can be too long. One decode and one
            # split for all of them (a newline byte is never part of a multi-byte character).
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                pass  # line by line below: the others still count, each bad one is reported
            else:
                lines = text.split("\n")
                lines.pop()  # (empty: what follows the last newline)
                # Rigs send JSON objects: when every line ends with "}" (one count in C, no loop
                # here), none is blank or CR-ended, and the lines are the events as split.
                if text.count("}\n") == len(lines):
                    return lines  # type: ignore[return-value]  # (a list of str: of FramerEvent)
                events: list[FramerEvent] = []
                for line in lines:
                    if line[-1:] == "\r":
                        line = line[:-1]
                    # Blank lines are skipped; strip() only for a line that starts or ends blank.
                    if (line and not line[0].isspace() and not line[-1].isspace()) or line.strip():
                        events.append(line)
                return events
        buffer = self._buffer
        buffer += data
        events = []
        start = 0
        while True:
            end = buffer.find(b"\n", max(start, self._scanned))
            if end < 0:
                break
            self._scanned = 0
            if end - start > self.max_line + (1 if buffer[end - 1 : end] == b"\r" else 0):
                return self._too_long(events, end - start)
            event = self._line(bytes(buffer[start:end]))
            if event is not None:
                events.append(event)
            start = end + 1
        del buffer[:start]
        self._scanned = len(buffer)
        if len(buffer) > self.max_line + 1:  # +1: room for a CR before the newline
            return self._too_long(events, len(buffer))
        return events

    def _too_long(self, events: list[FramerEvent], length: int) -> list[FramerEvent]:
        self._broken = True
        self._buffer = bytearray()
        events.append(LineTooLong(length))
        return events

    @staticmethod
    def _line(raw: bytes) -> FramerEvent | None:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return NotUtf8(raw[:64])
        if not text.strip():
            return None
        return text
