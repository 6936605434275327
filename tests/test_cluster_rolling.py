"""A rolling restart under load: three ``kerna node`` processes on a real etcd, each
stopped with SIGTERM and started again, one at a time, while a fourth node (this
process, hosting nothing) keeps a steady ask load on stateful counters
(tests/cluster_load.py). Every ask either succeeds or fails with a clear error; the
success rate is recorded (target 100%, at least 99.9%), and each counter's final value
is >= its acknowledged increments and <= those sent."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from kerna import Kernel, Member
from kerna.testing import EtcdMember

from .cluster import SECRET, cluster_name, nodes
from .cluster_agents import Ledger, Total
from .cluster_load import SteadyLoad
from .node_proc import NodeProcess

pytestmark = pytest.mark.anyio

IDS = ["r1", "r2", "r3"]
CONFIG = """
[node]
cluster = "{cluster}"
id = "{id}"
agents = ["tests.cluster_agents"]
lease_ttl = 2.0
stop_grace = 3.0
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
    folder.mkdir(exist_ok=True)
    (folder / "secret").write_bytes(SECRET + b"\n")
    return NodeProcess(folder, CONFIG.format(cluster=cluster, id=node_id, etcd=etcd.url))


def _hosting_ledger(ids: set[str]) -> Callable[[list[Member]], bool]:
    return lambda ms: {m.id for m in ms if "Ledger" in m.types} == ids


async def rolling_restart(etcd: EtcdMember, root: Path) -> tuple[SteadyLoad, dict[str, int]]:
    """Restart every node once under load; the load and each counter's final value."""
    cluster = cluster_name()
    procs = {i: _node(root, etcd, cluster, i) for i in IDS}
    try:
        await asyncio.gather(*(p.start() for p in procs.values()))
        async with nodes(etcd, 1, cluster=cluster, ids=["client"]) as (client,):
            await client.wait_members(_hosting_ledger(set(IDS)), 10)
            keys = [f"ctr-{i}" for i in range(6)]
            load = SteadyLoad([client], "Ledger", keys, timeout=5.0)
            load.start()
            try:
                await load.wait_acked(3, timeout=15)
                for node_id in IDS:
                    assert await procs[node_id].stop() == 0  # SIGTERM: drains, exits 0
                    procs[node_id] = _node(root, etcd, cluster, node_id)
                    await procs[node_id].start()
                    await client.wait_members(_hosting_ledger(set(IDS)), 10)
                    acked = min(load.acked[key] for key in keys)
                    await load.wait_acked(acked + 2, timeout=15)  # served again, all keys
            finally:
                await load.stop()
            final = {key: await _total(client, key) for key in keys}
            return load, final
    finally:
        for proc in procs.values():
            await proc.kill()


async def _total(client: Kernel, key: str) -> int:
    total: int = await client.ref(Ledger, key).ask(Total(), timeout=10)
    return total


async def test_a_rolling_restart_under_steady_asks_loses_no_acknowledged_increment(
    etcd_server: EtcdMember, tmp_path: Path
) -> None:
    load, final = await rolling_restart(etcd_server, tmp_path)
    print(f"rolling restart: {load.total_acked}/{load.total_sent} asks succeeded "
          f"({load.success_rate:.4%}); errors: {load.describe_errors() or 'none'}")  # fmt: skip
    for key, value in final.items():
        assert load.acked[key] <= value <= load.sent[key], (key, value, load.acked, load.sent)
    # Every ask fails, if at all, with a clear error; none is refused by a draining
    # node (a graceful stop hands them on: "handled or re-routed, never dropped").
    refused = load.examples.get("RemoteError", "")
    assert "kernel is stopping" not in refused, load.describe_errors()
    assert load.success_rate >= 0.999, load.describe_errors()
