"""Failure on a real etcd: a node in another process killed with SIGKILL stays a member
until its lease expires (a lost connection is not a death), then it is gone, and its
stateful agents are served on a survivor with their last committed state; a node whose
keepalives fail fences its stateful agents and rejoins under a new lease after heal."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from asyncio.subprocess import PIPE
from pathlib import Path

import pytest

from kerna import AgentId, Kernel, Rendezvous
from kerna.state import connect
from kerna.testing import EtcdMember

from .cluster import SECRET, TCP, hosting, nodes
from .cluster_agents import Add, Ledger, Total, Where
from .faulty import FaultyBackend

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
TTL = 1.5  # the killed node's lease


async def test_a_killed_node_leaves_after_its_lease_and_its_stateful_agents_fail_over(
    etcd_server: EtcdMember,
) -> None:
    loop = asyncio.get_running_loop()
    async with nodes(etcd_server, 2, ids=["s1", "s2"]) as (a, b):
        a.register(Ledger)
        b.register(Ledger)
        assert a.cluster is not None
        with tempfile.TemporaryFile() as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.cluster_node", etcd_server.url, a.cluster, "p1",
                str(TTL), cwd=ROOT, stdin=PIPE, stdout=PIPE, stderr=log,
            )  # fmt: skip
            try:
                assert proc.stdout is not None
                async with asyncio.timeout(20):
                    address = await proc.stdout.readline()
                if not address:
                    log.seek(0)
                    pytest.fail(f"the node process failed:\n{log.read()[-2000:]!r}")
                await a.wait_members(
                    lambda ms: {m.id for m in ms if m.types} == {"s1", "s2", "p1"}, 5
                )
                keys = [
                    k
                    for k in (f"acct-{i}" for i in range(200))
                    if Rendezvous().choose(AgentId("Ledger", k), ["p1", "s1", "s2"]) == "p1"
                ][:5]
                async with asyncio.timeout(10):
                    for key in keys:
                        for n in (1, 2, 3):
                            assert await a.ref(Ledger, key).ask(Add(n=n), timeout=5) in (1, 3, 6)
                        assert await a.ref(Ledger, key).locate() == "p1"
                proc.kill()
                await proc.wait()
                killed = loop.time()
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        # A lost connection is not a death: the node is a member while its lease lives.
        assert "p1" in {m.id for m in b.members()}
        await b.wait_members(lambda ms: "p1" not in {m.id for m in ms}, TTL + 3)
        gone = loop.time() - killed
        assert gone > TTL / 3  # its lease ran out (a keepalive went every TTL/3)
        # Its agents are served on a survivor, with their last committed state.
        async with asyncio.timeout(10):
            for key in keys:
                # no error: the survivors route by hash once the claim is gone
                assert await b.ref(Ledger, key).ask(Total(), timeout=5) == 6
                where = await a.ref(Ledger, key).ask(Where(), timeout=5)
                assert where in ("s1", "s2")
                assert await b.ref(Ledger, key).locate() == where
        served = loop.time() - killed
        assert served < TTL + 3


async def test_a_node_that_cannot_refresh_its_lease_fences_itself_and_rejoins_after_heal(
    etcd_server: EtcdMember,
) -> None:
    ttl = 1.2
    faulty = FaultyBackend(await connect(etcd_server.url))  # a's keepalives can be cut
    try:
        async with nodes(etcd_server, 1, ids=["b1"]) as (b,):
            assert b.cluster is not None
            a = Kernel(state=faulty, transport=TCP, cluster=b.cluster, node_id="a1",
                       secret=SECRET, lease_ttl=ttl, stop_grace=0.2)  # fmt: skip
            async with a:
                a.register(Ledger)
                b.register(Ledger)
                await b.wait_members(hosting("Ledger", a, b), 5)
                key = next(
                    k
                    for k in (f"k{i}" for i in range(200))
                    if Rendezvous().choose(AgentId("Ledger", k), ["a1", "b1"]) == "a1"
                )
                assert await b.ref(Ledger, key).ask(Add(n=4), timeout=5) == 4
                member_key = f"{a.state_prefix}{b.cluster}/members/a1"
                first = await faulty.inner.get(member_key)
                assert first is not None
                faulty.keepalive_down = True  # cut off: its lease lapses, its agents fence
                async with asyncio.timeout(5):
                    while a.stats().types["Ledger"].active:
                        await faulty.keepalive_refused.wait()
                        faulty.keepalive_refused.clear()
                faulty.keepalive_down = False  # healed
                faulty.keepalive_ok.clear()
                async with asyncio.timeout(5):
                    await faulty.keepalive_ok.wait()  # a lease of a's lives again
                await b.wait_members(hosting("Ledger", a, b), 5)
                now = await faulty.inner.get(member_key)
                assert now is not None
                assert now.lease != first.lease  # rejoined under a new lease
                # the agent is served again (on one node), with its committed state
                assert await b.ref(Ledger, key).ask(Add(n=1), timeout=5) == 5
                assert await a.ref(Ledger, key).ask(Total(), timeout=5) == 5
    finally:
        await faulty.aclose()
