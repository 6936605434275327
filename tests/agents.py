"""Message and agent types shared by the kernel tests."""

from __future__ import annotations

import asyncio
from typing import ClassVar

from kerna import Agent, Message, handler


class Ping(Message):
    n: int


class Pong(Message):
    n: int


class Boom(Message):
    text: str = "boom"


class Slow(Message):
    seconds: float


class Record(Message):
    sender: str
    seq: int


class Echo(Agent):
    """Replies Pong to Ping; raises on Boom; sleeps on Slow."""

    @handler
    async def ping(self, msg: Ping) -> Pong:
        return Pong(n=msg.n)

    @handler
    async def boom(self, msg: Boom) -> None:
        raise ValueError(msg.text)

    @handler
    async def slow(self, msg: Slow) -> str:
        await asyncio.sleep(msg.seconds)
        return "done"


class Recorder(Agent):
    """Appends what it receives to a class-level log keyed by agent key."""

    log: ClassVar[dict[str, list[object]]] = {}

    @handler
    async def record(self, msg: Record) -> None:
        Recorder.log.setdefault(self.id.key, []).append(msg)

    @handler
    async def ping(self, msg: Ping) -> int:
        Recorder.log.setdefault(self.id.key, []).append(msg)
        return len(Recorder.log[self.id.key])
