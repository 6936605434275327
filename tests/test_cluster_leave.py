"""A node leaving gracefully (``kernel.stop()``, what SIGTERM does to ``kerna node``),
on a real etcd over tcp: it marks itself leaving (no new placements land on it), drains,
hands its agents over and deregisters; messages that reach it meanwhile are handled or
forwarded to the agent's new home, never dropped."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from kerna import Kernel
from kerna.testing import EtcdMember

from .cluster import hosting, nodes
from .cluster_agents import Add, Ledger, Total, Where

pytestmark = pytest.mark.anyio

KEYS = [f"acct-{i}" for i in range(24)]


async def _load(sender: Kernel, lane: int, acked: Counter[str], stop: asyncio.Event) -> int:
    """Increment the counters one ask at a time until ``stop``; every ask must succeed."""
    sent = 0
    while not stop.is_set():
        key = KEYS[(lane + sent) % len(KEYS)]
        assert await sender.ref(Ledger, key).ask(Add(n=1), timeout=10) > 0
        acked[key] += 1
        sent += 1
    return sent


async def test_a_node_stopping_under_load_hands_its_agents_over_and_no_ask_fails(
    etcd_server: EtcdMember,
) -> None:
    async with nodes(etcd_server, 3, ids=["n1", "n2", "n3"], stop_grace=5.0) as (a, b, c):
        for k in (a, b, c):
            k.register(Ledger)
        for k in (a, b, c):
            await k.wait_members(hosting("Ledger", a, b, c), 5)
        on_c = [key for key in KEYS if await a.ref(Ledger, key).ask(Where(), timeout=5) == "n3"]
        assert on_c  # some counters live on the node that leaves
        acked: Counter[str] = Counter()
        stop = asyncio.Event()
        lanes = [
            asyncio.ensure_future(_load(sender, lane, acked, stop))
            for lane, sender in enumerate([a, b, a, b, a, b])
        ]
        async with asyncio.timeout(30):
            while sum(acked.values()) < 200:  # the load runs
                await asyncio.wait(lanes, timeout=0.05)
                for lane in lanes:
                    if lane.done():
                        await lane  # raises what failed it
            before = sum(acked.values())
            await c.stop()  # leaves while the load goes on
            assert c.stats().types["Ledger"].handled > 0
            after_stop = sum(acked.values())
            while sum(acked.values()) < after_stop + 200:  # and after it left
                await asyncio.wait(lanes, timeout=0.05)
                for lane in lanes:
                    if lane.done():
                        await lane  # raises what failed it
            stop.set()
            await asyncio.gather(*lanes)  # no ask failed
            assert after_stop > before  # asks were answered while c left
            assert "n3" not in {m.id for m in a.members()}
            for key in KEYS:
                assert await a.ref(Ledger, key).ask(Total(), timeout=5) == acked[key]
                assert await b.ref(Ledger, key).locate() in ("n1", "n2")
