"""The cluster benchmarks' stateful agent and its messages, in a module of their own:
a node process runs ``benchmarks._cluster_proc`` as ``__main__``, and the wire tags of
classes defined there would not match the driver's."""

from __future__ import annotations

import msgspec

from kerna import Agent, Request, handler

__all__ = ["Add", "Count", "Counter", "Total", "Touch"]


class Count(msgspec.Struct, frozen=True):
    n: int = 0


class Touch(Request[int]):
    """Activates the counter (claim and load) and reads it."""


class Add(Request[int]):
    n: int


class Total(Request[int]):
    pass


class Counter(Agent, state=Count):
    """A stateful agent: one claim per activation, its state loaded before a message."""

    @handler
    async def touch(self, msg: Touch) -> int:
        return self.state.n

    @handler
    async def add(self, msg: Add) -> int:
        await self.save(Count(self.state.n + msg.n))
        return self.state.n

    @handler
    async def total(self, msg: Total) -> int:
        return self.state.n
