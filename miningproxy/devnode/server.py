"""The dev node's network face: /v1a/mining_ws, /v1a/ws, /v1a/event_ws, /v1a/event, /v1a/version and
/v1a/status on one HTTP port.

The mining websocket behaves as a real node's (see protocol/HATHOR.md and the transcripts):
``mining.notify`` on connect and after every new best block (to every client), ``mining.refresh``,
``mining.submit`` (named or positional params) answering ``true``/``false``, and the fatal
``-32603 Internal error`` + close for an invalid block. ``optimistic: true`` follows
``DevNodeSettings.optimistic``. The close after a fatal error carries no status code (the client
sees 1005), as the node's autobahn ``sendClose()`` does. The admin websocket ``/v1a/ws`` lives in
admin.py (``DevNode.admin``), the event queue (``/v1a/event_ws``, ``GET /v1a/event``) in events.py
(``DevNode.events``).

Test hooks live on :class:`DevNode`: ``chain`` (read blocks), ``set_time_source``, ``syncing``,
``optimistic``, ``force_submit_failure``, ``mine_block`` (a block found elsewhere), ``reorg`` (a
heavier branch found elsewhere), ``disconnect_all``, ``wait_for_height`` and the ``submissions`` log.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import trio
import trio_websocket
from wsproto.frame_protocol import CloseReason

from miningproxy.api.http import HttpRequest, HttpResponse, Router, serve_http
from miningproxy.devnode import miner, rpc
from miningproxy.devnode.admin import ADMIN_WS_PATH, DevAdmin
from miningproxy.devnode.chain import (
    ChainBlock,
    ChainChange,
    ChainRules,
    DevChain,
    SubmitResult,
    SubmitStatus,
)
from miningproxy.devnode.events import DevEvents
from miningproxy.devnode.genesis import make_genesis
from miningproxy.devnode.settings import DevNodeSettings

log = logging.getLogger(__name__)

MINING_WS_PATH = "/v1a/mining_ws"
VERSION_PATH = "/v1a/version"
STATUS_PATH = "/v1a/status"
OUTBOX_SIZE = 64  # messages queued for one client; a client that lets it fill up is cut off
CLOSE_TIMEOUT = 5.0
BEST_BLOCKCHAIN_BLOCKS = 10
NODE_CONTENT_TYPE = "application/json; charset=utf-8"
CORS_HEADERS = (
    ("access-control-allow-origin", "*"),
    ("access-control-allow-methods", "GET"),
    ("access-control-allow-headers", "x-prototype-version,x-requested-with,content-type"),
    ("access-control-max-age", "604800"),
)

FailureMode = Literal["internal_error", "false", "silent", "close"]
FAILURE_MODES: tuple[str, ...] = ("internal_error", "false", "silent", "close")


class OptimisticBroken(AttributeError):
    """What every node release raises after storing an optimistic block (``self.manager`` is unset
    on the protocol object), answered as the fatal Internal error."""


@dataclass(frozen=True)
class Submission:
    """One ``mining.submit`` the node received (test hook: ``DevNode.submissions``)."""

    hexdata: str
    optimistic: bool
    status: str  # a SubmitStatus value, or "forced:<mode>", or "syncing"
    reason: str
    block_hash: str | None


_CLOSE = object()  # outbox sentinel: close the websocket (no status code) after what is queued


class _MiningSession:
    """One /v1a/mining_ws client: a reader running the RPC core and one writer draining the outbox."""

    def __init__(self, node: DevNode, ws: trio_websocket.WebSocketConnection, peer: str) -> None:
        self.node = node
        self.ws = ws
        self.peer = peer
        self._send, self._receive = trio.open_memory_channel[Any](OUTBOX_SIZE)
        self._scope = trio.CancelScope()
        self.closing = False

    def push(self, message: Any) -> None:
        if self.closing:
            return
        if message is _CLOSE:
            self.closing = True
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            log.warning("devnode: mining client %s is not reading; disconnecting it", self.peer)
            self.closing = True
            self._scope.cancel()

    def close(self) -> None:
        """Close after what is already queued (the node dropping a connection)."""
        self.push(_CLOSE)

    async def run(self) -> None:
        with self._scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_all, nursery.cancel_scope)
                try:
                    await self._read_all()
                except trio_websocket.ConnectionClosed:
                    nursery.cancel_scope.cancel()

    async def _read_all(self) -> None:
        while not self.closing:
            payload = await self.ws.get_message()
            outcome = rpc.handle_payload(payload, self.node._rpc_methods(self))
            for error in outcome.errors:
                log.info("devnode: mining client %s: %s", self.peer, error)
            for message in outcome.messages:
                self.push(message)
            if outcome.close:
                self.push(_CLOSE)
            # After the replies, so a submitter sees ``true`` before the new template.
            self.node.broadcast_if_changed()

    async def _write_all(self, scope: trio.CancelScope) -> None:
        try:
            async for message in self._receive:
                if message is _CLOSE:
                    with trio.move_on_after(CLOSE_TIMEOUT):
                        await self.ws.aclose(CloseReason.NO_STATUS_RCVD)
                    break
                await self.ws.send_message(rpc.encode(message))
        except trio_websocket.ConnectionClosed:
            pass
        scope.cancel()


class DevNode:
    """The embedded node: a :class:`DevChain` plus its mining websocket clients and test hooks."""

    def __init__(
        self, settings: DevNodeSettings | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings or DevNodeSettings()
        s = self.settings
        self.genesis = make_genesis(s.genesis_timestamp, block_weight=s.genesis_block_weight)
        rules = ChainRules(
            block_weight=s.block_weight,
            min_block_weight=s.min_block_weight,
            weight_decay_seconds=s.weight_decay_seconds,
            reward=s.reward,
        )
        self.chain = DevChain(self.genesis, rules)
        self.clock = clock
        self.optimistic: str = s.optimistic  # test hook: switch at run time
        self.syncing = False  # test hook: a node that cannot mine yet (no notify, refresh [], submit false)
        self.submissions: list[Submission] = []
        self._forced: deque[str] = deque()
        self._sessions: set[_MiningSession] = set()
        self._last_broadcast_tip = self.chain.tip.hash
        self._tip_changed = trio.Event()
        self._started_at: float | None = None
        self._reorgs = 0
        self.admin = DevAdmin(self)  # /v1a/ws
        # /v1a/event_ws and /v1a/event; event timestamps follow the node's clock, as the node's reactor's do.
        self.events = DevEvents(
            self.genesis,
            get_block=self.chain.get,
            network=s.network,
            peer_id=s.peer_id,
            enabled=s.event_queue,
            clock=lambda: float(self.clock()),
        )

    # -- test hooks ----------------------------------------------------------------------------
    def set_time_source(self, clock: Callable[[], float]) -> None:
        """Wall-clock seconds used for chain timestamps (templates' timestamp_now, future checks)."""
        self.clock = clock

    def now(self) -> int:
        return int(self.clock())

    @property
    def tip(self) -> ChainBlock:
        return self.chain.tip

    @property
    def connections(self) -> int:
        """Open /v1a/mining_ws clients that receive notifications."""
        return len(self._sessions)

    def force_submit_failure(self, mode: FailureMode, count: int = 1) -> None:
        """Make the next ``count`` submits fail regardless of the block, without storing it:
        "internal_error" (fatal -32603 + close), "false" (result false), "silent" (no reply at all),
        "close" (the socket is closed without a reply)."""
        if mode not in FAILURE_MODES:
            raise ValueError(f"failure mode must be one of {', '.join(FAILURE_MODES)}, got {mode!r}")
        self._forced.extend([mode] * count)

    def mine_block(self, *, script: bytes = b"", timestamp: int | None = None) -> ChainBlock:
        """Mine and store a block on the tip, as if another miner found it; notifies every client."""
        template = self.chain.template_json(self.now())
        if template is None:
            raise RuntimeError("no valid timestamp for a block on the tip at the current time")
        result = self.chain.submit(
            miner.mine_template(template, script=script, timestamp=timestamp), self.now()
        )
        if not result.accepted or result.block is None:
            raise RuntimeError(f"the dev node refused its own block: {result.reason}")
        self._on_new_tip(result.block)
        self.broadcast_if_changed()
        return result.block

    def reorg(self, depth: int, new_blocks: int, *, script: bytes = b"") -> list[ChainBlock]:
        """Test hook: a heavier branch, found elsewhere, takes over the best chain.

        Mines ``new_blocks`` blocks (at ``block_weight``, paying ``script``) on the best-chain block
        ``depth`` below the tip and stores them one at a time, as blocks relayed by a peer: while the
        branch does not outweigh the best chain its blocks sit on a side chain (voided), the block
        that outweighs it wins a reorg (the best chain's top ``depth`` blocks are orphaned), the rest
        extend the new best chain. The event queue records every step (a REORG_STARTED ..
        REORG_FINISHED group with its own group_id), the admin websocket learns the orphaned and the
        new best blocks, and mining clients get one ``mining.notify`` for the new tip.
        Returns the branch, oldest first. ``new_blocks`` must exceed ``depth``.
        """
        tip = self.chain.tip
        if not 1 <= depth <= tip.height:
            raise ValueError(f"reorg depth must be 1..{tip.height} (the tip's height), got {depth}")
        if new_blocks <= depth:
            raise ValueError(f"a reorg needs more new blocks than its depth ({depth}), got {new_blocks}")
        fork = self.chain.blocks[tip.height - depth]
        weight = float(self.chain.rules.block_weight)
        score = self.chain.branch_score(fork, [weight] * new_blocks)
        if score <= tip.score:
            raise ValueError(
                f"{new_blocks} blocks of weight {weight:g} on height {fork.height} would not outweigh the "
                f"best chain (score {score} <= {tip.score})"
            )
        self._reorgs += 1
        tag = f"devnode reorg {self._reorgs}".encode()
        branch: list[ChainBlock] = []
        parent = fork
        for _ in range(new_blocks):
            template = self.chain.template_json(self.now(), parent)
            if template is None:
                raise RuntimeError(f"no valid timestamp for a block on {parent.hash_hex} at the current time")
            data = miner.mine_template(template, script=script, data=tag, weight=weight)
            change = self.chain.add_block(data, self.now())
            self._on_change(change)
            branch.append(change.block)
            parent = change.block
        self.broadcast_if_changed()
        return branch

    def disconnect_all(self) -> None:
        """Close every mining websocket (as a restarting node would)."""
        for session in list(self._sessions):
            session.close()

    async def wait_for_height(self, height: int) -> ChainBlock:
        while self.chain.height < height:
            await self._tip_changed.wait()
        return self.chain.blocks[height]

    # -- node behaviour ------------------------------------------------------------------------
    def templates_json(self) -> list[dict[str, Any]]:
        return self.chain.templates_json(self.now())

    def broadcast_if_changed(self) -> None:
        """Push ``mining.notify`` to every client when the best block changed since the last push."""
        if self.syncing or self.chain.tip.hash == self._last_broadcast_tip:
            return
        self._last_broadcast_tip = self.chain.tip.hash
        message = rpc.notification("mining.notify", self.templates_json())
        for session in list(self._sessions):
            session.push(message)

    def _on_new_tip(self, block: ChainBlock) -> None:
        """A block extending the best chain was stored."""
        log.info("devnode: new best block %s at height %d", block.hash_hex, block.height)
        self.events.on_block(block)
        self.admin.on_new_block(block)
        self._tip_changed.set()
        self._tip_changed = trio.Event()

    def _on_change(self, change: ChainChange) -> None:
        """A block from anywhere was stored: a side block, a new tip, or the winner of a reorg."""
        if not change.best:
            log.info("devnode: side-chain block %s at height %d", change.block.hash_hex, change.block.height)
            self.events.on_block(change.block)
            return
        if not change.is_reorg:
            self._on_new_tip(change.block)
            return
        log.info(
            "devnode: reorg: %d block(s) orphaned, new best block %s at height %d",
            len(change.orphaned),
            change.block.hash_hex,
            change.block.height,
        )
        self.events.on_block(change.block)
        self.admin.on_orphaned(change.orphaned)
        for block in change.joined:
            self.admin.on_new_block(block)
        self._tip_changed.set()
        self._tip_changed = trio.Event()

    def _rpc_methods(self, session: _MiningSession) -> dict[str, Callable[..., Any]]:
        def mining_refresh() -> list[dict[str, Any]]:
            return [] if self.syncing else self.templates_json()

        def mining_submit(hexdata: str, optimistic: bool = False) -> bool | dict[str, Any]:
            return self._submit(session, hexdata, optimistic)

        return {"mining_refresh": mining_refresh, "mining_submit": mining_submit}

    def _record(
        self, hexdata: Any, optimistic: Any, status: str, reason: str, block_hash: bytes | None
    ) -> None:
        self.submissions.append(
            Submission(
                str(hexdata), bool(optimistic), status, reason, block_hash.hex() if block_hash else None
            )
        )

    def _submit(self, session: _MiningSession, hexdata: str, optimistic: Any) -> bool | dict[str, Any]:
        if self._forced:
            mode = self._forced.popleft()
            self._record(hexdata, optimistic, f"forced:{mode}", "forced by test hook", None)
            if mode == "internal_error":
                raise RuntimeError("forced internal error")
            if mode == "silent":
                raise rpc.NoReply()
            if mode == "close":
                session.close()
                raise rpc.NoReply()
            return False
        if self.syncing:
            self._record(hexdata, optimistic, "syncing", "node syncing", None)
            return False
        data = bytes.fromhex(
            hexdata
        )  # TypeError -> Invalid params, ValueError -> Internal error, as the node
        result: SubmitResult = self.chain.submit(data, self.now())
        self._record(hexdata, optimistic, result.status.value, result.reason, result.block_hash)
        if result.status is SubmitStatus.INVALID:
            log.info("devnode: rejected block: %s", result.reason)
            raise ValueError(result.reason)
        if not result.accepted or result.block is None:
            return False
        self._on_new_tip(result.block)
        if optimistic:
            if self.optimistic == "broken":
                raise OptimisticBroken("'MiningWebsocketProtocol' object has no attribute 'manager'")
            template = self.chain.template_json(self.now(), result.block)
            return template if template is not None else True
        return True

    # -- HTTP ----------------------------------------------------------------------------------
    def router(self) -> Router:
        router = Router()
        router.websocket(MINING_WS_PATH, self._mining_ws)
        router.websocket(ADMIN_WS_PATH, self.admin.handler)
        router.http(VERSION_PATH, self._version)
        router.http(STATUS_PATH, self._status)
        self.events.add_routes(router)
        return router

    async def _mining_ws(self, ws: trio_websocket.WebSocketConnection, request: HttpRequest) -> None:
        session = _MiningSession(self, ws, request.peer)
        if not self.syncing:
            session.push(rpc.notification("mining.notify", self.templates_json()))
        self._sessions.add(session)
        try:
            await session.run()
        finally:
            self._sessions.discard(session)

    def version_json(self) -> dict[str, Any]:
        return {
            "version": self.settings.version,
            "network": self.settings.network,
            "nano_contracts_enabled": False,
            "min_weight": 1,
            "min_tx_weight": 1,
            "min_tx_weight_coefficient": 0.0,
            "min_tx_weight_k": 0,
            "token_deposit_percentage": 0.01,
            "reward_spend_min_blocks": 1,
            "max_number_inputs": 255,
            "max_number_outputs": 255,
            "decimal_places": 2,
            "genesis_block_hash": self.genesis.block_hash.hex(),
            "genesis_tx1_hash": self.genesis.tx1.hash.hex(),
            "genesis_tx2_hash": self.genesis.tx2.hash.hex(),
            "native_token": {"name": "Hathor", "symbol": "HTR"},
        }

    def status_json(self) -> dict[str, Any]:
        tip = self.chain.tip
        uptime = 0.0 if self._started_at is None else trio.current_time() - self._started_at
        return {
            "server": {
                "id": self.settings.peer_id,
                "app_version": f"Hathor v{self.settings.version}",
                "state": "SYNCING" if self.syncing else "READY",
                "network": self.settings.network,
                "uptime": uptime,
                "entrypoints": [],
            },
            "peers_whitelist": [],
            "known_peers": [],
            "connections": {"connected_peers": [], "handshaking_peers": [], "connecting_peers": []},
            "dag": {
                "first_timestamp": self.chain.first_timestamp,
                "latest_timestamp": self.chain.latest_timestamp,
                "best_block_tips": [{"hash": tip.hash_hex, "height": tip.height}],
                "best_block": {"hash": tip.hash_hex, "height": tip.height},
                "best_blockchain": [
                    [b.height, b.hash_hex] for b in self.chain.best_blockchain(BEST_BLOCKCHAIN_BLOCKS)
                ],
            },
        }

    async def _version(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse.json(self.version_json(), content_type=NODE_CONTENT_TYPE, headers=CORS_HEADERS)

    async def _status(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse.json(self.status_json(), content_type=NODE_CONTENT_TYPE, headers=CORS_HEADERS)

    async def serve(
        self, host: str | None, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled; ``task_status.started`` gets the bound port."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.admin.run)
            listeners = await nursery.start(partial(serve_http, self.router(), host, port))
            self._started_at = trio.current_time()
            bound = listeners[0].socket.getsockname()[1]
            log.info(
                "devnode: %s (%s) listening on port %d",
                self.settings.network,
                self.genesis.block_hash.hex(),
                bound,
            )
            task_status.started(bound)


async def serve_devnode(
    settings: DevNodeSettings,
    host: str | None,
    port: int,
    *,
    node: DevNode | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a dev node (``node``, or a new one from ``settings``); ``task_status.started(port)``."""
    await (node or DevNode(settings)).serve(host, port, task_status=task_status)
