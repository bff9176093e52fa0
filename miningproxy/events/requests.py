"""Parsing event_ws client requests the way the node does.

The node validates each message with pydantic (``extra='forbid'``, lax ``NonNegativeInt`` fields,
a union discriminated by ``type``) and answers a bad one with ``VALIDATION_ERROR`` whose
``error_message`` is pydantic's text. This module accepts exactly what the node accepts (an int
field also takes ``true``, ``5.0`` or ``" 5 "``, as pydantic's lax mode does) and renders the same
error text, minus pydantic's "For further information visit ..." links. It never raises: every
input is either a request or an :class:`InvalidRequest`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

MODEL_NAME = "RequestWrapper"  # the node's pydantic root model; it names the model in error texts
_TAGS = ("START_STREAM", "ACK", "STOP_STREAM")
_FIELDS: dict[str, tuple[tuple[str, bool], ...]] = {
    # (field, nullable) in declaration order: pydantic reports field errors in this order, then extras.
    "START_STREAM": (("last_ack_event_id", True), ("window_size", False)),
    "ACK": (("ack_event_id", False), ("window_size", False)),
    "STOP_STREAM": (),
}
_OPTIONAL = {("START_STREAM", "last_ack_event_id")}  # may be absent (defaults to None)

# Unicode White_Space, which pydantic (Rust's str::trim) strips around numeric strings. Python's
# str.strip() also strips \x1c-\x1f, which pydantic does not.
_WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
_INT_TEXT = re.compile(r"([+-]?)([0-9]+(?:_[0-9]+)*)(?:\.0+)?", re.ASCII)
_I64_LIMIT = 2.0**63


@dataclass(frozen=True, slots=True)
class StartStream:
    last_ack_event_id: int | None
    window_size: int


@dataclass(frozen=True, slots=True)
class Ack:
    ack_event_id: int
    window_size: int


@dataclass(frozen=True, slots=True)
class StopStream:
    pass


Request = StartStream | Ack | StopStream


@dataclass(frozen=True, slots=True)
class InvalidRequest:
    """A message the node would answer with VALIDATION_ERROR; ``message`` is the error text."""

    message: str


@dataclass(frozen=True, slots=True)
class FieldError:
    """One entry of a pydantic-style error text: where, what, which kind, and the offending input."""

    loc: str
    msg: str
    type: str
    value: Any


class IntParseError(ValueError):
    """A value pydantic's lax int would refuse: ``msg`` and ``type`` as in pydantic's error text."""

    def __init__(self, msg: str, type_: str) -> None:
        self.msg = msg
        self.type = type_


# The ACK a client sends for every event, as json.dumps writes it (compact or default spacing,
# either key order): matched directly, since it is most of the traffic. Anything else takes the
# full path below. 18 digits stay below 2**63, so every match is an ACK the full path accepts.
_N = r"(0|[1-9][0-9]{0,17})"
_PLAIN_ACK = re.compile(
    rf'\{{"type": ?"ACK", ?(?:"ack_event_id": ?{_N}, ?"window_size": ?{_N}|"window_size": ?{_N}, ?"ack_event_id": ?{_N})\}}'
)


def plain_ack(payload: str | bytes) -> tuple[int, int] | None:
    """(ack_event_id, window_size) of an ACK in the plain shape, else None (parse_request decides)."""
    if type(payload) is not str:
        return None
    plain = _PLAIN_ACK.fullmatch(payload)
    if plain is None:
        return None
    if plain[1] is not None:
        return int(plain[1]), int(plain[2])
    return int(plain[4]), int(plain[3])


def parse_request(payload: str | bytes) -> Request | InvalidRequest:
    """Parse one websocket message (text or binary) into a request, or say why the node refuses it."""
    plain = plain_ack(payload)
    if plain is not None:
        return Ack(*plain)
    raw = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else bytes(payload)
    try:
        text = payload if isinstance(payload, str) else raw.decode("utf-8")
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return _invalid([FieldError("", f"Invalid JSON: {_json_problem(exc)}", "json_invalid", raw)])
    if not isinstance(obj, dict):
        return _invalid([FieldError("", "Input should be an object", "dict_type", obj)])
    if "type" not in obj:
        return _invalid(
            [FieldError("", "Unable to extract tag using discriminator 'type'", "union_tag_not_found", obj)]
        )
    tag = obj["type"]
    if not isinstance(tag, str) or tag not in _FIELDS:
        expected = ", ".join(f"'{t}'" for t in _TAGS)
        return _invalid(
            [
                FieldError(
                    "",
                    f"Input tag '{_tag_text(tag)}' found using 'type' does not match any of the expected tags: {expected}",
                    "union_tag_invalid",
                    obj,
                )
            ]
        )
    errors: list[FieldError] = []
    values: dict[str, int | None] = {}
    for name, nullable in _FIELDS[tag]:
        loc = f"{tag}.{name}"
        if name not in obj:
            if (tag, name) in _OPTIONAL:
                values[name] = None
            else:
                errors.append(FieldError(loc, "Field required", "missing", obj))
            continue
        value = obj[name]
        if value is None and nullable:
            values[name] = None
            continue
        try:
            number = lax_int(value)
        except IntParseError as exc:
            errors.append(FieldError(loc, exc.msg, exc.type, value))
            continue
        if number < 0:
            errors.append(
                FieldError(loc, "Input should be greater than or equal to 0", "greater_than_equal", value)
            )
            continue
        values[name] = number
    known = {name for name, _ in _FIELDS[tag]}
    for key, value in obj.items():
        if key != "type" and key not in known:
            errors.append(
                FieldError(f"{tag}.{key}", "Extra inputs are not permitted", "extra_forbidden", value)
            )
    if errors:
        return _invalid(errors)
    if tag == "START_STREAM":
        return StartStream(values["last_ack_event_id"], values["window_size"])  # type: ignore[arg-type]
    if tag == "ACK":
        return Ack(values["ack_event_id"], values["window_size"])  # type: ignore[arg-type]
    return StopStream()


def lax_int(value: Any) -> int:
    """pydantic's lax int coercion (JSON values, and query-string text); raises IntParseError."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise IntParseError("Input should be a finite number", "finite_number")
        if not value.is_integer():
            raise IntParseError(
                "Input should be a valid integer, got a number with a fractional part", "int_from_float"
            )
        if not -_I64_LIMIT <= value < _I64_LIMIT:
            raise IntParseError(
                "Unable to parse input string as an integer, exceeded maximum size", "int_parsing_size"
            )
        return int(value)
    if isinstance(value, str):
        match = _INT_TEXT.fullmatch(value.strip(_WHITESPACE))
        if match is None:
            raise IntParseError(
                "Input should be a valid integer, unable to parse string as an integer", "int_parsing"
            )
        sign, digits = match.groups()
        try:
            number = int(digits.replace("_", ""))
        except ValueError:  # beyond Python's int-from-text digit limit
            raise IntParseError(
                "Unable to parse input string as an integer, exceeded maximum size", "int_parsing_size"
            ) from None
        return -number if sign == "-" else number
    raise IntParseError("Input should be a valid integer", "int_type")


def _tag_text(tag: Any) -> str:
    return str(tag)


def _json_problem(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        message = {
            "Expecting value": "expected value",
            "Extra data": "trailing characters",
            "Expecting property name enclosed in double quotes": "key must be a string",
            "Expecting ':' delimiter": "expected `:`",
            "Expecting ',' delimiter": "expected `,` or `}` after an object entry",
            "Unterminated string starting at": "EOF while parsing a string",
            "Invalid control character at": "control character (\\u0000-\\u001F) found while parsing a string",
        }.get(exc.msg, exc.msg[:1].lower() + exc.msg[1:])
        return f"{message} at line {exc.lineno} column {exc.colno}"
    if isinstance(exc, UnicodeDecodeError):
        return "invalid unicode code point at line 1 column 1"
    if isinstance(exc, RecursionError):
        return "recursion limit exceeded at line 1 column 1"
    return str(exc)


def _invalid(errors: list[FieldError]) -> InvalidRequest:
    return InvalidRequest(render_errors(MODEL_NAME, errors))


def render_errors(model: str, errors: list[FieldError]) -> str:
    """pydantic's ValidationError text (without the documentation links)."""
    count = len(errors)
    lines = [f"{count} validation error{'' if count == 1 else 's'} for {model}"]
    for error in errors:
        if error.loc:
            lines.append(error.loc)
        lines.append(
            f"  {error.msg} [type={error.type}, input_value={input_repr(error.value)}, "
            f"input_type={type(error.value).__name__}]"
        )
    return "\n".join(lines)


def input_repr(value: Any) -> str:
    """Python's repr, shortened the way pydantic shortens it in error texts."""
    try:
        text = repr(value)
    except RecursionError:
        text = f"<{type(value).__name__}>"
    if len(text) > 50:
        text = text[:25] + "..." + text[-24:]
    return text
