"""A node lost with asks in flight, on a real etcd over tcp: its askers get
``NodeLost`` (a ``PeerUnreachable``) as soon as the transport finds the node gone (a
killed process at once, a frozen one after the heartbeat timeout), never only at
their own ask timeout."""

from __future__ import annotations

import asyncio
import signal

import pytest

from kerna import NodeLost, TransportError
from kerna.transports import PeerUnreachable

from .cluster import node_process, nodes
from .cluster_agents import Hang, Where
from .etcd import EtcdMember

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
