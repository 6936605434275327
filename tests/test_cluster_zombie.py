"""A zombie owner, on a real etcd: the node holding stateful agents (a process of its
own) is frozen with SIGSTOP past its lease TTL, so a survivor takes its agents over and
serves them (reads only: the state's revision stays the one the zombie read); then it
is resumed with SIGCONT, with writes to those agents waiting in its socket. None of its
writes is accepted by the store (the claim's fencing token), it notices it lost its
lease, stops serving the agents (a message sent to it now is forwarded to the
successor) and rejoins.

Two layers keep the zombie out, and the test fails only when both are gone: the
node fences its activations when it notices the lost lease, and the store refuses a
save whose claim's create revision is not the one the activation claimed."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from kerna import AgentId, Rendezvous
from kerna.state import Layout
from kerna.testing import EtcdMember

from .cluster import nodes
from .cluster_agents import Book, Credit, Journal, Total, Where
from .cluster_proc import NodeProc

pytestmark = pytest.mark.anyio

TTL = 1.5
IDS = ["p1", "s1", "s2"]


async def test_a_frozen_owner_past_its_ttl_is_fenced_by_the_store_and_stops_serving(
    etcd_server: EtcdMember,
) -> None:
    async with nodes(etcd_server, 2, ids=IDS[1:]) as (s1, s2):
        for k in (s1, s2):
            k.register(Journal)
        assert s1.cluster is not None
        layout = Layout(f"{s1.state_prefix}{s1.cluster}/")
        store = s1.state_backend

        async def book(key: str) -> Book:
            kv = await store.get(layout.state("Journal", key))
            assert kv is not None
            return msgspec.msgpack.decode(kv.value, type=Book)

        keys = [
            k
            for k in (f"j{i}" for i in range(400))
            if Rendezvous().choose(AgentId("Journal", k), IDS) == "p1"
        ][:3]
        owner = await NodeProc(etcd_server.url, s1.cluster, "p1", TTL).start()
        try:
            await s1.wait_members(lambda ms: {m.id for m in ms if m.types} == set(IDS), 5)
            for key in keys:
                for _ in range(3):
                    await s1.ref(Journal, key).ask(Credit(n=1), timeout=5)
                assert await s1.ref(Journal, key).locate() == "p1"
            before = {key: (await book(key)).by for key in keys}
            assert before == {key: {"p1": 3} for key in keys}

            await owner.sigstop()
            # Writes straight to the frozen owner's activations: they wait in its socket.
            zombie = [
                asyncio.ensure_future(
                    s1.ref("Journal", key, node=owner.address).ask(Credit(n=1000), timeout=30)
                )
                for key in keys
            ]
            # Its lease runs out; the survivors take its agents over and serve them. They
            # only read: the state key keeps the revision the zombie read, so only the
            # fencing token (the claim's create revision) can refuse the zombie's write.
            await s2.wait_members(lambda ms: "p1" not in {m.id for m in ms}, TTL + 5)
            async with asyncio.timeout(10):
                for key in keys:
                    assert await s2.ref(Journal, key).ask(Total(), timeout=5) == 3
                    successor = await s2.ref(Journal, key).ask(Where(), timeout=5)
                    assert successor in ("s1", "s2")

            await owner.sigcont()
            async with asyncio.timeout(10):
                outcomes = await asyncio.gather(*zombie, return_exceptions=True)
            # Whatever the zombie did with them, the store took no write of its own...
            for key in keys:
                by = (await book(key)).by
                assert by.get("p1") == 3, (key, by, outcomes)
            # ...and a write it accepted was its successor's (forwarded there): the reply
            # counts the increments acknowledged before.
            for outcome in outcomes:
                assert isinstance(outcome, Exception) or outcome == 1003, outcomes
            # It noticed: it rejoins under a new lease and no longer serves the agents.
            await s1.wait_members(lambda ms: "p1" in {m.id for m in ms}, TTL + 5)
            assert "lost its lease" in owner.log()
            for key in keys:
                pinned = s1.ref("Journal", key, node=owner.address)
                holder = await pinned.ask(Where(), timeout=5)
                assert holder in ("s1", "s2")
                assert holder == await s1.ref(Journal, key).locate()
            stats = await owner.stats()
            assert stats["types"]["Journal"]["active"] == 0, stats
            # The successor goes on writing over what was committed.
            totals = [await s1.ref(Journal, key).ask(Credit(n=1), timeout=5) for key in keys]
            accepted = sum(1 for o in outcomes if not isinstance(o, Exception))
            assert sum(totals) == 3 * 4 + 1000 * accepted
        finally:
            await owner.close()
