"""Replay the rig's side of a real node's Stratum transcript against the session.

The node's own jobs cannot be reproduced (other header, other job ids), so the replay maps the
node's job ids to ours and re-solves nonces for our headers; what must match is every reply's
shape: the same members with the same JSON types, the same error codes and messages, and the
exact values where they do not depend on the header (results, targets, which job is current).
"""

from __future__ import annotations

from typing import Any

from tests.hathor_vectors import load_jsonl
from tests.test_stratum_support import OTHER_TIP, TEMPLATES, Rig, miss, solve


def connections() -> list[list[dict[str, Any]]]:
    """The transcript split into connections (each starts with a "connected" info frame)."""
    out: list[list[dict[str, Any]]] = []
    for entry in load_jsonl("stratum.jsonl"):
        if entry["dir"] == "info" and "connected" in entry["frame"]:
            out.append([])
        elif entry["dir"] in ("send", "recv"):
            out[-1].append(entry)
    return out


def same_shape(ours: Any, theirs: Any, path: str = "") -> None:
    assert type(ours) is type(theirs), f"{path}: {type(ours).__name__} vs the node's {type(theirs).__name__}"
    if isinstance(theirs, dict):
        missing = set(theirs) - set(ours)
        assert not missing, f"{path}: missing {missing}"
        for key in theirs:
            same_shape(ours[key], theirs[key], f"{path}.{key}")
    elif isinstance(theirs, str) and all(c in "0123456789abcdef" for c in theirs):
        assert len(ours) == len(theirs), f"{path}: {ours!r} vs the node's {theirs!r}"


def test_replayed_rig_frames_get_replies_shaped_like_the_nodes():
    conn = connections()[1]  # the rig that subscribes with an address
    rig = Rig(vardiff=_weight(8.0), get_version=False)
    rig.pool.set_template()
    job_ids: dict[str, dict[str, Any]] = {}  # the node's job id -> our job params
    pending: list[dict[str, Any]] = []  # our lines not yet matched with the node's
    solved: dict[str, int] = {}
    generated: set[int] = set()  # indexes of the node's jobs we already made ours for
    parent = [TEMPLATES[0].parents[0].hex()]

    def follow(index: int) -> None:
        """The node sent a job of its own accord (a new tip, or a refresh): so do we."""
        generated.add(index)
        if conn[index]["frame"]["params"]["parent_hash"] != parent[0]:
            parent[0] = conn[index]["frame"]["params"]["parent_hash"]
            rig.pool.set_template(OTHER_TIP)
            rig.session.new_work(True, 1.0)
        else:
            rig.session.new_work(False, 1.0)
        pending.extend(rig.read())

    for i, entry in enumerate(conn):
        frame = entry["frame"]
        if entry["dir"] == "send":
            # jobs the node sent before answering this request were not caused by it: make ours first
            for j in range(i + 1, len(conn)):
                later = conn[j]
                if (
                    later["dir"] == "recv"
                    and "method" not in later["frame"]
                    and later["frame"].get("id") == frame["id"]
                ):
                    break
                if later["dir"] == "recv" and later["frame"].get("method") == "job" and i > 0:
                    follow(j)
            params = frame["params"]
            if frame["method"] == "submit":
                ours = job_ids[params["job_id"]]
                header = bytes.fromhex(ours["data"])
                answer = _reply_to(conn[i + 1 :], frame["id"])
                if answer.get("error") and answer["error"]["code"] == 30:
                    nonce = miss(header, ours["weight"])
                else:
                    nonce = solved.setdefault(ours["job_id"], solve(header, ours["weight"]))
                params = {**params, "job_id": ours["job_id"], "nonce": f"{nonce:032x}"}
            pending += rig.send({**frame, "params": params})
            continue
        theirs = frame
        if (
            theirs.get("method") == "job"
            and i not in generated
            and not any(line.get("method") == "job" for line in pending)
        ):
            follow(i)
        ours = _take_matching(pending, theirs)
        same_shape(ours, theirs)
        if theirs.get("method") == "job":
            job_ids[theirs["params"]["job_id"]] = ours["params"]
            assert (
                type(ours["params"]["weight"]) is float
                and ours["params"]["weight"] == theirs["params"]["weight"]
            )
        elif "result" in theirs:
            assert ours == theirs
        else:
            assert ours["error"] == theirs["error"] and ours["id"] == theirs["id"]
            if theirs["error"]["code"] == 30:
                assert ours["data"]["target"] == theirs["data"]["target"]
            if theirs["error"]["code"] == 31:
                assert ours["data"]["job_id"] == job_ids[theirs["data"]["job_id"]]["job_id"]
                assert ours["data"]["current_job"] == job_ids[theirs["data"]["current_job"]]["job_id"]
    assert pending == []


def test_a_rig_without_address_gets_the_nodes_unprompted_error_shape_in_solo_mode():
    conn = connections()[0]
    rig = Rig(mode="solo", authorize_timeout=5.0)
    rig.pool.set_template()
    ours = rig.send(conn[0]["frame"]) + rig.tick(5.0)
    theirs = [entry["frame"] for entry in conn[1:]]
    assert ours[0] == theirs[0]  # {"result": "ok", "error": null, "id": 1}
    same_shape(ours[1], theirs[1])  # an error with data and no id...
    assert set(ours[1]) == set(theirs[1]) == {"error", "data"}
    assert ours[1]["error"]["code"] == 22  # ...but the brief's code for "no valid address"
    assert rig.session.close_reason is not None  # the node closed too


def test_a_rig_without_address_mines_for_the_pool_in_pool_mode():
    conn = connections()[0]
    rig = Rig()
    rig.pool.set_template()
    ours = rig.send(conn[0]["frame"])
    assert ours[0] == conn[1]["frame"] and ours[1]["method"] == "job"


def _weight(weight: float):
    from miningproxy.stratum.settings import VardiffSettings

    return VardiffSettings(min_weight=weight, max_weight=weight, initial_weight=weight)


def _reply_to(entries: list[dict[str, Any]], msgid: Any) -> dict[str, Any]:
    return next(
        e["frame"]
        for e in entries
        if e["dir"] == "recv" and "method" not in e["frame"] and e["frame"].get("id") == msgid
    )


def _last_parent(job_ids: dict[str, dict[str, Any]]) -> str:
    return list(job_ids.values())[-1]["parent_hash"] if job_ids else ""


def _take_matching(pending: list[dict[str, Any]], theirs: dict[str, Any]) -> dict[str, Any]:
    """Our line answering the same thing as the node's: a job for a job, a reply by id."""
    for i, line in enumerate(pending):
        if ("method" in theirs and line.get("method") == theirs["method"]) or (
            "method" not in theirs and "method" not in line and line.get("id") == theirs.get("id")
        ):
            return pending.pop(i)
    raise AssertionError(f"no reply like the node's {theirs} among {pending}")
