"""A node cut off from its store long enough to lose its lease, once the store answers
again (real etcd behind ``FaultyBackend``, which cuts the lease calls): the next
message to one of its stateful agents is served under a new lease, even while the grant
attempt that was on its way across the partition is still out or fails; it does not
fail for want of a lease until the membership keeper's next attempt goes through."""

from __future__ import annotations

import asyncio
import logging

import pytest

from kerna import Kernel
from kerna.state import connect
from kerna.testing import EtcdMember

from .cluster import SECRET, TCP, cluster_name
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
