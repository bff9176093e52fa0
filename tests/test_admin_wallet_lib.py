"""The real @hathor/wallet-lib against the proxy's /v1a/ws (optional: needs node and the package).

Run with ``WALLET_LIB_DIR=/path/containing/node_modules pytest --run-slow tests/test_admin_wallet_lib.py``
after ``npm install @hathor/wallet-lib`` in that directory. The wallet syncs its history by xpub
streaming through the proxy, then receives new blocks paying it as ``wallet:address_history``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import trio

from miningproxy.api.http import HttpRequest, HttpResponse
from miningproxy.hathor.addresses import decode_address
from miningproxy.hathor.networks import TESTNET
from miningproxy.hathor.xpub import parse_xpub
from tests.test_admin_ws import start_stack

WALLET_LIB_DIR = os.environ.get("WALLET_LIB_DIR", "")
SEED = (
    "upon tennis increase embark dismiss diamond monitor face magnet jungle scout salute rural master shoulder "
    "cry juice jeans radar present close meat antenna mind"
)
# The change-level xpub (m/44'/280'/0'/0) the wallet-lib derives from SEED, and so its address 1.
WALLET_XPUB = "xpub6EvdxHF4vBs38uFrs6UuN8Zu78LDoqLrskMffXk531wy7xMFb7X9Ntxb9dGL2kbYdKJ1d83dqAifQS2Wzcq2DxJf7HPDPvMZMtNQxyBzAWn"

SCRIPT = r"""
const { HathorWallet, Connection, HistorySyncMode } = require('@hathor/wallet-lib');
(async () => {
  const url = `http://127.0.0.1:${process.env.PORT}/v1a/`;
  const conn = new Connection({ network: 'privatenet', servers: [url], connectionTimeout: 5000, streamWindowSize: 4 });
  const wallet = new HathorWallet({ seed: process.env.SEED, connection: conn, password: '123', pinCode: '123' });
  wallet.setHistorySyncMode(HistorySyncMode.XPUB_STREAM_WS);
  const states = [];
  conn.on('state', s => states.push(s));
  const updates = [];
  wallet.on('new-tx', tx => updates.push(tx.tx_id));
  const out = {};
  try {
    await wallet.start();
    const t0 = Date.now();
    while (!wallet.isReady() && Date.now() - t0 < 20000) await new Promise(r => setTimeout(r, 100));
    out.ready = wallet.isReady();
    out.address1 = await wallet.getAddressAtIndex(1);
    out.synced = (await wallet.getTxHistory({ count: 50 })).map(t => t.txId);
    console.log('SYNCED');
    await new Promise(r => setTimeout(r, 8000));
    out.updates = updates;
    out.states = states;
    out.stillConnected = conn.getState ? conn.getState() : conn.state;
  } catch (e) { out.error = String(e && e.stack || e); }
  console.log('RESULT ' + JSON.stringify(out));
  await wallet.stop({ cleanStorage: true }).catch(() => {});
  process.exit(0);
})();
"""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not WALLET_LIB_DIR
        or not (Path(WALLET_LIB_DIR) / "node_modules" / "@hathor" / "wallet-lib").is_dir()
        or shutil.which("node") is None,
        reason="set WALLET_LIB_DIR to a directory with node_modules/@hathor/wallet-lib",
    ),
]


async def test_real_wallet_lib_streams_and_receives_history(nursery, tmp_path):
    stack = await start_stack(nursery)
    node = stack.node

    async def version(request: HttpRequest) -> HttpResponse:  # the wallet asks the server's version first
        return HttpResponse.json(node.version_json())

    stack.router.http("/v1a/version", version)
    address1 = parse_xpub(WALLET_XPUB).child(1).address(TESTNET)
    paid = [node.mine_block(script=decode_address(address1).script).hash_hex for _ in range(2)]
    script = tmp_path / "wallet.js"
    script.write_text(SCRIPT)
    env = {
        **os.environ,
        "PORT": str(stack.port),
        "SEED": SEED,
        "NODE_PATH": str(Path(WALLET_LIB_DIR) / "node_modules"),
    }
    later: list[str] = []

    async def mine_while_connected(started: trio.Event) -> None:
        await started.wait()
        for _ in range(3):
            await trio.sleep(1)
            later.append(node.mine_block(script=decode_address(address1).script).hash_hex)

    started = trio.Event()
    output = bytearray()

    async def run_wallet() -> None:
        proc = await trio.lowlevel.open_process(
            ["node", str(script)],
            cwd=WALLET_LIB_DIR,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            assert proc.stdout is not None
            async for chunk in proc.stdout:
                output.extend(chunk)
                if b"SYNCED" in output:
                    started.set()
        finally:
            with trio.CancelScope(shield=True):
                if proc.returncode is None:
                    proc.kill()
                await proc.wait()

    with trio.fail_after(60):
        async with trio.open_nursery() as inner:
            inner.start_soon(mine_while_connected, started)
            await run_wallet()
            started.set()
    line = next(x for x in output.decode().splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    assert "error" not in result, result
    assert result["ready"] is True and result["address1"] == address1
    assert set(paid) <= set(result["synced"])
    assert set(later) <= set(result["updates"])
    assert result["states"][-1] == 2  # CONNECTED, never dropped
