"""The open-file limit: raised at start-up and logged; at the limit, connections are refused cleanly.

The proxy runs as `miningproxy run` in a child process whose soft and hard RLIMIT_NOFILE are both
lowered (so raising is not possible), against a dev node in this process.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import trio

from miningproxy.config import config_from_dict
from miningproxy.devnode.server import DevNode
from miningproxy.devnode.settings import DevNodeSettings
from miningproxy.limits import RESERVE, FileLimit, apply_open_file_limit, connection_budget
from tests.hathor_vectors import PRIVATENET_ADDRESS
from tests.test_e2e_devnet import http_get
from tests.test_hardening_support import ROOT, free_port
from tests.test_stratum_server import Client


def test_the_soft_limit_is_raised_to_the_hard_limit_and_logged():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)
    code = (
        "import logging, resource\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from miningproxy.limits import raise_open_file_limit\n"
        "limit = raise_open_file_limit()\n"
        "print(limit.before, limit.soft, limit.hard, resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard)),
    ).stdout.split()
    want = hard if hard != resource.RLIM_INFINITY else int(Path("/proc/sys/fs/nr_open").read_text())
    assert [int(x) for x in out] == [low, want, hard if hard != resource.RLIM_INFINITY else -1, want]


def test_max_connections_is_fitted_under_the_limit(caplog, monkeypatch):
    config = config_from_dict(
        {"upstream": {"nodes": ["http://127.0.0.1:9/v1a/"]}, "pool": {"address": PRIVATENET_ADDRESS}}
    )
    monkeypatch.setattr("miningproxy.limits.raise_open_file_limit", lambda: FileLimit(1024, 1024, 1024))
    caplog.set_level("INFO")
    fitted = apply_open_file_limit(config)
    assert fitted.stratum.max_connections == 1024 - RESERVE == connection_budget(FileLimit(1024, 1024, 1024))
    assert "refusing rigs beyond 960" in caplog.text and "open-file limit is 1024" in caplog.text
    monkeypatch.setattr("miningproxy.limits.raise_open_file_limit", lambda: FileLimit(1024, 65536, 65536))
    assert apply_open_file_limit(config) is config  # room for the configured 10,000 rigs


async def test_at_the_open_file_limit_rigs_are_refused_cleanly_and_the_proxy_survives(tmp_path):
    limit = 160
    budget = limit - RESERVE
    node = DevNode(DevNodeSettings(block_weight=12.0, min_block_weight=8.0))
    async with trio.open_nursery() as nursery:
        node_port = await nursery.start(node.serve, "127.0.0.1", 0)
        http_port, stratum_port = free_port(), free_port()
        config = tmp_path / "proxy.toml"
        config.write_text(
            f'[upstream]\nnodes = ["http://127.0.0.1:{node_port}/v1a/"]\nbackoff_initial = 0.1\n'
            f'[pool]\naddress = "{PRIVATENET_ADDRESS}"\n'
            f'[http]\nlisten = "127.0.0.1:{http_port}"\n'
            f'[stratum]\nlisten = "127.0.0.1:{stratum_port}"\nmax_per_ip = 1000\n'
            f'[events]\ndatabase = "{tmp_path / "events.sqlite3"}"\n'
        )
        log = tmp_path / "proxy.log"
        with open(log, "w") as out:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "miningproxy.cli", "run", "--config", str(config)],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)),
            )
        try:
            with trio.fail_after(60):
                while "miningproxy is running" not in log.read_text():
                    assert proc.poll() is None, log.read_text()
                    await trio.sleep(0.05)
            text = log.read_text()
            assert f"open-file limit is {limit} (hard limit {limit})" in text
            assert f"refusing rigs beyond {budget}" in text

            # More rigs than the limit allows: the extra ones are accepted, counted and closed.
            rigs = []
            with trio.fail_after(60):
                for _ in range(budget + 20):
                    rig = await Client.connect(stratum_port)
                    rigs.append(rig)
                for rig in rigs[:3]:
                    while (await rig.call("subscribe", {"address": PRIVATENET_ADDRESS})).get(
                        "result"
                    ) != "ok":
                        await trio.sleep(0.1)  # 10 node syncing until the network is known
                for rig in rigs[budget:]:
                    assert await rig.closed()
            status, metrics = await http_get(http_port, "/metrics")
            assert status == 200
            assert 'miningproxy_stratum_limit_hits_total{limit="max_connections"} 20.0' in metrics

            # Past the process's limit (idle HTTP connections take the reserve): accept() fails
            # with EMFILE, trio logs it and pauses accepting; nothing crashes.
            idle = []
            with trio.fail_after(60):
                while "EMFILE" not in log.read_text():
                    idle.append(await trio.open_tcp_stream("127.0.0.1", http_port))
                    if len(idle) % 10 == 0:
                        await trio.sleep(0.2)
                    assert len(idle) < 400
            assert proc.poll() is None
            for stream in idle + [rig.stream for rig in rigs]:
                await stream.aclose()

            # Room again: the same proxy serves HTTP and a new rig mines.
            with trio.fail_after(30):
                while True:
                    try:
                        status, body = await http_get(http_port, "/health")
                        break
                    except (OSError, trio.BrokenResourceError, ValueError, IndexError):
                        await trio.sleep(0.2)
                assert status == 200, body
                rig = await Client.connect(stratum_port)
                assert (await rig.subscribe())["job_id"]
                await rig.aclose()
            assert proc.poll() is None
            text = log.read_text()  # the only tracebacks are trio's EMFILE reports, nothing crashed
            assert text.count("Traceback") == text.count("accept returned EMFILE")
        finally:
            if proc.poll() is None:
                proc.terminate()
                with trio.move_on_after(20):
                    await proc.wait()
                if proc.poll() is None:
                    proc.kill()
        assert os.path.exists(tmp_path / "events.sqlite3")
        nursery.cancel_scope.cancel()
