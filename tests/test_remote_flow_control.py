"""Flow control across nodes: a flood of tells from one node into a slow agent on
another with a full ``wait`` mailbox backs up to the sender (its tells wait), instead
of piling parked deliveries (and a task each) on the receiver; when the agent catches
up every tell arrives, in order."""

from __future__ import annotations

import asyncio

import pytest

from kerna import Agent, Kernel, Message, handler

pytestmark = pytest.mark.anyio

TELLS = 20_000
BODY = "x" * 1024  # 20 MiB in all: more than the sockets between the nodes buffer


class Item(Message):
    n: int
    body: str = ""


class Gated(Agent):
    gate: asyncio.Event
    last: asyncio.Event
    seen: list[int]

    @handler
    async def item(self, msg: Item) -> None:
        await self.gate.wait()
        self.seen.append(msg.n)
        if msg.n == TELLS - 1:
            self.last.set()


@pytest.mark.parametrize("url", ["tcp://127.0.0.1:0", "inproc://"])
async def test_a_flood_into_a_full_mailbox_backs_up_to_the_sender(url: str) -> None:
    gate, last = asyncio.Event(), asyncio.Event()
    seen: list[int] = []

    def make() -> Gated:
        agent = Gated()
        agent.gate, agent.last, agent.seen = gate, last, seen
        return agent

    async with (
        Kernel(transport=url, stop_grace=0.1) as sender,
        Kernel(transport=url, stop_grace=0.1) as receiver,
    ):
        receiver.register(Gated, factory=make, mailbox_size=10, overflow="wait")
        assert receiver.address is not None
        ref = sender.ref(Gated, "g", node=receiver.address)
        tasks_before = len(asyncio.all_tasks())

        async def flood() -> None:
            for n in range(TELLS):
                await ref.tell(Item(n=n, body=BODY))

        flooding = asyncio.ensure_future(flood())
        try:
            # While the agent is stuck the sender cannot finish: the receiver stopped
            # reading from it, so its tells wait for room.
            done, _ = await asyncio.wait((flooding,), timeout=1.0)
            assert not done, "20,000 tells of 1 KiB went out while the agent took none"
            # Nothing piles up as tasks on either node meanwhile.
            assert len(asyncio.all_tasks()) - tasks_before < 50
            gate.set()
            async with asyncio.timeout(30):
                await flooding
                await last.wait()
        finally:
            flooding.cancel()
        assert seen == list(range(TELLS))
