"""Message and agent types shared by the kernel tests."""

from __future__ import annotations

import asyncio
from typing import ClassVar

import msgspec

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


# -- stateful agents -------------------------------------------------------------------


class Count(msgspec.Struct, frozen=True):
    n: int = 0


class Inc(Message):
    pass


class Read(Message):
    pass


class Counter(Agent, state=Count):
    """Counts: ``Inc`` saves n + 1 and returns it; ``Read`` returns n."""

    @handler
    async def inc(self, msg: Inc) -> int:
        await self.save(Count(self.state.n + 1))
        return int(self.state.n)

    @handler
    async def read(self, msg: Read) -> int:
        return int(self.state.n)


class Value(msgspec.Struct, frozen=True):
    v: str = ""


class SetValue(Message):
    v: str


class GetValue(Message):
    pass


class Register(Agent, state=Value):
    """A read/write register: ``SetValue`` returns the revision written."""

    @handler
    async def set(self, msg: SetValue) -> int:
        await self.save(Value(v=msg.v))
        return self._activation.state_rev

    @handler
    async def get(self, msg: GetValue) -> str:
        return str(self.state.v)
