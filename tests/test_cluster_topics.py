"""Topics span the cluster (real etcd, tcp, three nodes): each subscription (topic,
agent type) receives each event once, at the owner of the key its key function picks,
whichever node publishes, a node that hosts nothing included."""

from __future__ import annotations

import asyncio

import pytest

from kerna import Agent, Kernel, Message, Request, handler
from kerna.testing import EtcdMember

from .cluster import nodes
from .cluster_agents import Where

pytestmark = pytest.mark.anyio

REGIONS = ["eu", "us", "apac", "latam", "mea"]


class News(Message):
    region: str
    n: int


class Seen(Request[list[int]]):
    pass


class Reader(Agent):
    """One per region: the events of its region."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    @handler
    async def news(self, msg: News) -> None:
        assert self.context.topic == "news"
        assert msg.region == self.id.key  # routed by the key function
        self.seen.append(msg.n)

    @handler
    async def where(self, msg: Where) -> str:
        return self.kernel.node_id

    @handler
    async def query(self, msg: Seen) -> list[int]:
        return self.seen


class Audit(Reader):
    """One for all events (the default key)."""

    @handler
    async def news(self, msg: News) -> None:
        self.seen.append(msg.n)


def by_region(event: News) -> str:
    return event.region


async def _seen(k: Kernel, type_name: str, key: str) -> list[int]:
    return await k.ref(type_name, key).ask(Seen(), timeout=5)


async def test_each_subscription_gets_each_event_once_at_its_keys_owner_from_any_node(
    etcd_server: EtcdMember,
) -> None:
    async with nodes(etcd_server, 3, ids=["n1", "n2", "n3"]) as (n1, n2, n3):
        for k in (n1, n2):
            k.register(Reader)
            k.subscribe("news", Reader, key=by_region)
        n2.register(Audit)
        n2.subscribe("news", Audit)
        for k in (n1, n2, n3):  # every node knows who subscribes to what
            await k.wait_members(
                lambda ms: (
                    {m.id for m in ms if "Reader" in m.types} == {"n1", "n2"}
                    and any("Audit" in m.types for m in ms)
                ),
                5,
            )
        events = [News(region=REGIONS[i % len(REGIONS)], n=i) for i in range(60)]
        async with asyncio.timeout(20):
            for i, event in enumerate(events):
                await (n1, n2, n3)[i % 3].publish("news", event)  # n3 hosts nothing
            want = {r: sorted(e.n for e in events if e.region == r) for r in REGIONS}
            while True:  # events hop through nodes: wait until every one arrived
                got = {r: sorted(await _seen(n3, "Reader", r)) for r in REGIONS}
                audit = sorted(await _seen(n1, "Audit", "default"))
                if sum(map(len, got.values())) + len(audit) >= 2 * len(events):
                    break
            assert got == want  # each once, in its region's reader
            assert audit == list(range(len(events)))
            homes = {r: await n3.ref("Reader", r).ask(Where(), timeout=5) for r in REGIONS}
        assert set(homes.values()) <= {"n1", "n2"}
        # one activation per region cluster-wide: no other node handled its events
        for k in (n1, n2):
            active = {a for a in REGIONS if homes[a] == k.node_id}
            assert k.stats().types["Reader"].activations == len(active)
