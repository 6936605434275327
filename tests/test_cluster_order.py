"""Per-sender order to one agent holds across nodes (real etcd, tcp): two senders on
two nodes tell an agent on a third 5,000 numbered messages each, through a small
``wait`` mailbox that keeps filling (deliveries park, the peers are paused): each
sender's numbers arrive in order, none twice, none missing."""

from __future__ import annotations

import asyncio

import pytest

from kerna import Agent, Message, Request, handler
from kerna.testing import EtcdMember

from .cluster import hosting, nodes

pytestmark = pytest.mark.anyio

COUNT = 5_000


class Numbered(Message):
    sender: str
    n: int


class Received(Request[dict[str, list[int]]]):
    pass


class Sink(Agent):
    def __init__(self) -> None:
        self.got: dict[str, list[int]] = {}

    @handler
    async def numbered(self, msg: Numbered) -> None:
        self.got.setdefault(msg.sender, []).append(msg.n)
        if msg.n % 64 == 0:
            await asyncio.sleep(0)  # let the mailbox fill behind it

    @handler
    async def received(self, msg: Received) -> dict[str, list[int]]:
        return self.got


async def test_numbers_from_two_nodes_reach_an_agent_on_a_third_in_each_senders_order(
    etcd_server: EtcdMember,
) -> None:
    async with nodes(etcd_server, 3, ids=["n1", "n2", "n3"]) as (n1, n2, n3):
        n3.register(Sink, mailbox_size=8, overflow="wait")
        for k in (n1, n2):
            await k.wait_members(hosting("Sink", n3), 5)

        async def send(k: object, name: str) -> None:
            assert k is n1 or k is n2
            ref = k.ref("Sink", "s")
            for n in range(COUNT):
                await ref.tell(Numbered(sender=name, n=n))

        async with asyncio.timeout(60):
            await asyncio.gather(send(n1, "n1"), send(n2, "n2"))
            # each sender's ask comes after its tells on the same connection
            for k in (n1, n2):
                got = await k.ref("Sink", "s").ask(Received(), timeout=10)
                assert got[k.node_id] == list(range(COUNT))
        assert n3.stats().types["Sink"].handled == 2 * COUNT + 2
