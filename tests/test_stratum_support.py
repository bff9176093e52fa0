"""Helpers for the Stratum tests (no tests here): a sans-IO pool, sessions, and nonce search."""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any

from hashing.header import HeaderHasher
from miningproxy.hathor.addresses import decode_address
from miningproxy.hathor.networks import network_for_name
from miningproxy.hathor.template import BlockTemplate
from miningproxy.pool.jobs import Generation, Job, JobFactory
from miningproxy.pool.shares import ShareResult, check_share
from miningproxy.pool.stats import MinerId, PoolStats
from miningproxy.stratum.session import Session
from miningproxy.stratum.settings import BanSettings, StratumSettings, VardiffSettings
from tests.hathor_vectors import PRIVATENET_ADDRESS, template_dicts

PRIVATENET = network_for_name("privatenet")
TEMPLATES = [BlockTemplate.from_json(t) for t in template_dicts()]
OTHER_TIP = next(t for t in TEMPLATES if t.parents[0] != TEMPLATES[0].parents[0])
# A second valid privatenet address (the genesis script's hash160 with one byte changed) and a mainnet one.
OTHER_ADDRESS = "WY6m6Wc7FNhgFGYk55eL8E1yhS2jP5UM9L"
MAINNET_ADDRESS = "HFrZvjeHQFB4jRMeCNwW9nngVVeZvxiEK5"

# Low weights: a share at weight 4 takes ~16 hashes to find.
FAST_VARDIFF = VardiffSettings(min_weight=1.0, max_weight=64.0, initial_weight=4.0)


def settings(**changes: Any) -> StratumSettings:
    vardiff = changes.pop("vardiff", FAST_VARDIFF)
    ban = changes.pop("ban", BanSettings())
    base = StratumSettings(
        listen=("127.0.0.1", 0), vardiff=vardiff, ban=ban, get_version=changes.pop("get_version", True)
    )
    return dataclasses.replace(base, **changes)


class FakePool:
    """PoolService's job and share API without trio: jobs from the real JobFactory, shares through
    the real check_share, time set by the test."""

    def __init__(self, *, address: str = PRIVATENET_ADDRESS) -> None:
        self.payout_script = decode_address(address).script
        self.jobs = JobFactory("t", payout_script=self.payout_script, wallclock=lambda: 1795814406)
        self.stats = PoolStats()
        self.now = 0.0
        self.shares: list[tuple[MinerId, Job, int, ShareResult]] = []
        self._seq = itertools.count(1)

    @property
    def generation(self) -> Generation | None:
        return self.jobs.generation

    @property
    def tip(self) -> bytes | None:
        generation = self.jobs.generation
        return generation.tip if generation else None

    def set_template(self, template: BlockTemplate = TEMPLATES[0]) -> Generation:
        generation = Generation(next(self._seq), template, "node-a", self.now)
        self.jobs.set_generation(generation)
        return generation

    def new_job(
        self,
        payout_script: bytes | None = None,
        share_weight: float = 0.0,
        clean: bool = False,
        now: float | None = None,
    ) -> Job:
        return self.jobs.new_job(payout_script, share_weight, self.now if now is None else now, clean)

    def judge_share(self, miner: MinerId, job: Job, nonce: int, now: float) -> ShareResult:
        result = check_share(job, nonce, self.tip)
        self.shares.append((miner, job, nonce, result))
        if not result.accepted:
            self.stats.rejected(miner, result.reason)
        return result

    def credit_shares(self, miner: MinerId, count: int, work: float, now: float) -> None:
        self.stats.accepted(miner, work, now, count)


def solve(header: bytes, weight: float, start: int = 0) -> int:
    """The first nonce from ``start`` whose hash meets ``weight``."""
    hasher = HeaderHasher(header)
    target = int(2 ** (256 - weight) - 1)
    return next(n for n in itertools.count(start) if int.from_bytes(hasher.hash_nonce(n), "big") < target)


def miss(header: bytes, weight: float, start: int = 0) -> int:
    """The first nonce from ``start`` whose hash does NOT meet ``weight``."""
    hasher = HeaderHasher(header)
    target = int(2 ** (256 - weight) - 1)
    return next(n for n in itertools.count(start) if int.from_bytes(hasher.hash_nonce(n), "big") >= target)


class Rig:
    """Drives a Session like a rig would: JSON in, parsed lines out."""

    def __init__(
        self, pool: FakePool | None = None, *, mode: str = "pool", now: float = 0.0, **changes: Any
    ) -> None:
        self.pool = pool or FakePool()
        self.session = Session(
            self.pool, settings(**changes), PRIVATENET, payout_mode=mode, peer="127.0.0.1:1", now=now
        )
        self.now = now
        self._ids = itertools.count(1)
        self.raw = b""

    def send(self, message: dict[str, Any] | str, now: float | None = None) -> list[dict[str, Any]]:
        if now is not None:
            self.now = self.pool.now = now
        text = message if isinstance(message, str) else json.dumps(message)
        self.session.receive_line(text, self.now)
        return self.read()

    def call(
        self, method: str, params: Any = None, msgid: Any = "next", now: float | None = None
    ) -> list[dict[str, Any]]:
        if msgid == "next":
            msgid = next(self._ids)
        return self.send({"jsonrpc": "2.0", "id": msgid, "method": method, "params": params}, now)

    def read(self) -> list[dict[str, Any]]:
        self.raw = self.session.data_to_send()
        return [json.loads(line) for line in self.raw.splitlines()]

    def tick(self, now: float) -> list[dict[str, Any]]:
        self.now = self.pool.now = now
        self.session.tick(now)
        return self.read()

    def subscribe(self, address: str | None = None, **kw: Any) -> list[dict[str, Any]]:
        return self.call("subscribe", {"address": address} if address else None, **kw)

    def submit(self, job_id: str, nonce: int | str, **kw: Any) -> list[dict[str, Any]]:
        return self.call(
            "submit", {"job_id": job_id, "nonce": nonce if isinstance(nonce, str) else f"{nonce:032x}"}, **kw
        )


def jobs(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line["params"] for line in lines if line.get("method") == "job"]
