"""A node lost, on a real etcd over tcp: the asks in flight to it fail with
``NodeLost`` (a ``PeerUnreachable``) as soon as the transport finds the node gone (a
killed process at once, a frozen one after the heartbeat timeout), never only at
their own ask timeout; messages sent to its agents after that wait, within their
deadlines, until its lease is gone and they are served on a survivor."""

from __future__ import annotations

import asyncio
import signal

import pytest

from kerna import AgentId, AskTimeout, NodeLost, Rendezvous, TransportError
from kerna.testing import EtcdMember
from kerna.transports import PeerUnreachable

from .cluster import node_process, nodes
from .cluster_agents import Add, Hang, Ledger, Total, Where

pytestmark = pytest.mark.anyio

TTL = 1.5
ASK_TIMEOUT = 30.0


async def _lose_with_asks_in_flight(etcd: EtcdMember, how: signal.Signals, within: float) -> None:
    loop = asyncio.get_running_loop()
    options = {"heartbeat": 0.5, "heartbeat_misses": 3}
    async with nodes(etcd, 1, ids=["s1"], transport_options=options) as (a,):
        assert a.cluster is not None
        async with node_process(etcd, a.cluster, "p1", TTL) as proc:
            await a.wait_members(lambda ms: any("Stall" in m.types for m in ms), 5)
            asks = [
                asyncio.ensure_future(
                    a.ref("Stall", f"k{i}").ask(Hang(seconds=60), timeout=ASK_TIMEOUT)
                )
                for i in range(5)
            ]
            # Frames to one node arrive in order: once this is answered, p1 holds them all.
            assert await a.ref("Stall", "probe").ask(Where(), timeout=5) == "p1"
            assert not any(ask.done() for ask in asks)
            proc.send_signal(how)
            lost_at = loop.time()
            async with asyncio.timeout(within + 2):
                for ask in asks:
                    with pytest.raises(NodeLost) as caught:
                        await ask
            took = loop.time() - lost_at
            assert took < within
            error = caught.value
            assert isinstance(error, PeerUnreachable)  # `except PeerUnreachable` still works
            assert isinstance(error, TransportError)
            assert error.peer.startswith("tcp://")
            assert error.peer in str(error)


async def test_asks_in_flight_to_a_killed_node_fail_with_node_lost_at_once(
    etcd_server: EtcdMember,
) -> None:
    # the killed process's sockets close: no heartbeat needs to miss
    await _lose_with_asks_in_flight(etcd_server, signal.SIGKILL, within=1.0)


async def test_asks_in_flight_to_a_frozen_node_fail_with_node_lost_after_the_heartbeat_timeout(
    etcd_server: EtcdMember,
) -> None:
    # SIGSTOP: the connection stays open and silent; heartbeat 0.5 s x 3 misses = 1.5 s
    await _lose_with_asks_in_flight(etcd_server, signal.SIGSTOP, within=1.5 + 1.5)


async def test_messages_sent_to_a_killed_nodes_agents_wait_and_are_served_on_a_survivor(
    etcd_server: EtcdMember,
) -> None:
    loop = asyncio.get_running_loop()
    async with nodes(etcd_server, 2, ids=["s1", "s2"]) as (a, b):
        a.register(Ledger)
        b.register(Ledger)
        assert a.cluster is not None
        async with node_process(etcd_server, a.cluster, "p1", TTL) as proc:
            await a.wait_members(lambda ms: {m.id for m in ms if m.types} == {"s1", "s2", "p1"}, 5)
            keys = [
                k
                for k in (f"acct-{i}" for i in range(200))
                if Rendezvous().choose(AgentId("Ledger", k), ["p1", "s1", "s2"]) == "p1"
            ][:4]
            async with asyncio.timeout(10):
                for key in keys:
                    assert await a.ref(Ledger, key).ask(Add(n=5), timeout=5) == 5
            proc.kill()
            await proc.wait()
            killed = loop.time()
        # p1 is still a member (its lease lives on): these wait for its agents to be
        # placed again instead of failing, the tells included.
        assert "p1" in {m.id for m in a.members()}
        short = asyncio.ensure_future(a.ref(Ledger, keys[0]).ask(Total(), timeout=0.3))
        async with asyncio.timeout(TTL + 8):
            for key in keys:
                await b.ref(Ledger, key).tell(Add(n=1))
            replies = await asyncio.gather(
                *(
                    k.ref(Ledger, key).ask(Add(n=10), timeout=TTL + 6)
                    for key in keys
                    for k in (a, b)
                )
            )
            with pytest.raises(AskTimeout):  # past its own deadline: a clear error
                await short
        served = loop.time() - killed
        assert "p1" not in {m.id for m in a.members()}
        assert served < TTL + 4
        # each key: 5, then the tell's 1 and both asks' 10 in some order across nodes
        for i in range(len(keys)):
            pair = sorted(replies[2 * i : 2 * i + 2])
            assert pair[0] in (15, 16)
            assert pair[1] in (25, 26)
        for key in keys:
            assert await a.ref(Ledger, key).ask(Total(), timeout=5) == 26
            assert await a.ref(Ledger, key).locate() in ("s1", "s2")


async def test_messages_parked_for_a_lost_node_that_answers_again_go_to_it_in_order(
    etcd_server: EtcdMember,
) -> None:
    options = {"heartbeat": 0.5, "heartbeat_misses": 3}
    async with nodes(etcd_server, 1, ids=["s1"], transport_options=options) as (a,):
        assert a.cluster is not None
        # frozen shorter than its lease: it stays the agents' owner
        async with node_process(etcd_server, a.cluster, "p1", 6.0) as proc:
            await a.wait_members(lambda ms: any("Ledger" in m.types for m in ms), 5)
            ledger = a.ref("Ledger", "acct")
            assert await ledger.ask(Add(n=1), timeout=5) == 1
            hang = asyncio.ensure_future(a.ref("Stall", "s").ask(Hang(seconds=60), timeout=30))
            assert await a.ref("Stall", "probe").ask(Where(), timeout=5) == "p1"
            proc.send_signal(signal.SIGSTOP)
            async with asyncio.timeout(5):
                with pytest.raises(NodeLost):
                    await hang
                await ledger.tell(Add(n=2))  # parked: p1 is lost but still a member
                asked = asyncio.ensure_future(ledger.ask(Add(n=3), timeout=10))
                proc.send_signal(signal.SIGCONT)
                assert await asked == 6  # the tell first, then the ask, on p1
                assert await ledger.ask(Where(), timeout=5) == "p1"
