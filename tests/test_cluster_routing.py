"""Placement and routing across three nodes on a real etcd, over tcp: messages reach an
agent's home from any node (one hosting nothing too, by type name), ``locate()`` names
it, warm routes are cached until the view changes, a running activation stays where it
is when a node joins, and a message that reaches a node whose claim is elsewhere is
forwarded to the holder."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from kerna import AgentId, BlockingKernel, Kernel, Rendezvous, UnknownAgent
from kerna._cluster_placement import ClusterRoute
from kerna.testing import EtcdMember

from .cluster import SECRET, TCP, hosting, node, nodes, only
from .cluster_agents import Billing, Charge, Where

pytestmark = pytest.mark.anyio

IDS = ["n1", "n2", "n3"]


def home(type_name: str, key: str, ids: list[str]) -> str:
    return Rendezvous().choose(AgentId(type_name, key), sorted(ids))


async def test_asks_and_tells_from_any_node_reach_the_agent_on_its_home_by_hash(
    etcd_server: EtcdMember,
) -> None:
    async with nodes(etcd_server, 3, ids=IDS) as kernels:
        for k in kernels:
            k.register(Billing, placement="hash")
        for k in kernels:
            await k.wait_members(hosting("Billing", *kernels), 5)
        keys = [f"acct-{i}" for i in range(30)]
        async with asyncio.timeout(20):
            for k in kernels:  # a tell from every node, then an ask
                for key in keys:
                    await k.ref(Billing, key).tell(Charge(amount=1))
            totals = [await kernels[0].ref(Billing, key).ask(Charge(amount=0)) for key in keys]
            where = {key: await kernels[1].ref(Billing, key).ask(Where()) for key in keys}
        assert totals == [3] * len(keys)  # one activation each saw all three tells
        assert where == {key: home("Billing", key, IDS) for key in keys}
        assert len(set(where.values())) == 3  # spread over the three nodes
        for k in kernels:
            assert [await k.ref(Billing, key).locate() for key in keys] == list(where.values())
        # hash placement keeps no record in the store
        store = kernels[0].state_backend
        prefix = f"{kernels[0].state_prefix}{kernels[0].cluster}/act/"
        assert (await store.range(prefix)).kvs == ()


async def test_a_node_hosting_nothing_reaches_a_type_by_name_and_locates_it(
    etcd_server: EtcdMember,
) -> None:
    async with nodes(etcd_server, 3) as (a, b, c):
        a.register(Billing)
        b.register(Billing)
        await c.wait_members(hosting("Billing", a, b), 5)
        ref = c.ref("Billing", "acct-7")
        assert await ref.locate() is None  # not active anywhere yet: no claim
        assert await ref.ask(Charge(amount=7), timeout=5) == 7
        assert await ref.ask(Charge(amount=1), timeout=5) == 8
        served_by = await ref.ask(Where(), timeout=5)
        assert served_by in (a.node_id, b.node_id)
        for k in (a, b, c):
            assert await k.ref("Billing", "acct-7").locate() == served_by
        owner = a if served_by == a.node_id else b
        assert owner.stats().types["Billing"].handled == 3
        assert c.stats().types == {}
        with pytest.raises(UnknownAgent, match=f"no live member of cluster '{c.cluster}' hosts"):
            await c.ref("Shipping", "s1").ask(Where(), timeout=5)
        assert await c.ref("Shipping", "s1").locate() is None


async def test_a_warm_remote_route_is_reused_until_a_node_joins_which_moves_nothing(
    etcd_server: EtcdMember,
) -> None:
    # A key whose home by hash moves to n4 when n4 joins.
    key = next(
        k for k in (f"k{i}" for i in range(1000)) if home("Billing", k, [*IDS, "n4"]) == "n4"
    )
    first = home("Billing", key, IDS)
    async with nodes(etcd_server, 3, ids=IDS) as kernels:
        for k in kernels:
            k.register(Billing)
        for k in kernels:
            await k.wait_members(hosting("Billing", *kernels), 5)
        sender = next(k for k in kernels if k.node_id != first)
        ref = sender.ref(Billing, key)
        assert await ref.ask(Charge(amount=1), timeout=5) == 1
        route = ref.route
        assert isinstance(route, ClusterRoute)
        assert route.node == first
        assert await ref.ask(Charge(amount=1), timeout=5) == 2
        assert ref.route is route  # warm: the cached decision, no lookup
        async with node(etcd_server, kernels[0].cluster or "", node_id="n4") as n4:
            n4.register(Billing)
            await sender.wait_members(hosting("Billing", *kernels, n4), 5)
            assert route.closed  # the view changed: decided again on the next send
            # the running activation stays on its node: the directory is the authority
            assert await ref.ask(Charge(amount=1), timeout=5) == 3
            assert await n4.ref(Billing, key).ask(Where(), timeout=5) == first
            assert n4.stats().types["Billing"].activations == 0


async def test_local_placement_runs_one_activation_on_each_hosting_node(
    etcd_server: EtcdMember,
) -> None:
    async with nodes(etcd_server, 3) as (a, b, c):
        a.register(Billing, placement="local")
        b.register(Billing, placement="local")
        await c.wait_members(hosting("Billing", a, b), 5)
        assert await a.ref(Billing, "w").ask(Where(), timeout=5) == a.node_id
        assert await b.ref(Billing, "w").ask(Where(), timeout=5) == b.node_id
        assert await c.ref("Billing", "w").ask(Where(), timeout=5) in (a.node_id, b.node_id)


async def test_a_message_reaching_a_node_whose_claim_is_elsewhere_is_forwarded_to_the_holder(
    etcd_server: EtcdMember,
) -> None:
    async with nodes(etcd_server, 2) as (a, b):
        a.register(Billing)
        b.register(Billing)
        await a.wait_members(hosting("Billing", a, b), 5)
        key = next(
            f"k{i}"
            for i in range(1000)
            if home("Billing", f"k{i}", [a.node_id, b.node_id]) == a.node_id
        )
        assert await a.ref(Billing, key).ask(Charge(amount=5), timeout=5) == 5  # a holds it
        # A kernel outside the cluster names b: b's activation finds a's claim.
        async with Kernel(transport=TCP, secret=SECRET, stop_grace=0.1) as outside:
            assert b.address is not None
            pinned = outside.ref("Billing", key, node=b.address)
            assert await pinned.ask(Charge(amount=1), timeout=5) == 6
            assert await pinned.ask(Where(), timeout=5) == a.node_id
            await pinned.tell(Charge(amount=1))  # forwarded too, before the ask after it
            assert await pinned.ask(Charge(amount=0), timeout=5) == 7
        assert b.stats().types["Billing"].handled == 0
        assert await b.ref(Billing, key).locate() == a.node_id


async def test_a_blocking_kernel_is_a_node_like_any_other(etcd_server: EtcdMember) -> None:
    async with nodes(etcd_server, 1) as (a,):
        assert a.cluster is not None
        blocking = BlockingKernel(state=etcd_server.url, transport=TCP, cluster=a.cluster,
                                  secret=SECRET, lease_ttl=2.0, stop_grace=0.2)  # fmt: skip
        await anyio.to_thread.run_sync(blocking.start)
        try:
            await anyio.to_thread.run_sync(lambda: blocking.register(Billing))
            await a.wait_members(hosting("Billing", blocking.kernel), 5)
            assert await a.ref("Billing", "b").ask(Where(), timeout=5) == blocking.node_id
            members = await anyio.to_thread.run_sync(blocking.members)
            assert {m.id for m in members} == {a.node_id, blocking.node_id}
            ref = blocking.ref("Billing", "b")
            assert await anyio.to_thread.run_sync(ref.locate) == blocking.node_id
        finally:
            await anyio.to_thread.run_sync(blocking.stop)
        await a.wait_members(only(a), 2)


async def test_senders_parked_on_a_full_mailbox_when_the_claim_is_elsewhere_are_forwarded(
    etcd_server: EtcdMember,
) -> None:
    async with nodes(etcd_server, 2) as (a, b):
        a.register(Billing)
        b.register(Billing, mailbox_size=1)  # b's queue fills while it claims
        await a.wait_members(hosting("Billing", a, b), 5)
        key = next(
            f"k{i}"
            for i in range(1000)
            if home("Billing", f"k{i}", [a.node_id, b.node_id]) == a.node_id
        )
        assert await a.ref(Billing, key).ask(Charge(amount=5), timeout=5) == 5  # a holds it
        async with Kernel(transport=TCP, secret=SECRET, stop_grace=0.1) as outside:
            assert b.address is not None
            pinned = outside.ref("Billing", key, node=b.address)
            async with asyncio.timeout(10):
                await asyncio.gather(*(pinned.tell(Charge(amount=1)) for _ in range(20)))
                # every tell reached a's agent: none was refused while parked on b
                assert await pinned.ask(Charge(amount=0), timeout=5) == 25
        assert b.stats().dead_letters == 0
