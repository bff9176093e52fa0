"""Hathor block serialization (regular blocks: no aux_pow, no extra headers).

funds  = signal_bits u8 | version u8 | n_outputs u8 | outputs
output = value (4 bytes, or 8 bytes holding -value above 2**31-1) | token_data u8 | script_len u16 | script
graph  = weight f64 | timestamp u32 | n_parents u8 | parents (32 bytes each) | data_len u8 | data
struct = funds | graph | nonce (16 bytes); mining header = sha256(funds) || sha256(graph).
All integers are big-endian.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass

from hashing.header import NONCE_SIZE, block_hash, check_pow
from miningproxy.hathor.networks import BLOCK_DATA_MAX_SIZE

HASH_SIZE = 32
MAX_OUTPUT_VALUE = 2**63  # the largest value the 8-byte encoding can hold (as -value)
MAX_OUTPUT_VALUE_32 = 2**31 - 1  # the largest value written in 4 bytes
MAX_SCRIPT_SIZE = 0xFFFF
MAX_NONCE = 2 ** (8 * NONCE_SIZE) - 1

_FUNDS_HEAD = struct.Struct("!BBB")
_OUTPUT_TAIL = struct.Struct("!BH")
_GRAPH_HEAD = struct.Struct("!dIB")


class BlockParseError(ValueError):
    """Bytes that are not a well-formed block; the message says what and where."""


def _check_uint(name: str, value: int, maximum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise ValueError(f"{name} must be an integer in 0..{maximum}, got {value!r:.40}")


def encode_output_value(value: int) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"output value must be an integer, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"output value must be positive, got {value}")
    if value > MAX_OUTPUT_VALUE:
        raise ValueError(f"output value {value} exceeds the maximum {MAX_OUTPUT_VALUE}")
    if value > MAX_OUTPUT_VALUE_32:
        return (-value).to_bytes(8, "big", signed=True)
    return value.to_bytes(4, "big")


def decode_output_value(buf: bytes, offset: int = 0) -> tuple[int, int]:
    """Read an output value at ``offset``; returns (value, offset after it)."""
    if offset >= len(buf):
        raise BlockParseError(f"truncated: output value expected at byte {offset}, input ends there")
    if buf[offset] & 0x80:
        end = offset + 8
        if end > len(buf):
            raise BlockParseError(
                f"truncated: 8-byte output value at byte {offset}, only {len(buf) - offset} left"
            )
        value = -int.from_bytes(buf[offset:end], "big", signed=True)
        if value <= MAX_OUTPUT_VALUE_32:
            raise BlockParseError(
                f"output value {value} at byte {offset} uses the 8-byte encoding but fits in 4 bytes"
            )
        return value, end
    end = offset + 4
    if end > len(buf):
        raise BlockParseError(
            f"truncated: 4-byte output value at byte {offset}, only {len(buf) - offset} left"
        )
    value = int.from_bytes(buf[offset:end], "big")
    if value == 0:
        raise BlockParseError(f"output value at byte {offset} is zero; values must be positive")
    return value, end


@dataclass(frozen=True)
class TxOutput:
    value: int
    token_data: int
    script: bytes

    def __post_init__(self) -> None:
        encode_output_value(self.value)
        _check_uint("token_data", self.token_data, 0xFF)
        if not isinstance(self.script, bytes | bytearray) or len(self.script) > MAX_SCRIPT_SIZE:
            raise ValueError(
                f"output script must be bytes of at most {MAX_SCRIPT_SIZE}, got {self.script!r:.60}"
            )
        object.__setattr__(self, "script", bytes(self.script))

    def encode(self) -> bytes:
        return (
            encode_output_value(self.value)
            + _OUTPUT_TAIL.pack(self.token_data, len(self.script))
            + self.script
        )


@dataclass(frozen=True)
class Block:
    signal_bits: int
    version: int
    outputs: tuple[TxOutput, ...]
    weight: float
    timestamp: int
    parents: tuple[bytes, ...]
    data: bytes
    nonce: int | None = None

    def __post_init__(self) -> None:
        _check_uint("signal_bits", self.signal_bits, 0xFF)
        _check_uint("version", self.version, 0xFF)
        _check_uint("timestamp", self.timestamp, 0xFFFFFFFF)
        if self.nonce is not None:
            _check_uint("nonce", self.nonce, MAX_NONCE)
        outputs = tuple(self.outputs)
        if len(outputs) > 0xFF or not all(isinstance(o, TxOutput) for o in outputs):
            raise ValueError("outputs must be at most 255 TxOutput objects")
        parents = tuple(bytes(p) for p in self.parents)
        if len(parents) > 0xFF or any(len(p) != HASH_SIZE for p in parents):
            raise ValueError(f"parents must be at most 255 hashes of {HASH_SIZE} bytes")
        if isinstance(self.weight, bool) or not isinstance(self.weight, int | float):
            raise ValueError(f"weight must be a number, got {self.weight!r}")
        try:
            weight = float(self.weight)
        except OverflowError:
            weight = math.inf
        if not math.isfinite(weight):
            raise ValueError(f"weight must be finite, got {self.weight!r:.40}")
        data = bytes(self.data)
        if len(data) > BLOCK_DATA_MAX_SIZE:
            raise ValueError(f"block data is {len(data)} bytes, the maximum is {BLOCK_DATA_MAX_SIZE}")
        object.__setattr__(self, "outputs", outputs)
        object.__setattr__(self, "parents", parents)
        object.__setattr__(self, "weight", weight)
        object.__setattr__(self, "data", data)

    def funds_struct(self) -> bytes:
        head = _FUNDS_HEAD.pack(self.signal_bits, self.version, len(self.outputs))
        return head + b"".join(o.encode() for o in self.outputs)

    def graph_struct(self) -> bytes:
        head = _GRAPH_HEAD.pack(self.weight, self.timestamp, len(self.parents))
        return head + b"".join(self.parents) + bytes((len(self.data),)) + self.data

    def struct_without_nonce(self) -> bytes:
        return self.funds_struct() + self.graph_struct()

    def mining_header(self) -> bytes:
        """The 64 bytes a miner hashes with the nonce: sha256(funds) || sha256(graph)."""
        return hashlib.sha256(self.funds_struct()).digest() + hashlib.sha256(self.graph_struct()).digest()

    def _nonce(self, nonce: int | None) -> int:
        n = self.nonce if nonce is None else nonce
        if n is None:
            raise ValueError("block has no nonce; pass one")
        if not 0 <= n <= MAX_NONCE:
            raise ValueError(f"nonce must be an unsigned {NONCE_SIZE}-byte integer, got {n!r}")
        return n

    def struct(self, nonce: int | None = None) -> bytes:
        """The full serialization, with ``nonce`` (default: the block's own) as 16 big-endian bytes."""
        return self.struct_without_nonce() + self._nonce(nonce).to_bytes(NONCE_SIZE, "big")

    def hash(self, nonce: int | None = None) -> bytes:
        """The block hash, big-endian as Hathor displays it."""
        return block_hash(self.mining_header(), self._nonce(nonce))

    def verify_pow(self, weight: float | None = None, nonce: int | None = None) -> bool:
        """True when the hash is below the target of ``weight`` (default: the block's own weight)."""
        return check_pow(self.hash(nonce), self.weight if weight is None else weight)


class _Reader:
    """Cursor over a byte string; every read names what it reads so errors say where input went wrong."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            left = len(self.buf) - self.pos
            raise BlockParseError(f"truncated: {what} needs {n} bytes at byte {self.pos}, only {left} left")
        out = self.buf[self.pos : end]
        self.pos = end
        return out

    def unpack(self, fmt: struct.Struct, what: str) -> tuple:
        return fmt.unpack(self.take(fmt.size, what))


def parse_block(data: bytes, *, has_nonce: bool = True) -> Block:
    """Parse a regular block (layout only: any version byte is accepted, no trailing bytes allowed)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BlockParseError(f"block must be bytes, got {type(data).__name__}")
    r = _Reader(bytes(data))
    signal_bits, version, n_outputs = r.unpack(_FUNDS_HEAD, "signal_bits/version/n_outputs")
    outputs = []
    for i in range(n_outputs):
        value, r.pos = decode_output_value(r.buf, r.pos)
        token_data, script_len = r.unpack(_OUTPUT_TAIL, f"output {i} token_data/script_len")
        script = r.take(script_len, f"output {i} script")
        outputs.append(TxOutput(value, token_data, script))
    weight, timestamp, n_parents = r.unpack(_GRAPH_HEAD, "weight/timestamp/n_parents")
    if not math.isfinite(weight):
        raise BlockParseError(f"weight is not a finite number: {weight!r}")
    parents = tuple(r.take(HASH_SIZE, f"parent {i} of {n_parents}") for i in range(n_parents))
    (data_len,) = r.take(1, "data_len")
    if data_len > BLOCK_DATA_MAX_SIZE:
        raise BlockParseError(f"block data is {data_len} bytes, the maximum is {BLOCK_DATA_MAX_SIZE}")
    block_data = r.take(data_len, "block data")
    nonce = int.from_bytes(r.take(NONCE_SIZE, "nonce"), "big") if has_nonce else None
    if r.pos != len(r.buf):
        after = "nonce" if has_nonce else "block data"
        raise BlockParseError(f"{len(r.buf) - r.pos} trailing bytes after the {after} at byte {r.pos}")
    return Block(signal_bits, version, tuple(outputs), weight, timestamp, parents, block_data, nonce)
