"""Per-sender order holds across a graceful hand-off for a message still in flight to
the old holder when it releases its claim (real etcd, tcp, a ``FaultProxy`` in front
of the leaving node): the sender's next message, which its watch routes straight to
the new home, does not overtake the one the old holder forwards there."""

from __future__ import annotations

import asyncio
import logging

import pytest

from kerna import Agent, AgentId, Kernel, Message, Rendezvous, handler
from kerna.state import connect
from kerna.testing import EtcdMember, FaultProxy, free_ports

from .cluster import SECRET, TCP, cluster_name, hosting
from .faulty import FaultyBackend
from .numbered_tells import ARRIVED, SEEN, WAIT, Numbered, Recorder

pytestmark = pytest.mark.anyio

# Heartbeats that outlast the blackhole on a loaded machine: the held link is slow,
# not lost.
LINK = {"heartbeat": 1.0, "heartbeat_misses": 60}


class Block(Message):
    pass


class Busy(Agent):
    """Busy with ``Block`` until ``gate`` is set: its node's stop waits for it (the
    grace), so the leaving node is still up, forwarding, after it released the
    recorder's claim."""

    entered = asyncio.Event()
    gate = asyncio.Event()

    @handler
    async def block(self, msg: Block) -> None:
        Busy.entered.set()
        await Busy.gate.wait()


class _Held(logging.Handler):
    """Sets ``event`` when the cluster logs that a sender's messages wait for what it
    sent through a leaving holder to pass."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "wait for what was sent through" in record.getMessage():
            self.event.set()


async def _seen(*numbers: int) -> None:
    while not set(numbers) <= set(SEEN):
        ARRIVED.clear()
        await ARRIVED.wait()


def _leaving(node_id: str) -> object:
    return lambda members: any(m.id == node_id and m.leaving for m in members)


async def test_a_tell_in_flight_to_the_leaving_holder_is_not_overtaken_by_the_next_one(
    etcd_server: EtcdMember,
) -> None:
    """``a`` tells 1 to the recorder on ``o`` while the proxy in front of ``o`` holds it;
    ``o`` leaves and releases the claim; ``a``'s watch shows the claim gone and ``a``
    tells 2, which its placement sends to ``n``. Once 2 reached ``n`` (the reorder) or
    ``a`` holds it back, the proxy lets 1 through: ``o`` forwards it to ``n``. The
    recorder sees 0, 1, 2."""
    SEEN.clear()
    Busy.entered, Busy.gate = asyncio.Event(), asyncio.Event()
    held = _Held()
    cluster_log = logging.getLogger("kerna.cluster")
    cluster_log.addHandler(held)
    level = cluster_log.level
    cluster_log.setLevel(logging.DEBUG)
    (port,) = free_ports(1)
    name = cluster_name()
    watcher = FaultyBackend(await connect(etcd_server.url))  # a's store: sees the release
    try:
        async with FaultProxy(("127.0.0.1", port)) as proxy:
            common = {"cluster": name, "secret": SECRET, "lease_ttl": 2.0}
            o = Kernel(state=etcd_server.url, transport=f"tcp://127.0.0.1:{port}",
                       node_id="o", stop_grace=10.0,
                       transport_options={**LINK, "advertise": f"tcp://{proxy.endpoint}"},
                       **common)  # fmt: skip
            n = Kernel(state=etcd_server.url, transport=TCP, node_id="n",
                       transport_options=LINK, **common)  # fmt: skip
            a = Kernel(state=watcher, transport=TCP, node_id="a",
                       transport_options=LINK, **common)  # fmt: skip
            async with o, n, a:
                o.register(Recorder)
                o.register(Busy)
                n.register(Recorder)
                for k in (o, n, a):
                    await k.wait_members(hosting("Recorder", o, n), 5)
                key = next(
                    k
                    for k in (f"r{i}" for i in range(200))
                    if Rendezvous().choose(AgentId("Recorder", k), ["n", "o"]) == "o"
                )
                watcher.follow_delete = f"{a.state_prefix}{name}/act/Recorder/{key}"
                ref = a.ref("Recorder", key)
                stopping: asyncio.Future[None] | None = None
                try:
                    async with asyncio.timeout(3 * WAIT):
                        await ref.tell(Numbered(n=0))
                        await _seen(0)
                        assert await ref.locate() == "o"
                        await o.ref(Busy, "b").tell(Block())
                        await Busy.entered.wait()

                        await proxy.blackhole()
                        await ref.tell(Numbered(n=1))  # on a's link to o: held
                        stopping = asyncio.ensure_future(o.stop())
                        await a.wait_members(_leaving("o"), WAIT)
                        await watcher.delete_seen.wait()  # a sees o's claim released
                        await ref.tell(Numbered(n=2))  # o is no home: n is
                        reached = asyncio.ensure_future(_seen(2))
                        waiting = asyncio.ensure_future(held.event.wait())
                        await asyncio.wait({reached, waiting}, return_when="FIRST_COMPLETED")
                        for task in (reached, waiting):
                            task.cancel()
                        await proxy.heal()  # 1 reaches o, which forwards it to n
                        await _seen(1, 2)
                        Busy.gate.set()
                        await stopping
                finally:
                    Busy.gate.set()
                    await proxy.heal()
                    if stopping is not None:
                        await asyncio.wait({stopping}, timeout=WAIT)
                assert SEEN == [0, 1, 2], f"{SEEN}: a newer tell overtook one in flight"
                assert await ref.locate() == "n"
                assert n.delivery_stats().out_of_order == 0
    finally:
        cluster_log.removeHandler(held)
        cluster_log.setLevel(level)
        await watcher.aclose()
