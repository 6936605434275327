"""Agents for the cluster tests, importable by a node in another process
(``tests/cluster_node.py``)."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import msgspec

from kerna import Agent, Message, Request, handler


class Where(Request[str]):
    """Asks an agent which node it runs on."""


class Charge(Request[int]):
    amount: int


class Billing(Agent):
    """A volatile agent that keeps a running total in memory."""

    def __init__(self) -> None:
        self.total = 0

    @handler
    async def where(self, msg: Where) -> str:
        return self.kernel.node_id

    @handler
    async def charge(self, msg: Charge) -> int:
        self.total += msg.amount
        return self.total


STARTS: defaultdict[str, list[str]] = defaultdict(list)
"""Per agent key, the node ids it started on (every kernel of the test process)."""


class Tracked(Agent):
    """A volatile agent recording each of its activations in ``STARTS``."""

    async def on_start(self) -> None:
        STARTS[f"{self.id.type}/{self.id.key}"].append(self.kernel.node_id)

    @handler
    async def where(self, msg: Where) -> str:
        return self.kernel.node_id


class Tally(msgspec.Struct, frozen=True):
    n: int = 0


class Add(Request[int]):
    n: int


class Total(Request[int]):
    pass


class Ledger(Agent, state=Tally):
    """A stateful counter; its activations are recorded in ``STARTS`` too."""

    async def on_start(self) -> None:
        STARTS[f"{self.id.type}/{self.id.key}"].append(self.kernel.node_id)

    @handler
    async def add(self, msg: Add) -> int:
        await self.save(Tally(self.state.n + msg.n))
        return int(self.state.n)

    @handler
    async def total(self, msg: Total) -> int:
        return int(self.state.n)

    @handler
    async def where(self, msg: Where) -> str:
        return self.kernel.node_id


class Stamped(Message):
    """``Mirror``'s reply: the asker and request number it was given, and its node."""

    client: str
    n: int
    node: str


class Stamp(Request[Stamped]):
    """Asks ``Mirror`` to send back who asked and which request this was."""

    client: str
    n: int


class Mirror(Agent):
    """A volatile agent answering each ``Stamp`` with its own fields (and where it ran),
    for the tests that check every asker gets its own reply."""

    @handler
    async def stamp(self, msg: Stamp) -> Stamped:
        return Stamped(msg.client, msg.n, self.kernel.node_id)


class Book(msgspec.Struct, frozen=True):
    """Per writing node, the sum of the credits it saved: the store tells who wrote."""

    by: dict[str, int] = msgspec.field(default_factory=dict)


class Credit(Request[int]):
    n: int


class Journal(Agent, state=Book):
    """A stateful counter whose state records which node saved each increment."""

    @handler
    async def credit(self, msg: Credit) -> int:
        node = self.kernel.node_id
        by = dict(self.state.by)
        by[node] = by.get(node, 0) + msg.n
        await self.save(Book(by))
        return sum(by.values())

    @handler
    async def total(self, msg: Total) -> int:
        return sum(self.state.by.values())

    @handler
    async def where(self, msg: Where) -> str:
        return self.kernel.node_id


class Hang(Request[int]):
    """Asks an agent to take ``seconds`` before it answers."""

    seconds: float


class Stall(Agent):
    """A volatile agent whose answer takes as long as it is asked to."""

    @handler
    async def hang(self, msg: Hang) -> int:
        await asyncio.sleep(msg.seconds)
        return 0

    @handler
    async def where(self, msg: Where) -> str:
        return self.kernel.node_id
