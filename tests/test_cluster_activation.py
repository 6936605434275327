"""One activation cluster-wide: concurrent first messages to the same 200 agent ids
from three nodes on a real etcd, over tcp, activate each agent exactly once, even when
the nodes disagree on its home (one node's placement picks itself for everything, as
a node with a stale member view would), for directory-placed volatile agents and for
stateful ones."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from kerna import Agent, AgentId
from kerna.testing import EtcdMember

from .cluster import hosting, nodes
from .cluster_agents import STARTS, Add, Ledger, Total, Tracked, Where

pytestmark = pytest.mark.anyio

KEYS = [f"id-{i}" for i in range(200)]


class Selfish:
    """A placement strategy that always picks one node (a view that disagrees)."""

    def __init__(self, node: str) -> None:
        self.node = node

    def choose(self, agent: AgentId, nodes: Sequence[str]) -> str:
        return self.node if self.node in nodes else nodes[0]


@pytest.mark.parametrize("agent", [Tracked, Ledger], ids=["directory", "stateful"])
async def test_concurrent_first_messages_from_three_nodes_activate_each_agent_once(
    etcd_server: EtcdMember, agent: type[Agent]
) -> None:
    ids = ["a1", "a2", "a3"]
    async with (
        nodes(etcd_server, 2, ids=ids[:2]) as (a, b),
        nodes(etcd_server, 1, cluster=a.cluster, ids=ids[2:], placement_strategy=Selfish("a3")) as (
            c,
        ),
    ):
        kernels = (a, b, c)
        name = agent.__name__
        for k in kernels:
            k.register(agent)
        for k in kernels:
            await k.wait_members(hosting(name, *kernels), 5)
        for key in KEYS:
            STARTS.pop(f"{name}/{key}", None)
        message = Add(n=1) if agent is Ledger else Where()
        async with asyncio.timeout(30):
            await asyncio.gather(
                *(k.ref(name, key).ask(message, timeout=20) for key in KEYS for k in kernels)
            )
            where = {
                key: {await k.ref(name, key).ask(Where(), timeout=20) for k in kernels}
                for key in KEYS
            }
        starts = {key: STARTS[f"{name}/{key}"] for key in KEYS}
        assert all(len(started) == 1 for started in starts.values()), {
            key: s for key, s in starts.items() if len(s) != 1
        }
        assert where == {key: set(starts[key]) for key in KEYS}  # all three reach that one
        assert len({s[0] for s in starts.values()}) == 3  # the agents spread over the nodes
        activations = sum(k.stats().types[name].activations for k in kernels)
        assert activations >= len(KEYS)  # losers of a claim race forward and retire
        if agent is Ledger:
            totals = [await a.ref(name, key).ask(Total(), timeout=10) for key in KEYS]
            assert totals == [3] * len(KEYS)  # every node's increment, on the one owner


def test_a_placement_that_cannot_hold_is_refused_at_registration() -> None:
    from kerna import Kernel, RegistrationError

    kernel = Kernel()
    with pytest.raises(RegistrationError, match="'Ledger' is stateful.*not 'hash'"):
        kernel.register(Ledger, placement="hash")
    with pytest.raises(ValueError, match="placement of 'Tracked' must be one of"):
        kernel.register(Tracked, placement="random")
    assert kernel.register(Tracked, placement="local") == "Tracked"
