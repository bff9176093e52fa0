"""Block templates as the node sends them (``mining.notify`` params / ``mining.refresh`` result).

Every field is checked, with errors that name the field and say what was wrong: a template the proxy
cannot build a valid block from must be refused here, not discovered when the node rejects a block.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from miningproxy.hathor.block import HASH_SIZE, MAX_OUTPUT_VALUE, Block, BlockParseError, parse_block

BLOCK_PARENTS = 3  # every block after genesis has exactly 3 parents: a block and two transactions
_U32_MAX = 0xFFFFFFFF
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")
_HASH_HEX = re.compile(r"[0-9a-fA-F]{64}")

FIELDS = (
    "data",
    "versions",
    "reward",
    "weight",
    "timestamp_now",
    "timestamp_min",
    "timestamp_max",
    "parents",
    "parents_any",
    "height",
    "score",
    "signal_bits",
)


class TemplateError(ValueError):
    """A template the node sent that the proxy cannot use; the message names the field."""


def _show(value: Any) -> str:
    if isinstance(value, int) and value.bit_length() > 64:  # repr of a huge int is long (or refused)
        return f"<{value.bit_length()}-bit integer>"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def json_copy(value: Any) -> Any:
    """A deep copy of decoded JSON (dicts, lists, scalars); anything else goes to copy.deepcopy.
    A template's dict is copied on every notify: this skips deepcopy's memo for the usual shape."""
    kind = type(value)
    if kind is dict:
        return {key: json_copy(item) for key, item in value.items()}
    if kind is list:
        return [json_copy(item) for item in value]
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return value
    return copy.deepcopy(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class BlockTemplate:
    data: bytes
    versions: tuple[int, ...]
    reward: int
    weight: float
    timestamp_now: int
    timestamp_min: int
    timestamp_max: int
    parents: tuple[bytes, ...]
    parents_any: tuple[bytes, ...]
    height: int
    score: float
    signal_bits: int
    # The dict as received, so to_json() gives back what the node sent (weight 8 stays 8, not 8.0).
    raw: Mapping[str, Any] | None = field(default=None, compare=False, repr=False, kw_only=True)
    # ``data`` parsed: the node's block with an empty output script, stamped with timestamp_min.
    data_block: Block = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        def fail(name: str, what: str) -> TemplateError:
            return TemplateError(f"template field {name!r}: {what}")

        if not isinstance(self.data, bytes | bytearray):
            raise fail("data", f"must be bytes, got {type(self.data).__name__}")
        try:
            data_block = parse_block(bytes(self.data), has_nonce=False)
        except BlockParseError as e:
            raise fail("data", f"is not a block without nonce: {e}") from None

        versions = tuple(self.versions)
        if not versions:
            raise fail("versions", "is empty")
        for v in versions:
            if not _is_int(v) or not 0 <= v <= 0xFF:
                raise fail("versions", f"every version must be an integer in 0..255, got {_show(v)}")

        if not _is_int(self.reward) or not 0 < self.reward <= MAX_OUTPUT_VALUE:
            raise fail("reward", f"must be an integer in 1..2**63, got {_show(self.reward)}")

        w = self.weight
        if not _is_number(w):
            raise fail("weight", f"must be a number, got {_show(w)}")
        if _is_int(w) and not 0 < w <= 256:  # checked as int first: float() of a huge int overflows
            raise fail("weight", f"must lie in (0, 256], got {_show(w)}")
        w = float(w)
        if not math.isfinite(w) or not 0 < w <= 256:
            raise fail("weight", f"must be a finite number in (0, 256], got {w!r}")

        for name in ("timestamp_now", "timestamp_min", "timestamp_max"):
            ts = getattr(self, name)
            if not _is_int(ts) or not 0 <= ts <= _U32_MAX:
                raise fail(name, f"must be an unsigned 32-bit integer, got {_show(ts)}")
        if self.timestamp_min > self.timestamp_max:
            raise fail(
                "timestamp_min",
                f"{self.timestamp_min} is after timestamp_max {self.timestamp_max}: no valid timestamp",
            )

        parents = tuple(self.parents)
        parents_any = tuple(self.parents_any)
        for name, hashes in (("parents", parents), ("parents_any", parents_any)):
            for i, h in enumerate(hashes):
                if not isinstance(h, bytes) or len(h) != HASH_SIZE:
                    raise fail(name, f"item {i} must be a {HASH_SIZE}-byte hash, got {_show(h)}")
        if not parents:
            raise fail("parents", "is empty: the block parent is required")
        if len(parents) > BLOCK_PARENTS:
            raise fail("parents", f"has {len(parents)} required parents, a block has {BLOCK_PARENTS}")
        if len(parents) + len(parents_any) < BLOCK_PARENTS:
            raise fail(
                "parents_any",
                f"parents ({len(parents)}) + parents_any ({len(parents_any)}) cannot make the "
                f"{BLOCK_PARENTS} parents a block needs",
            )
        seen: set[bytes] = set()
        for h in parents + parents_any:
            if h in seen:
                raise fail("parents_any" if h in parents_any else "parents", f"duplicate parent {h.hex()}")
            seen.add(h)

        if not _is_int(self.height) or self.height < 0:
            raise fail("height", f"must be a non-negative integer, got {_show(self.height)}")
        if not _is_number(self.score):
            raise fail("score", f"must be a number, got {_show(self.score)}")
        try:
            score = float(self.score)
        except OverflowError:
            raise fail("score", f"is out of range: {_show(self.score)}") from None
        if not math.isfinite(score):
            raise fail("score", f"must be finite, got {score!r}")
        if not _is_int(self.signal_bits) or not 0 <= self.signal_bits <= 0xFF:
            raise fail("signal_bits", f"must be an integer in 0..255, got {_show(self.signal_bits)}")

        object.__setattr__(self, "data", bytes(self.data))
        object.__setattr__(self, "versions", versions)
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "parents", parents)
        object.__setattr__(self, "parents_any", parents_any)
        object.__setattr__(self, "score", score)
        object.__setattr__(self, "data_block", data_block)

    @property
    def parent_hash(self) -> str:
        """The block this template builds on (hex), as stratum jobs announce it."""
        return self.parents[0].hex()

    @classmethod
    def from_json(cls, obj: Any) -> BlockTemplate:
        """A template from the node's JSON dict; TemplateError (naming the field) for anything malformed."""
        if not isinstance(obj, Mapping):
            raise TemplateError(f"template must be a JSON object, got {type(obj).__name__}")
        missing = [name for name in FIELDS if name not in obj]
        if missing:
            raise TemplateError(f"template is missing field(s): {', '.join(missing)}")

        def fail(name: str, what: str) -> TemplateError:
            return TemplateError(f"template field {name!r}: {what}")

        data = obj["data"]
        if not isinstance(data, str) or not _HEX.fullmatch(data):
            raise fail("data", f"must be a hex string of whole bytes, got {_show(data)}")

        def hash_list(name: str) -> tuple[bytes, ...]:
            items = obj[name]
            if not isinstance(items, list):
                raise fail(name, f"must be a list of hashes, got {_show(items)}")
            for i, item in enumerate(items):
                if not isinstance(item, str) or not _HASH_HEX.fullmatch(item):
                    raise fail(name, f"item {i} must be a 64-digit hex hash, got {_show(item)}")
            return tuple(bytes.fromhex(item) for item in items)

        versions = obj["versions"]
        if not isinstance(versions, list):
            raise fail("versions", f"must be a list of integers, got {_show(versions)}")

        template = cls(
            data=bytes.fromhex(data),
            versions=tuple(versions),
            reward=obj["reward"],
            weight=obj["weight"],
            timestamp_now=obj["timestamp_now"],
            timestamp_min=obj["timestamp_min"],
            timestamp_max=obj["timestamp_max"],
            parents=hash_list("parents"),
            parents_any=hash_list("parents_any"),
            height=obj["height"],
            score=obj["score"],
            signal_bits=obj["signal_bits"],
            raw=json_copy(dict(obj)),
        )
        return template

    def to_json(self) -> dict[str, Any]:
        """The node's dict shape. For a template from from_json this is exactly what was received
        (8 stays 8, extra keys stay); fields changed since (dataclasses.replace) show their new value."""
        built: dict[str, Any] = {
            "data": self.data.hex(),
            "versions": list(self.versions),
            "reward": self.reward,
            "weight": self.weight,
            "timestamp_now": self.timestamp_now,
            "timestamp_min": self.timestamp_min,
            "timestamp_max": self.timestamp_max,
            "parents": [p.hex() for p in self.parents],
            "parents_any": [p.hex() for p in self.parents_any],
            "height": self.height,
            "score": self.score,
            "signal_bits": self.signal_bits,
        }
        if self.raw is None:
            return built
        out = json_copy(dict(self.raw))
        for name, value in built.items():
            if out.get(name) != value:  # 8 == 8.0: the node's int form is kept
                out[name] = value
        return out


def parse_templates(params: Any) -> list[BlockTemplate]:
    """The templates of a ``mining.notify`` params / ``mining.refresh`` result (a non-empty list)."""
    if not isinstance(params, list):
        raise TemplateError(f"templates must be a JSON list, got {type(params).__name__}")
    if not params:
        raise TemplateError("template list is empty")
    templates = []
    for i, obj in enumerate(params):
        try:
            templates.append(BlockTemplate.from_json(obj))
        except TemplateError as e:
            raise TemplateError(f"template {i}: {e}") from None
    return templates
