"""Standard output scripts: pay to public key hash (P2PKH) and pay to script hash (P2SH).

Only the exact standard forms are recognised; timelocked or other scripts are not reward scripts.
"""

from __future__ import annotations

from typing import Literal

HASH160_SIZE = 20

ScriptKind = Literal["p2pkh", "p2sh"]

# OP_DUP OP_HASH160 PUSH20 <h160> OP_EQUALVERIFY OP_CHECKSIG
_P2PKH_PREFIX = b"\x76\xa9\x14"
_P2PKH_SUFFIX = b"\x88\xac"
# OP_HASH160 PUSH20 <h160> OP_EQUAL
_P2SH_PREFIX = b"\xa9\x14"
_P2SH_SUFFIX = b"\x87"

P2PKH_SCRIPT_SIZE = len(_P2PKH_PREFIX) + HASH160_SIZE + len(_P2PKH_SUFFIX)  # 25
P2SH_SCRIPT_SIZE = len(_P2SH_PREFIX) + HASH160_SIZE + len(_P2SH_SUFFIX)  # 23


def _check_hash160(h160: bytes) -> bytes:
    if not isinstance(h160, bytes | bytearray):
        raise ValueError(f"hash160 must be bytes, got {type(h160).__name__}")
    if len(h160) != HASH160_SIZE:
        raise ValueError(f"hash160 must be {HASH160_SIZE} bytes, got {len(h160)}")
    return bytes(h160)


def p2pkh_script(h160: bytes) -> bytes:
    return _P2PKH_PREFIX + _check_hash160(h160) + _P2PKH_SUFFIX


def p2sh_script(h160: bytes) -> bytes:
    return _P2SH_PREFIX + _check_hash160(h160) + _P2SH_SUFFIX


def parse_output_script(script: bytes) -> tuple[ScriptKind, bytes] | None:
    """("p2pkh" | "p2sh", hash160) for a standard script, else None."""
    n = len(script)
    if n == P2PKH_SCRIPT_SIZE and script.startswith(_P2PKH_PREFIX) and script.endswith(_P2PKH_SUFFIX):
        return "p2pkh", bytes(script[3:23])
    if n == P2SH_SCRIPT_SIZE and script.startswith(_P2SH_PREFIX) and script.endswith(_P2SH_SUFFIX):
        return "p2sh", bytes(script[2:22])
    return None
