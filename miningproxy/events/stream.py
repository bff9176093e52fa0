"""The windowed event stream, sans-IO: requests in, frames out.

One :class:`StreamSession` per event_ws connection, shared by every server of the protocol (the
proxy's ``/event_ws`` and ``/pool/event_ws``, the dev node). The driver feeds it the client's
messages (:meth:`StreamSession.receive`), asks which events it may send (:meth:`wants`) and turns
stored events into frames one at a time (:meth:`frame`). Nothing here does I/O or keeps time.

The rules are the node's (hathor-core ``hathor/event/websocket/protocol.py``):

- ``START_STREAM`` while a stream is active: ``STREAM_IS_ACTIVE``. ``ACK`` or ``STOP_STREAM``
  without one: ``STREAM_IS_INACTIVE``.
- An ACK below the last acknowledged id: ``ACK_TOO_SMALL``; above the last sent id (or before
  anything was sent): ``ACK_TOO_LARGE``. The stream goes on after an error.
- Never more than ``window_size`` events beyond the last acknowledged one are in flight;
  ``window_size`` 0 pauses the stream.

Where the node's behaviour is an accident, the default session does better, and ``node_quirks=True``
restores the node's exact behaviour (the dev node uses it to be a faithful peer):

- The node rewinds to the acknowledged id on every ACK, so an early ACK makes it send events
  again. Here an event is never sent twice within one stream.
- The node refuses an ACK repeating the last acknowledged id (``ACK_TOO_SMALL``), which leaves a
  client that paused with ``window_size`` 0 no way to resume. Here it is a window update.
- The node remembers the acknowledged id across STOP_STREAM, so a new START_STREAM on the same
  connection must start beyond it. Here a new stream starts wherever the client asks.

Event frames are assembled from the stored event JSON text without decoding it, so a relayed
event reaches the client byte for byte as the node sent it, and replay costs a string join.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from miningproxy.events.log import StreamIdentity
from miningproxy.events.requests import Ack, InvalidRequest, StartStream, StopStream, parse_request, plain_ack

EVENT_WS_NOT_RUNNING = "EVENT_WS_NOT_RUNNING"
STREAM_IS_ACTIVE = "STREAM_IS_ACTIVE"
STREAM_IS_INACTIVE = "STREAM_IS_INACTIVE"
VALIDATION_ERROR = "VALIDATION_ERROR"
ACK_TOO_SMALL = "ACK_TOO_SMALL"
ACK_TOO_LARGE = "ACK_TOO_LARGE"
ERROR_TYPES = (
    EVENT_WS_NOT_RUNNING,
    STREAM_IS_ACTIVE,
    STREAM_IS_INACTIVE,
    VALIDATION_ERROR,
    ACK_TOO_SMALL,
    ACK_TOO_LARGE,
)


# json.dumps() with non-default options builds a new encoder per call: build it once (same output).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps(obj: object) -> str:
    """JSON the way the node writes it (``hathor.util.json_dumps``): compact, UTF-8, not ASCII-escaped."""
    return _ENCODER.encode(obj)


def error_frame(error_type: str, invalid_request: str | None = None, error_message: str | None = None) -> str:
    """The node's InvalidRequestResponse: ``{"type","invalid_request","error_message"}``."""
    return dumps({"type": error_type, "invalid_request": invalid_request, "error_message": error_message})


class Envelope:
    """Builds EVENT frames for one stream identity by string assembly.

    ``frame(event_text, latest)`` equals ``dumps({"type": "EVENT", "peer_id", "network",
    "event": json.loads(event_text), "latest_event_id", "stream_id"})`` whenever ``event_text`` is
    itself compact JSON, and keeps ``event_text`` byte for byte in every case.
    """

    __slots__ = ("identity", "_head", "_middle", "_tail")

    def __init__(self, identity: StreamIdentity) -> None:
        self.identity = identity
        self._head = f'{{"type":"EVENT","peer_id":{dumps(identity.peer_id)},"network":{dumps(identity.network)},"event":'
        self._middle = ',"latest_event_id":'
        self._tail = f',"stream_id":{dumps(identity.stream_id)}}}'

    def frame(self, event_text: str, latest_event_id: int) -> str:
        return f"{self._head}{event_text}{self._middle}{latest_event_id}{self._tail}"


@dataclass(frozen=True, slots=True)
class Want:
    """The session may send ``count`` events starting at ``from_id``."""

    from_id: int
    count: int


def payload_text(payload: str | bytes) -> str:
    """A message as the ``invalid_request`` text of an error (the node decodes it as UTF-8)."""
    return payload if isinstance(payload, str) else bytes(payload).decode("utf-8", "replace")


class StreamSession:
    """One connection's stream state.

    ``next_id`` is the id of the next event to send, ``acked`` the last acknowledged id (-1: none),
    ``window`` the client's window; events ``acked+1 .. next_id-1`` are in flight.
    """

    def __init__(self, envelope: Envelope, *, node_quirks: bool = False) -> None:
        self.envelope = envelope
        self.node_quirks = node_quirks
        self.active = False
        self.next_id = 0
        self.acked = -1
        self.window = 0
        self.sent_count = 0  # events sent over the session's life (all streams)
        self._ever_acked: int | None = None  # node quirk: the ack survives STOP_STREAM

    # --- client requests -------------------------------------------------------------------------

    def receive(self, payload: str | bytes, *, first_id: int | None = None) -> list[str]:
        """Apply one client message; return the error frames to send (usually none).

        ``first_id`` is the oldest retained event (None: nothing stored yet); a START_STREAM that
        needs an older one gets a VALIDATION_ERROR saying so.
        """
        request = parse_request(payload)
        if isinstance(request, InvalidRequest):
            return [error_frame(VALIDATION_ERROR, payload_text(payload), request.message)]
        if isinstance(request, StartStream):
            return self._start(request, payload, first_id)
        if isinstance(request, Ack):
            return self._ack(request, payload)
        assert isinstance(request, StopStream)
        if not self.active:
            return [error_frame(STREAM_IS_INACTIVE, payload_text(payload))]
        self.active = False
        return []

    def receive_batch(self, payloads: Iterable[str | bytes], *, first_id: int | None = None) -> list[str]:
        """Apply several client messages in order; the error frames to send, in order.

        Exactly ``receive()`` on each message in turn (same frames, same state after), with the
        common ACK of an active stream applied directly.
        """
        frames: list[str] = []
        for payload in payloads:
            if self.active and not self.node_quirks:
                plain = plain_ack(payload)
                if plain is not None:
                    ack, window = plain
                    if self.acked <= ack < self.next_id:  # else: an error frame, from receive()
                        self.acked = ack
                        self._ever_acked = ack
                        self.window = window
                        continue
            frames += self.receive(payload, first_id=first_id)
        return frames

    def _start(self, request: StartStream, payload: str | bytes, first_id: int | None) -> list[str]:
        if self.active:
            return [error_frame(STREAM_IS_ACTIVE, payload_text(payload))]
        last_ack = request.last_ack_event_id
        if (
            self.node_quirks
            and self._ever_acked is not None
            and (last_ack is None or last_ack <= self._ever_acked)
        ):
            return [error_frame(ACK_TOO_SMALL, payload_text(payload))]
        start = 0 if last_ack is None else last_ack + 1
        if first_id is not None and start < first_id:
            return [
                error_frame(
                    VALIDATION_ERROR,
                    payload_text(payload),
                    f"event {start} was pruned by the proxy's retention policy; the oldest retained event is "
                    f"{first_id}: start from last_ack_event_id >= {first_id - 1}",
                )
            ]
        self.active = True
        self.next_id = start
        self.acked = start - 1
        self.window = request.window_size
        if last_ack is not None:
            self._ever_acked = last_ack
        return []

    def _ack(self, request: Ack, payload: str | bytes) -> list[str]:
        if not self.active:
            return [error_frame(STREAM_IS_INACTIVE, payload_text(payload))]
        ack = request.ack_event_id
        if ack < self.acked or (
            self.node_quirks and self._ever_acked is not None and ack <= self._ever_acked
        ):
            return [error_frame(ACK_TOO_SMALL, payload_text(payload))]
        if ack > self.next_id - 1:
            return [error_frame(ACK_TOO_LARGE, payload_text(payload))]
        self.acked = ack
        self._ever_acked = ack
        self.window = request.window_size
        if self.node_quirks:
            self.next_id = ack + 1  # the node's rewind: in-flight events are sent again
        return []

    # --- sending ---------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return self.next_id - 1 - self.acked

    def budget(self) -> int:
        """How many more events may be sent now."""
        if not self.active:
            return 0
        return max(0, self.window - self.in_flight)

    def wants(self) -> Want | None:
        budget = self.budget()
        return Want(self.next_id, budget) if budget else None

    def frame(self, event_id: int, event_text: str, latest_event_id: int) -> str | None:
        """The EVENT frame for the next event, advancing the stream; None when it may not be sent now
        (the stream stopped, the window is full, or ``event_id`` is not the next one)."""
        if event_id != self.next_id or self.budget() <= 0:
            return None
        self.next_id += 1
        self.sent_count += 1
        return self.envelope.frame(event_text, max(latest_event_id, event_id))

    def fail_pruned(self, first_id: int) -> str:
        """The next event was pruned while the stream was paused: stop the stream and say so."""
        missing = self.next_id
        self.active = False
        return error_frame(
            VALIDATION_ERROR,
            None,
            f"event {missing} was pruned by the proxy's retention policy before it could be sent; the oldest "
            f"retained event is {first_id}. The stream is stopped: start again from last_ack_event_id >= "
            f"{first_id - 1}",
        )
