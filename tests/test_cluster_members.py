"""Cluster membership on a real etcd, over tcp: the contract (``Kernel(cluster=...)``),
``members()`` as nodes join and leave, and the configuration errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from kerna import ConfigError, Kernel, Member, __version__
from kerna.state import connect
from kerna.testing import EtcdMember

from .cluster import SECRET, TCP, cluster_name, hosting, node, nodes, only
from .cluster_agents import Billing, Charge, Ledger

pytestmark = pytest.mark.anyio


async def test_members_lists_every_live_node_with_its_address_types_and_start(
    etcd_server: EtcdMember,
) -> None:
    async with nodes(etcd_server, 3) as (a, b, c):
        a.register(Billing)
        b.register(Billing, placement="hash")
        b.register(Ledger)
        await c.wait_members(hosting("Ledger", b), 5)
        await c.wait_members(hosting("Billing", a, b), 5)
        members = c.members()
        assert [m.id for m in members] == sorted(k.node_id for k in (a, b, c))
        by_id = {m.id: m for m in members}
        assert all(isinstance(m, Member) for m in members)
        for k in (a, b, c):
            assert by_id[k.node_id].address == k.address
            assert by_id[k.node_id].version == __version__
            assert by_id[k.node_id].since > 0
        assert by_id[b.node_id].types == {"Billing": "hash", "Ledger": "directory"}
        assert by_id[c.node_id].types == {}
        assert set(by_id[a.node_id].fingerprints) >= {
            "tests.cluster_agents.Charge",
            "tests.cluster_agents.Where",
        }
        # a node that stops leaves at once: deregistered, not a lease TTL later
        await b.stop()
        # (its lease TTL is 2 s: gone within 1 s means it left, not that its lease ran out)
        await a.wait_members(only(a, c), 1)
        await c.wait_members(only(a, c), 1)


async def test_a_second_live_node_with_the_same_id_is_refused_naming_it(
    etcd_server: EtcdMember,
) -> None:
    name = cluster_name()
    async with node(etcd_server, name, node_id="n1", lease_ttl=1.0):
        second = node(etcd_server, name, node_id="n1", lease_ttl=1.0)
        with pytest.raises(ConfigError, match="node id 'n1' is taken"):
            await second.start()
        assert second.members() == []


async def test_a_node_reads_the_cluster_secret_from_a_file(
    etcd_server: EtcdMember, tmp_path: Path
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET + b"\n")
    name = cluster_name()
    async with (
        node(etcd_server, name) as a,
        Kernel(state=etcd_server.url, transport=TCP, cluster=name, secret_file=str(secret_file),
               lease_ttl=2.0, stop_grace=0.2) as b,
    ):  # fmt: skip
        a.register(Billing)
        await b.wait_members(hosting("Billing", a), 5)
        assert await b.ref("Billing", "acct-7").ask(Charge(amount=5), timeout=5) == 5


def test_cluster_options_that_cannot_work_are_named_at_construction() -> None:
    etcd = "etcd://127.0.0.1:1"
    with pytest.raises(ConfigError, match="needs a transport"):
        Kernel(state=etcd, cluster="shop")
    with pytest.raises(ConfigError, match="memory://.*private to this kernel"):
        Kernel(transport=TCP, cluster="shop")
    with pytest.raises(ConfigError, match="cluster must be a non-empty name"):
        Kernel(state=etcd, transport=TCP, cluster="a/b")
    with pytest.raises(ConfigError, match="not both"):
        Kernel(state=etcd, transport=TCP, cluster="shop", secret=b"x", secret_file="f")
    with pytest.raises(ConfigError, match="cannot read secret_file '/nonexistent/secret'"):
        Kernel(state=etcd, transport=TCP, cluster="shop", secret_file="/nonexistent/secret")
    with pytest.raises(ConfigError, match="secret is given twice"):
        Kernel(transport=TCP, secret=b"x", transport_options={"secret": b"y"})
    with pytest.raises(ConfigError, match="a secret needs a transport"):
        Kernel(secret=b"x")
    with pytest.raises(ConfigError, match="node_id must be"):
        Kernel(node_id="")


async def test_a_cluster_on_one_shared_backend_object_works_in_one_process() -> None:
    backend = await connect("memory://")
    try:
        name = cluster_name()
        async with (
            Kernel(state=backend, transport=TCP, cluster=name, secret=SECRET) as a,
            Kernel(state=backend, transport=TCP, cluster=name, secret=SECRET) as b,
        ):
            a.register(Billing)
            await b.wait_members(hosting("Billing", a), 5)
            assert await b.ref("Billing", "x").ask(Charge(amount=2), timeout=5) == 2
    finally:
        await backend.aclose()
