"""Real Hathor vectors for the hathor tests: transcripts of a real node and known genesis blocks.

Transcripts live in ``shared/protocol/transcripts`` beside the repository (``/work/shared`` next to
``/work/main``; in CI a copy of ``shared/`` sits beside the clone the same way).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

TRANSCRIPTS = Path(__file__).resolve().parents[2] / "shared" / "protocol" / "transcripts"

# Mainnet genesis (protocol/HATHOR.md and hathorlib's mainnet.yml).
MAINNET_GENESIS = {
    "script": bytes.fromhex("76a9147fd4ae0e4fb2d2854e76d359029d8078bb99649e88ac"),
    "value": 100_000_000_000,
    "timestamp": 1578075305,
    "nonce": 2591358,
    "weight": 21,
    "hash": bytes.fromhex("000006cb93385b8b87a545a1cbb6197e6caff600c12cc12fc54250d39c8088fc"),
}

# The genesis wallet address of Hathor private networks, as the node decodes its genesis script.
PRIVATENET_ADDRESS = "WY1URKUnqCTyiixW1Dw29vmeG99hNN4EW6"
PRIVATENET_SCRIPT = bytes.fromhex("76a91466665b27f7dbc4c8c089d2f686c170c74d66f0b588ac")


def hathorlib_block(block: Any) -> Any:
    """The same block as a hathorlib Block (the test oracle)."""
    from hathorlib.base_transaction import TxOutput as HTxOutput
    from hathorlib.block import Block as HBlock

    hb = HBlock()
    hb.signal_bits = block.signal_bits
    hb.version = block.version
    hb.outputs = [HTxOutput(o.value, o.script, o.token_data) for o in block.outputs]
    hb.weight = block.weight
    hb.timestamp = block.timestamp
    hb.parents = list(block.parents)
    hb.data = block.data
    hb.nonce = block.nonce or 0
    return hb


def load_jsonl(name: str) -> list[dict[str, Any]]:
    with open(TRANSCRIPTS / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _templates_in(frame: dict[str, Any]) -> list[dict[str, Any]] | None:
    if frame.get("method") == "mining.notify":
        return frame["params"]
    if isinstance(frame.get("result"), list):  # a mining.refresh reply
        return frame["result"]
    return None


@cache
def mining_frames() -> tuple[dict[str, Any], ...]:
    return tuple(load_jsonl("mining_ws.jsonl"))


def template_dicts() -> list[dict[str, Any]]:
    """Every template dict the node sent on /v1a/mining_ws (notify pushes and refresh replies)."""
    out: list[dict[str, Any]] = []
    for entry in mining_frames():
        if entry["dir"] == "recv" and (templates := _templates_in(entry["frame"])) is not None:
            out.extend(templates)
    return out


@dataclass(frozen=True)
class Submission:
    """One mining.submit of the transcript, with what the client built it from and what the node said."""

    request_id: int
    hexdata: str
    optimistic: bool
    template: dict[str, Any]  # the template the block was built from
    script: bytes  # the reward script the client used
    nonce: int
    mined_hash: bytes | None  # the client's "mined" info frame for this block, if any
    note: str
    reply: dict[str, Any]  # the node's answer (by id, or the id-less fatal error that followed)
    next_template: dict[str, Any] | None  # the first template the node sent after answering


def submissions() -> list[Submission]:
    """The transcript's block submissions, each with the template and inputs the client built it from.

    The client mined from the current template (data as given, i.e. at timestamp_min) and logged each
    found block as a "mined" info frame; a later submit of the same hexdata is a re-submission (the
    "duplicate"); a submit with no "mined" frame of its own (the "invalid PoW" one) was built from the
    current template with the last script and an unmined nonce, read back from its last 16 bytes.
    """
    frames = mining_frames()
    current: dict[str, Any] | None = None
    script = b""
    pending: dict[str, Any] | None = None  # the latest "mined" block not yet submitted
    built: dict[str, dict[str, Any]] = {}  # hexdata -> how it was built
    out: list[Submission] = []
    for i, entry in enumerate(frames):
        frame = entry["frame"]
        if entry["dir"] == "recv" and (templates := _templates_in(frame)) is not None:
            current = templates[0]
        elif entry["dir"] == "info" and "mined" in frame:
            if "script" in frame:
                script = b"" if frame["script"] == "empty" else bytes.fromhex(frame["script"])
            assert current is not None
            pending = {
                "template": current,
                "script": script,
                "nonce": frame["nonce"],
                "mined_hash": bytes.fromhex(frame["mined"]),
            }
        elif entry["dir"] == "send" and frame.get("method") == "mining.submit":
            params = frame["params"]
            hexdata, optimistic = (
                (params["hexdata"], params["optimistic"]) if isinstance(params, dict) else tuple(params)
            )
            if hexdata in built:
                how = built[hexdata]
            elif pending is not None:
                how, pending = pending, None
            else:
                assert current is not None
                how = {
                    "template": current,
                    "script": script,
                    "nonce": int(hexdata[-32:], 16),
                    "mined_hash": None,
                }
            built[hexdata] = how
            reply, next_template = _reply_and_next_template(frames, i, frame["id"])
            out.append(
                Submission(
                    frame["id"],
                    hexdata,
                    optimistic,
                    how["template"],
                    how["script"],
                    how["nonce"],
                    how["mined_hash"],
                    entry.get("note", ""),
                    reply,
                    next_template,
                )
            )
    return out


def _reply_and_next_template(
    frames: tuple[dict[str, Any], ...], start: int, request_id: int
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    reply: dict[str, Any] | None = None
    for entry in frames[start + 1 :]:
        frame = entry["frame"]
        if entry["dir"] != "recv":
            continue
        if reply is None:
            # the fatal error for a bad block has id null; it is the next reply either way
            if frame.get("id") == request_id or (frame.get("id") is None and frame.get("error")):
                reply = frame
            continue
        if (templates := _templates_in(frame)) is not None:
            return reply, templates[0]
    assert reply is not None, f"no reply to submit {request_id}"
    return reply, None


def event_blocks() -> list[dict[str, Any]]:
    """Blocks (version 0) the node announced on /v1a/event_ws, deduplicated by hash, scripts decoded."""
    seen: dict[str, dict[str, Any]] = {}
    for entry in load_jsonl("event_ws.jsonl"):
        event = entry["frame"].get("event") if isinstance(entry["frame"], dict) else None
        if not event or event.get("type") != "NEW_VERTEX_ACCEPTED" or event["data"]["version"] != 0:
            continue
        data = dict(event["data"])
        data["outputs"] = [dict(o, script=base64.b64decode(o["script"])) for o in data["outputs"]]
        seen.setdefault(data["hash"], data)
    return list(seen.values())


def stratum_jobs() -> list[dict[str, Any]]:
    """The node's own stratum jobs (params), sent to a rig subscribed with PRIVATENET_ADDRESS."""
    return [
        e["frame"]["params"]
        for e in load_jsonl("stratum.jsonl")
        if e["dir"] == "recv" and e["frame"].get("method") == "job"
    ]


def http_block_template() -> dict[str, Any]:
    """The body of the node's GET /v1a/get_block_template reply (a block at the node's clock)."""
    text = (TRANSCRIPTS / "http-get_block_template.txt").read_text(encoding="utf-8")
    return json.loads(text.split("\r\n\r\n", 1)[-1] if "\r\n\r\n" in text else text.split("\n\n", 1)[-1])
