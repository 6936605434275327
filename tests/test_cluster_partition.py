"""A partition of one node from etcd (``kerna.testing.FaultProxy`` between that node
and the store, black-holing; the nodes still reach each other over tcp): the cut-off node fences its
stateful agents within the lease TTL and fails its new state writes, its local volatile
agents keep running, the other nodes take its stateful agents over; after heal it
rejoins under a new lease, and no acknowledged increment was lost."""

from __future__ import annotations

import asyncio
import logging

import pytest

from kerna import ActivationFailed, AgentId, AskTimeout, Kernel, Rendezvous, Unavailable
from kerna.state import connect
from kerna.testing import EtcdMember, FaultProxy

from .cluster import SECRET, TCP, hosting, nodes
from .cluster_agents import Add, Billing, Charge, Ledger, Total, Where
from .cluster_load import SteadyLoad

pytestmark = pytest.mark.anyio

TTL = 2.0
IDS = ["n1", "n2", "n3"]


class _Seen(logging.Handler):
    """Sets ``event`` (and notes the loop time) when a record containing ``text`` is
    logged: the moment a node says it fenced itself."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.event = asyncio.Event()
        self.at = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage() and not self.event.is_set():
            self.at = asyncio.get_running_loop().time()
            self.event.set()


async def test_a_node_cut_off_from_etcd_fences_itself_keeps_its_volatile_agents_and_rejoins(
    etcd_server: EtcdMember,
) -> None:
    loop = asyncio.get_running_loop()
    proxy = await FaultProxy(etcd_server.endpoint).start()
    fenced = _Seen("stateful activations stop serving")
    logger = logging.getLogger("kerna")
    logger.addHandler(fenced)
    try:
        async with nodes(etcd_server, 2, ids=IDS[1:], lease_ttl=TTL) as (n2, n3):
            assert n2.cluster is not None
            n1 = Kernel(state=f"etcd://{proxy.endpoint}", transport=TCP,
                        cluster=n2.cluster, node_id="n1", secret=SECRET, lease_ttl=TTL,
                        stop_grace=0.2, ask_timeout=10.0)  # fmt: skip
            async with n1:
                for k in (n1, n2, n3):
                    k.register(Ledger)
                n1.register(Billing, placement="local")  # volatile, no store write
                for k in (n1, n2, n3):
                    await k.wait_members(hosting("Ledger", n1, n2, n3), 5)
                keys = [
                    k
                    for k in (f"c{i}" for i in range(400))
                    if Rendezvous().choose(AgentId("Ledger", k), IDS) == "n1"
                ][:3]
                assert await n1.ref(Billing, "w").ask(Charge(amount=5), timeout=5) == 5
                load = SteadyLoad([n2, n3], "Ledger", keys, timeout=1.0)
                load.start()
                try:
                    await load.wait_acked(3, timeout=10)
                    for key in keys:
                        assert await n2.ref(Ledger, key).locate() == "n1"
                    assert n1.stats().types["Ledger"].active == len(keys)

                    await proxy.blackhole()
                    cut = loop.time()
                    load.mark()
                    # It fences itself within the TTL (before the store can expire its
                    # lease and hand its agents to another node).
                    async with asyncio.timeout(TTL + 2):
                        await fenced.event.wait()
                    assert fenced.at - cut < TTL
                    assert n1.stats().types["Ledger"].active == 0
                    # Its volatile agent keeps running, with what it had in memory.
                    assert await n1.ref(Billing, "w").ask(Charge(amount=1), timeout=5) == 6
                    # A new state write there fails: it can neither claim nor write.
                    with pytest.raises((AskTimeout, ActivationFailed, Unavailable)):
                        await n1.ref(Ledger, keys[0]).ask(Add(n=1), timeout=2)
                    # The others serve its stateful agents once its lease is gone.
                    await load.wait_served(timeout=TTL + 5)
                    for key in keys:
                        assert await n2.ref(Ledger, key).ask(Where(), timeout=5) in IDS[1:]

                    await proxy.heal()
                    # It rejoins under a new lease and serves again.
                    await n2.wait_members(hosting("Ledger", n1, n2, n3), TTL + 8)
                    acked = min(load.acked[key] for key in keys)
                    await load.wait_acked(acked + 2, timeout=10)
                finally:
                    await load.stop()
                assert await n1.ref(Billing, "w").ask(Charge(amount=0), timeout=5) == 6
                for key in keys:
                    final = await n1.ref(Ledger, key).ask(Total(), timeout=5)
                    assert final == await n3.ref(Ledger, key).ask(Total(), timeout=5)
                    # no acknowledged increment lost, none applied that was not sent
                    assert load.acked[key] <= final <= load.sent[key], (key, final)
    finally:
        logger.removeHandler(fenced)
        await proxy.aclose()


async def test_a_new_write_on_a_node_cut_off_from_etcd_fails_with_unavailable(
    etcd_server: EtcdMember,
) -> None:
    proxy = await FaultProxy(etcd_server.endpoint).start()
    store = await connect(f"etcd://{proxy.endpoint}", timeout=0.5, probe_timeout=0.25)
    fenced = _Seen("stateful activations stop serving")
    logger = logging.getLogger("kerna")
    logger.addHandler(fenced)
    try:
        async with nodes(etcd_server, 1, ids=["n2"], lease_ttl=TTL) as (n2,):
            assert n2.cluster is not None
            n1 = Kernel(state=store, transport=TCP, cluster=n2.cluster, node_id="n1",
                        secret=SECRET, lease_ttl=TTL, stop_grace=0.2)  # fmt: skip
            async with n1:
                n1.register(Ledger)
                assert await n1.ref(Ledger, "solo").ask(Add(n=1), timeout=5) == 1
                await proxy.blackhole()
                async with asyncio.timeout(TTL + 2):
                    await fenced.event.wait()
                # The store's timeout is 0.5 s: the write fails with Unavailable within
                # the activation's attempts of about one timeout each, not an ask timeout.
                with pytest.raises((Unavailable, ActivationFailed)) as failed:
                    await n1.ref(Ledger, "solo").ask(Add(n=1), timeout=3)
                assert "Unavailable" in repr(failed.value)
                await proxy.heal()
                # Once the store answers again the next message is served under a new
                # lease: its claim waits for the grant (the one sent across the
                # partition, or one begun after it), it does not fail for want of one.
                total = await n1.ref(Ledger, "solo").ask(Add(n=1), timeout=5)
                assert total == 2  # the refused write was not applied
    finally:
        logger.removeHandler(fenced)
        await proxy.aclose()
        await store.aclose()
