"""Per-sender order to one agent holds across a graceful hand-off (real etcd, tcp): a
sender streams numbered tells to an agent whose node leaves (``kernel.stop()``) while
the agent is busy with a queue behind it; the agent sees every number once, in order,
whether a number was queued on the old node, sent while it left, or sent once the new
home could claim the agent."""

from __future__ import annotations

import asyncio

import pytest

from kerna import Agent, AgentId, Kernel, Message, Rendezvous, handler
from kerna.state import connect
from kerna.testing import EtcdMember

from .cluster import SECRET, TCP, hosting, nodes
from .cluster_agents import Billing, Where
from .faulty import FaultyBackend

pytestmark = pytest.mark.anyio


class Numbered(Message):
    n: int


class Stream(Agent):
    """Records the numbers it is told (on whichever node it runs); number 0 waits for
    ``gate``, holding the activation busy while a queue builds behind it."""

    seen: list[int] = []
    entered = asyncio.Event()
    gate = asyncio.Event()
    last = asyncio.Event()  # number 29 was handled
    complete = asyncio.Event()  # 30 numbers were handled

    @handler
    async def numbered(self, msg: Numbered) -> None:
        Stream.seen.append(msg.n)
        if msg.n == 0:
            Stream.entered.set()
            await Stream.gate.wait()
        if msg.n == 29:
            Stream.last.set()
        if len(Stream.seen) == 30:
            Stream.complete.set()


def _leaving(node_id: str) -> object:
    return lambda members: any(m.id == node_id and m.leaving for m in members)


async def test_tells_queued_on_a_leaving_node_are_not_overtaken_by_newer_ones_at_the_new_home(
    etcd_server: EtcdMember,
) -> None:
    Stream.seen = []
    Stream.entered, Stream.gate = asyncio.Event(), asyncio.Event()
    Stream.last, Stream.complete = asyncio.Event(), asyncio.Event()
    faulty = FaultyBackend(await connect(etcd_server.url))  # n1's store: its release is held
    try:
        async with nodes(etcd_server, 2, ids=["n2", "n3"]) as (n2, n3):
            assert n2.cluster is not None
            n1 = Kernel(state=faulty, transport=TCP, cluster=n2.cluster, node_id="n1",
                        secret=SECRET, lease_ttl=2.0, stop_grace=10.0)  # fmt: skip
            async with n1:
                n1.register(Stream)
                n3.register(Stream)
                n1.register(Billing)  # a barrier: hosted on n1 only
                for k in (n1, n2, n3):
                    await k.wait_members(hosting("Stream", n1, n3), 5)
                    await k.wait_members(hosting("Billing", n1), 5)
                key = next(
                    k
                    for k in (f"s{i}" for i in range(200))
                    if Rendezvous().choose(AgentId("Stream", k), ["n1", "n3"]) == "n1"
                )
                assert n1.cluster is not None
                faulty.hold_delete = f"{n1.state_prefix}{n1.cluster}/act/Stream/{key}"
                ref = n2.ref("Stream", key)
                async with asyncio.timeout(20):
                    await ref.tell(Numbered(n=0))
                    await Stream.entered.wait()  # n1 is busy with 0
                    for n in range(1, 10):
                        await ref.tell(Numbered(n=n))
                    # the same connection: 1..9 are queued on n1 once this is answered
                    assert await n2.ref(Billing, "b").ask(Where(), timeout=5) == "n1"
                    assert n1.stats().types["Stream"].queued == 9

                    stopping = asyncio.ensure_future(n1.stop())
                    for k in (n2, n3):
                        await k.wait_members(_leaving("n1"), 5)
                    for n in range(10, 20):  # sent while n1 leaves, still holding it
                        await ref.tell(Numbered(n=n))
                    Stream.gate.set()  # n1 finishes 0 and hands the agent off
                    # n1's release of its claim is applied (its answer is held): the new
                    # home may claim the agent now; newer numbers go there.
                    await faulty.delete_applied.wait()
                    for n in range(20, 30):
                        await ref.tell(Numbered(n=n))
                    await Stream.last.wait()
                    faulty.delete_answer.set()
                    await stopping
                    await Stream.complete.wait()
                assert Stream.seen == list(range(30)), str(Stream.seen)
                assert await n2.ref(Stream, key).locate() == "n3"
                assert n1.delivery_stats().out_of_order == 0
    finally:
        faulty.delete_answer.set()
        Stream.gate.set()
        await faulty.aclose()
