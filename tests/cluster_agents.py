"""Agents for the cluster tests, importable by a node in another process
(``tests/cluster_node.py``)."""

from __future__ import annotations

from collections import defaultdict

import msgspec

from kerna import Agent, Request, handler


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
