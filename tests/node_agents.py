"""Agents the ``kerna node`` tests load (``[node] agents = ["tests.node_agents"]``):
``setup(kernel)`` registers them and subscribes ``Tally`` to the ``events`` topic."""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec

from kerna import Agent, Kernel, Message, Request, handler

log = logging.getLogger("tests.node_agents")


class Pong(Message):
    n: int


class Ping(Request[Pong]):
    n: int


class Fail(Message):
    why: str


class Echo(Agent):
    @handler
    async def ping(self, msg: Ping) -> Pong:
        log.info("pinged %d", msg.n)
        return Pong(n=msg.n)

    @handler
    async def fail(self, msg: Fail) -> None:
        raise ValueError(msg.why)


class Count(msgspec.Struct, frozen=True):
    n: int = 0


class Inc(Message):
    pause: float = 0.0  # seconds the handler takes (a backlog for the drain test)


class Read(Request[int]):
    pass


class Counter(Agent, state=Count):
    @handler
    async def inc(self, msg: Inc) -> None:
        if msg.pause:
            await asyncio.sleep(msg.pause)
        await self.save(Count(self.state.n + 1))

    @handler
    async def read(self, msg: Read) -> int:
        return int(self.state.n)


class Noted(Message, tag="tests.noted"):
    text: str


class Tally(Agent, state=Count):
    """Counts the ``Noted`` events published on ``events``."""

    @handler
    async def noted(self, msg: Noted) -> None:
        await self.save(Count(self.state.n + 1))

    @handler
    async def read(self, msg: Read) -> int:
        return int(self.state.n)


class Block(Request[None]):
    seconds: float


class Blocker(Agent):
    """Blocks the event loop (a handler calling blocking code): what /healthz reports."""

    @handler
    async def block(self, msg: Block) -> None:
        time.sleep(msg.seconds)  # noqa: ASYNC251 - blocking the loop is the point


class Hang(Message):
    pass


class Stuck(Agent):
    """Its handler never returns on its own: what a second signal has to cut short."""

    @handler
    async def hang(self, msg: Hang) -> None:
        await asyncio.Event().wait()


def setup(kernel: Kernel) -> None:
    for cls in (Echo, Counter, Tally, Stuck, Blocker):
        kernel.register(cls)
    kernel.subscribe("events", Tally, key=lambda event: "all")
