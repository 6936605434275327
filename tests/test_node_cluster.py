"""Two ``kerna node`` processes on one real etcd: each lists the members in its status,
``kerna status`` and ``/metrics``, and ``/readyz`` passes only while the node's own
member record is the one the cluster sees under its id, and only while the node holds
the live lease that record was written under."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from kerna import Kernel, Member
from kerna.node import NodeHttp, load_config
from kerna.state import Put, connect
from kerna.testing import EtcdMember

from .cluster import SECRET as CLUSTER_SECRET
from .cluster import TCP, cluster_name
from .faulty import FaultyBackend
from .node_proc import NodeProcess, run_cli
from .test_node_daemon import BASE, SECRET, call

pytestmark = pytest.mark.anyio


def config(etcd: EtcdMember, cluster: str, node_id: str) -> str:
    return (
        BASE.replace('"memory://"', f'"{etcd.url}"')
        .replace('cluster = "shop"', f'cluster = "{cluster}"')
        .replace('id = "n1"', f'id = "{node_id}"')
        .replace("stop_grace = 8", "stop_grace = 1\nlease_ttl = 2")
    )


async def until(condition: Any, timeout: float = 10.0) -> None:
    """Ask ``condition()`` (an async predicate over a process's HTTP answers: nothing
    in this process can wait on another's view) until it holds, bounded."""
    async with asyncio.timeout(timeout):
        while not await condition():  # noqa: ASYNC110 - another process's state
            await asyncio.sleep(0.05)


@pytest.fixture
async def pair(tmp_path: Path, etcd_server: EtcdMember) -> AsyncIterator[list[NodeProcess]]:
    cluster = f"c{uuid.uuid4().hex[:10]}"
    procs = []
    try:
        for node_id in ("n1", "n2"):
            root = tmp_path / node_id
            root.mkdir()
            (root / "secret").write_text(SECRET + "\n")
            proc = NodeProcess(root, config(etcd_server, cluster, node_id))
            procs.append(proc)
            await proc.start()
        yield procs
    finally:
        for proc in procs:
            if proc.proc is not None:
                assert await proc.stop() == 0


async def test_two_nodes_list_each_other_in_status_metrics_and_the_cli(
    pair: list[NodeProcess],
) -> None:
    async def both_listed() -> bool:
        for proc in pair:
            _, body = await call(proc.url + "/admin/status")
            if {m["id"] for m in body["members"]} != {"n1", "n2"}:
                return False
        return True

    await until(both_listed)
    statuses = [(await call(proc.url + "/admin/status"))[1] for proc in pair]
    addresses = {s["node"]: s["address"] for s in statuses}
    for body in statuses:
        for member in body["members"]:
            assert member["address"] == addresses[member["id"]]
            assert member["types"]["Echo"] == "directory"
            assert member["version"] == "0.1.0"
    status, text = await call(pair[0].url + "/metrics")
    assert status == 200
    lines = set(text.splitlines())
    assert "kerna_members 2.0" in lines
    for node_id, address in addresses.items():
        assert (
            f'kerna_cluster_member{{address="{address}",node="{node_id}",version="0.1.0"}} 1.0'
            in lines
        )
    code, out, err = await run_cli("status", "--node", pair[1].url)
    assert code == 0, err
    assert "members: 2" in out
    for node_id, address in addresses.items():
        assert any(f'"id": "{node_id}"' in line and address in line for line in out.splitlines())


async def test_readyz_fails_while_the_nodes_member_record_is_not_its_own(
    pair: list[NodeProcess], etcd_server: EtcdMember
) -> None:
    n1 = pair[0]
    assert await call(n1.url + "/readyz") == (200, {"status": "ready"})
    _, body = await call(n1.url + "/admin/status")
    key = f"kerna/{body['cluster']}/members/n1"
    impostor = Member("n1", "tcp://127.0.0.9:1", {}, {}, "0.1.0", 0.0)
    store = await connect(etcd_server.url)
    try:
        lease = await store.lease_grant(30)
        # another record under n1's id: the node's view no longer holds its own
        await store.txn([], [Put(key, msgspec.msgpack.encode(impostor), lease)])

        async def unready() -> bool:
            status, answer = await call(n1.url + "/readyz")
            return status == 503 and "not a member" in answer["reason"]

        await until(unready)
        await store.lease_revoke(lease)  # the impostor's record goes: n1 registers again

        async def ready() -> bool:
            return (await call(n1.url + "/readyz"))[0] == 200

        await until(ready)
    finally:
        await store.aclose()


class _Logged(logging.Handler):
    """Sets ``event`` when a record containing ``text`` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


async def test_readyz_fails_while_the_node_has_lost_its_lease_though_its_record_is_still_seen(
    etcd_server: EtcdMember,
) -> None:
    """Cut off from the store (keepalives, grants and revokes fail) until it declares its
    lease lost, while the store still holds that lease (kept alive here: a heal before
    it expired), the node's old member record is still in its view: not ready until it
    registered again under a new lease."""
    faulty = FaultyBackend(await connect(etcd_server.url))
    store = await connect(etcd_server.url)
    fenced = _Logged("lost its lease")
    registered = _Logged("registered under lease")
    for handler in (fenced, registered):
        logging.getLogger("kerna").addHandler(handler)
    cluster_log = logging.getLogger("kerna.cluster")
    level = cluster_log.level
    cluster_log.setLevel(logging.INFO)  # "registered under lease" is an INFO record
    name = cluster_name()
    env = {"KERNA_CLUSTER": name, "KERNA_NODE_ID": "n1", "KERNA_HTTP_LISTEN": "127.0.0.1:0"}
    try:
        kernel = Kernel(state=faulty, transport=TCP, cluster=name, node_id="n1",
                        secret=CLUSTER_SECRET, lease_ttl=2.4, stop_grace=0.2)  # fmt: skip
        async with kernel:
            http = NodeHttp(kernel, load_config(None, env))
            host, port = await http.start()
            http.ready = True
            url = f"http://{host}:{port}/readyz"
            try:
                assert await call(url) == (200, {"status": "ready"})
                record = await store.get(f"{kernel.state_prefix}{name}/members/n1")
                assert record is not None
                faulty.keepalive_down = faulty.grant_down = faulty.revoke_down = True
                async with asyncio.timeout(10):
                    await store.lease_keepalive(record.lease)  # the store keeps it
                    await fenced.event.wait()  # the node declared its lease lost
                    await store.lease_keepalive(record.lease)
                    assert [m.id for m in kernel.members()] == ["n1"]  # the old record
                    status, body = await call(url)
                    assert status == 503, body
                    assert "lease" in body["reason"], body
                    registered.event.clear()
                    faulty.keepalive_down = faulty.grant_down = faulty.revoke_down = False
                    await registered.event.wait()  # under a new lease
                    assert await call(url) == (200, {"status": "ready"})
            finally:
                await http.close()
    finally:
        cluster_log.setLevel(level)
        for handler in (fenced, registered):
            logging.getLogger("kerna").removeHandler(handler)
        await faulty.aclose()
        await store.aclose()
