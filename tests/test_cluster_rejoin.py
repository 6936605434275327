"""A node cut off from its store long enough to lose its lease, once the store answers
again (real etcd behind ``FaultyBackend``, which cuts the lease calls): the next
message to one of its stateful agents is served under a new lease, even while the grant
attempt that was on its way across the partition is still out or fails; it does not
fail for want of a lease until the membership keeper's next attempt goes through. And a
message from another node to an agent it claimed again before its member record is
back waits for it to rejoin, instead of failing on a claim held by no member. A claim
that gets the new lease wakes the membership keeper: the node rejoins at once, not
after the keeper's backoff."""

from __future__ import annotations

import asyncio
import logging

import pytest

from kerna import AgentId, Kernel, Rendezvous
from kerna.state import connect
from kerna.testing import EtcdMember

from .cluster import SECRET, TCP, cluster_name, hosting
from .cluster_agents import Add, Ledger, Total
from .faulty import FaultyBackend

pytestmark = pytest.mark.anyio


class _Fenced(logging.Handler):
    """Sets ``event`` when the kernel says its stateful activations stop serving."""

    def __init__(self) -> None:
        super().__init__()
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "stateful activations stop serving" in record.getMessage():
            self.event.set()


async def test_a_stateful_agent_on_a_healed_node_is_served_while_its_new_lease_is_on_its_way(
    etcd_server: EtcdMember,
) -> None:
    faulty = FaultyBackend(await connect(etcd_server.url))
    fenced = _Fenced()
    logging.getLogger("kerna").addHandler(fenced)
    try:
        n1 = Kernel(state=faulty, transport=TCP, cluster=cluster_name(), node_id="n1",
                    secret=SECRET, lease_ttl=1.2, stop_grace=0.2)  # fmt: skip
        async with n1:
            # An activation that cannot claim fails at once (no retry hides the window).
            n1.register(Ledger, max_restarts=0)
            ref = n1.ref(Ledger, "k")
            assert await ref.ask(Add(n=4), timeout=5) == 4
            faulty.keepalive_down = faulty.grant_down = True  # cut off from the store
            async with asyncio.timeout(10):
                await fenced.event.wait()  # it fences its agents
                assert n1.stats().types["Ledger"].active == 0
                await faulty.grant_refused.wait()  # a new lease could not be had
                faulty.grant_asked.clear()
                faulty.grant_gate = gate = asyncio.Event()
                await faulty.grant_asked.wait()  # the keeper's next attempt is on its way
                # The store answers again; the attempt sent across the partition is lost
                # (it fails when it gets through, as at its timeout).
                faulty.grant_plan.append("down")
                faulty.keepalive_down = faulty.grant_down = False
                asking = asyncio.ensure_future(ref.ask(Add(n=1), timeout=5))
                gate.set()
                assert await asking == 5  # served, with its committed state
                assert await ref.ask(Total(), timeout=5) == 5
            assert n1.stats().types["Ledger"].restarts == 0
    finally:
        logging.getLogger("kerna").removeHandler(fenced)
        await faulty.aclose()


async def test_a_message_from_another_node_waits_for_a_rejoining_node_that_claimed_its_agent(
    etcd_server: EtcdMember,
) -> None:
    cut = FaultyBackend(await connect(etcd_server.url))  # n1's: lease calls cut, then its
    watched = FaultyBackend(await connect(etcd_server.url))  # record held; n2's: claims seen
    fenced = _Fenced()
    logging.getLogger("kerna").addHandler(fenced)
    try:
        name = cluster_name()
        n1, n2 = (
            Kernel(
                state=store,
                transport=TCP,
                cluster=name,
                node_id=node_id,
                secret=SECRET,
                lease_ttl=1.2,
                stop_grace=0.2,
            )
            for store, node_id in ((cut, "n1"), (watched, "n2"))
        )
        async with n1, n2:
            n1.register(Ledger)
            n2.register(Ledger, max_restarts=0)  # a refused claim is not retried
            for k in (n1, n2):
                await k.wait_members(hosting("Ledger", n1, n2), 5)
            key = next(
                k
                for k in (f"k{i}" for i in range(200))
                if Rendezvous().choose(AgentId("Ledger", k), ["n1", "n2"]) == "n1"
            )
            assert await n2.ref(Ledger, key).ask(Add(n=4), timeout=5) == 4  # on n1
            cut.hold_put = f"{n1.state_prefix}{name}/members/n1"  # its rejoin waits
            cut.keepalive_down = cut.grant_down = True
            async with asyncio.timeout(15):
                await fenced.event.wait()
                await n2.wait_members(lambda ms: "n1" not in {m.id for m in ms}, 10)
                cut.keepalive_down = cut.grant_down = False  # the store answers n1 again
                # n1 claims its agent again under a new lease, its record still held
                assert await n1.ref(Ledger, key).ask(Add(n=1), timeout=5) == 5
                watched.watch_key = f"{n1.state_prefix}{name}/act/Ledger/{key}"
                asking = asyncio.ensure_future(n2.ref(Ledger, key).ask(Add(n=1), timeout=5))
                await watched.refused.wait()  # n2 found it claimed by n1, no member now
                cut.put_gate.set()  # n1's record goes through: it is a member again
                assert await asking == 6  # served on n1, not failed
                assert await n1.ref(Ledger, key).ask(Total(), timeout=5) == 6
    finally:
        logging.getLogger("kerna").removeHandler(fenced)
        cut.put_gate.set()
        await cut.aclose()
        await watched.aclose()


async def test_a_node_whose_claim_got_a_new_lease_rejoins_at_once_not_after_the_keepers_backoff(
    etcd_server: EtcdMember,
) -> None:
    """Cut off long enough for the keeper's retries to back off to their longest wait
    (a third of the TTL), the node heals and a claim obtains the new lease: its member
    record is back within a round trip or two, not after the keeper's wait."""
    ttl = 2.4  # the keeper waits up to 0.8 s between attempts
    faulty = FaultyBackend(await connect(etcd_server.url))
    fenced = _Fenced()
    logging.getLogger("kerna").addHandler(fenced)
    try:
        n1 = Kernel(state=faulty, transport=TCP, cluster=cluster_name(), node_id="n1",
                    secret=SECRET, lease_ttl=ttl, stop_grace=0.2)  # fmt: skip
        async with n1:
            n1.register(Ledger, max_restarts=0)
            ref = n1.ref(Ledger, "k")
            assert await ref.ask(Add(n=4), timeout=5) == 4
            loop = asyncio.get_running_loop()
            faulty.keepalive_down = faulty.grant_down = True
            async with asyncio.timeout(15):
                await fenced.event.wait()
                await n1.wait_members(lambda ms: "n1" not in {m.id for m in ms}, 10)
                # The keeper's 5th refused attempt and later ones each begin its longest
                # wait (0.05, 0.1, 0.2, 0.4, then 0.8 s).
                while faulty.grants < 5:
                    faulty.grant_refused.clear()
                    await faulty.grant_refused.wait()
                faulty.grant_refused.clear()
                await faulty.grant_refused.wait()  # the keeper now waits 0.8 s
                faulty.keepalive_down = faulty.grant_down = False
                began = loop.time()
                assert await ref.ask(Add(n=1), timeout=5) == 5  # the claim takes a new lease
                await n1.wait_members(lambda ms: "n1" in {m.id for m in ms}, 5)
                took = loop.time() - began
            assert took < ttl / 6, f"the member record came back {took:.3f}s after the heal"
            assert n1.members()[0].id == "n1"
    finally:
        logging.getLogger("kerna").removeHandler(fenced)
        await faulty.aclose()
