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
    """n1 leaves while busy with 0, 1..9 queued behind it and 10..19 sent meanwhile;
    its release of the claim is held until n3 found the claim still taken, then
    applied, and its answer held while 20..29 are sent (the new home can claim the
    agent now). n3 keeps what n1 handed off until the release (one activation, none
    sent back), then handles the numbers in order."""
    Stream.seen = []
    Stream.entered, Stream.gate = asyncio.Event(), asyncio.Event()
    Stream.last, Stream.complete = asyncio.Event(), asyncio.Event()
    old = FaultyBackend(await connect(etcd_server.url))  # n1's store: its release is held
    new = FaultyBackend(await connect(etcd_server.url))  # n3's: shows its claim refused
    try:
        async with nodes(etcd_server, 1, ids=["n2"]) as (n2,):
            assert n2.cluster is not None
            n1, n3 = (
                Kernel(
                    state=store,
                    transport=TCP,
                    cluster=n2.cluster,
                    node_id=node_id,
                    secret=SECRET,
                    lease_ttl=2.0,
                    stop_grace=10.0,
                )
                for store, node_id in ((old, "n1"), (new, "n3"))
            )
            async with n1, n3:
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
                claim_key = f"{n1.state_prefix}{n2.cluster}/act/Stream/{key}"
                old.hold_delete, old.delete_gate = claim_key, asyncio.Event()
                new.watch_key = claim_key
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
                    # n1 too: it hands its activations off once its own watch shows it
                    # leaving (Departure.leave, whose wait on this condition is older
                    # than ours, so it runs first); its watch may lag behind n2's and
                    # n3's, and if 0 finished before that, n1 would handle 1..19 itself.
                    for k in (n1, n2, n3):
                        await k.wait_members(_leaving("n1"), 5)
                    for n in range(10, 20):  # sent while n1 leaves, still holding it
                        await ref.tell(Numbered(n=n))
                    Stream.gate.set()  # n1 finishes 0 and hands the agent off
                    await old.delete_reached.wait()  # n1 releases its claim: held
                    await new.refused.wait()  # what n1 handed off reached n3: claim taken
                    old.delete_gate.set()
                    # The release is applied (its answer held): n3 may claim the agent
                    # now, and the newer numbers go there.
                    await old.delete_applied.wait()
                    for n in range(20, 30):
                        await ref.tell(Numbered(n=n))
                    await Stream.last.wait()
                    old.delete_answer.set()
                    await stopping
                    await Stream.complete.wait()
                assert Stream.seen == list(range(30)), str(Stream.seen)
                assert await n2.ref(Stream, key).locate() == "n3"
                # n3 kept the handed-off messages until the release: none went back.
                # Its view and the store show n1 leaving before anything is handed
                # off, so its wait for the claim (Cluster.wait_for_claim) never gives
                # up here; had it, n3 would send them back to n1 (Cluster.moved) and get
                # them again, in order: activations=2, deactivations=1, restarts=0.
                assert n3.stats().types["Stream"].activations == 1
                assert n1.stats().types["Stream"].activations == 1
                assert n3.delivery_stats().out_of_order == 0
    finally:
        old.delete_answer.set()
        if old.delete_gate is not None:
            old.delete_gate.set()
        Stream.gate.set()
        await old.aclose()
        await new.aclose()
