"""Mixed versions in one cluster: three ``kerna node`` processes on a real etcd, each on
its own version of an application's message module (tests/evolution/v1, v2, v3:
``evo_msgs``). The two compatible versions (v1, v2) serve each other's asks; the
incompatible one (v3: the reply type of ``Quote`` changed) is reported (``kerna
status``, the admin API's ``schema_mismatches``, a log line naming the tag) and an
ask answered across that boundary fails with an error that names the tag and what went
wrong, never with a value decoded into defaults."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from kerna import AgentId, Rendezvous
from kerna.testing import EtcdMember

from .cluster import SECRET, cluster_name
from .node_proc import NodeProcess, run_cli
from .test_node_daemon import call

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
VERSIONS = {"m1": "v1", "m2": "v2", "m3": "v3"}
CONFIG = """
[node]
cluster = "{cluster}"
id = "{id}"
agents = ["tests.evo_desk"]
lease_ttl = 2.0
stop_grace = 1.0
ask_timeout = 5.0
[state]
url = "{etcd}"
[transport]
url = "tcp://127.0.0.1:0"
secret_file = "secret"
[http]
listen = "127.0.0.1:{{port}}"
"""


def _node(root: Path, etcd: EtcdMember, cluster: str, node_id: str) -> NodeProcess:
    folder = root / node_id
    folder.mkdir()
    (folder / "secret").write_bytes(SECRET + b"\n")
    path = f"{ROOT / 'tests' / 'evolution' / VERSIONS[node_id]}{os.pathsep}{ROOT}"
    return NodeProcess(
        folder, CONFIG.format(cluster=cluster, id=node_id, etcd=etcd.url), {"PYTHONPATH": path}
    )


def _key_on(node_id: str) -> str:
    """A Desk key whose home is ``node_id`` (every node hosts Desk)."""
    return next(
        k
        for k in (f"d{i}" for i in range(1000))
        if Rendezvous().choose(AgentId("Desk", k), sorted(VERSIONS)) == node_id
    )


async def _ask(node: NodeProcess, key: str) -> tuple[int, Any]:
    body = {"agent_type": "Desk", "key": key, "message": {"type": "evo.Quote", "symbol": "X"}}
    return await call(node.url + "/admin/ask", "POST", body)


async def test_compatible_versions_serve_each_other_and_an_incompatible_one_is_reported(
    etcd_server: EtcdMember, tmp_path: Path
) -> None:
    cluster = cluster_name()
    procs = {i: _node(tmp_path, etcd_server, cluster, i) for i in VERSIONS}
    try:
        await asyncio.gather(*(p.start() for p in procs.values()))
        m1, m2, m3 = procs["m1"], procs["m2"], procs["m3"]
        # Every node's own view holds the three (routing follows it); another process's
        # view is seen only by asking it: polled, bounded.
        async with asyncio.timeout(10):
            for proc in procs.values():
                while len((await call(proc.url + "/admin/status"))[1]["members"]) < 3:  # noqa: ASYNC110 - another process's view: only asking shows it
                    await asyncio.sleep(0.05)
        # v1 and v2 serve each other: each reads the other's reply as its own version
        assert await _ask(m1, _key_on("m2")) == (
            200, {"reply": {"type": "evo.Price", "value": 2.5}}
        )  # fmt: skip
        assert await _ask(m2, _key_on("m1")) == (
            200, {"reply": {"type": "evo.Price", "value": 1.5, "currency": "EUR"}}
        )  # fmt: skip
        # v3's reply to v1's ask does not decode on v1: a clear error, not a default
        status, body = await _ask(m1, _key_on("m3"))
        assert status == 500, body
        assert body["error"] == "WireError", body
        assert "evo.Quote" in body["message"], body
        assert "bad_payload" in body["message"], body
        # reported: status (admin API and CLI) and the log, naming the tags that differ
        m3_address = await _address(m3)
        mismatches = (await call(m1.url + "/admin/status"))[1]["schema_mismatches"]
        # (v3 knows no evo.Price: its Quote replies with an int. v2 differs from v1
        # only compatibly, by fields added with defaults: not a mismatch.)
        assert mismatches[m3_address] == ["evo.Quote"], mismatches
        assert await _address(m2) not in mismatches, mismatches
        code, out, _ = await run_cli("status", "--node", m1.url)
        assert code == 0
        assert f"schema mismatch with {m3_address}: evo.Quote" in out
        logged = await m1.line(
            f"schema of 'evo.Quote' is incompatible between this node and {m3_address}: ",
            prefix=True,
        )
        assert logged["level"] == "WARNING"
        assert "evo.Quote: " in logged["message"]  # what breaks, as kerna schema check says
    finally:
        for proc in procs.values():
            await proc.kill()


async def _address(node: NodeProcess) -> str:
    status = (await call(node.url + "/admin/status"))[1]
    address: str = status["address"]
    return address
