"""Typed asks, checked statically: ``make typecheck`` runs ``mypy --strict`` on this file.

Every ``assert_type`` below is a claim about the type mypy infers; it fails the type
check if the inferred type differs (``Any`` included), so a regression of ``ask`` to
``Any`` is caught. The same functions also run, against a real kernel, in
``tests/test_typed_asks.py``: the static types are the runtime types.
"""

from __future__ import annotations

from typing import Any, assert_type

from kerna import Agent, BlockingKernel, Kernel, Message, Request, handler


class Pong(Message):
    n: int


class FastPong(Pong):
    pass


class Ping(Request[Pong]):
    n: int


class LoudPing(Ping):
    """Inherits Ping's reply type."""


class FastPing(Ping):
    """Inherits Ping's reply type too; its handler returns a subclass of it."""


class Lookup(Request[Pong | None]):
    n: int


class Count(Request[int]):
    pass


class Ack(Request[None]):
    """Answered with ``None``: an acknowledgement."""


class Relay(Request[Pong]):
    n: int


class Note(Message):
    """A plain message: asking it gives ``Any``."""

    n: int


class Echo(Agent):
    @handler
    async def ping(self, msg: Ping) -> Pong:
        return Pong(n=msg.n)

    @handler
    async def fast(self, msg: FastPing) -> FastPong:
        return FastPong(n=msg.n)

    @handler
    async def lookup(self, msg: Lookup) -> Pong | None:
        return Pong(n=msg.n) if msg.n >= 0 else None

    @handler
    async def count(self, msg: Count) -> int:
        return 3

    @handler
    async def ack(self, msg: Ack) -> None:
        return None

    @handler
    async def note(self, msg: Note) -> Pong:
        return Pong(n=msg.n)

    @handler
    async def relay(self, msg: Relay) -> Pong:
        pong = await self.ref(Echo, "relayed").ask(Ping(n=msg.n))  # from inside a handler
        assert_type(pong, Pong)
        return pong


async def asks(kernel: Kernel) -> None:
    """Asks through ``AgentRef``: each result has its request's reply type."""
    ref = kernel.ref(Echo, "a")
    pong = await ref.ask(Ping(n=1), timeout=5)
    assert_type(pong, Pong)
    assert pong == Pong(n=1)
    loud = await ref.ask(LoudPing(n=2))
    assert_type(loud, Pong)
    assert loud == Pong(n=2)
    fast = await ref.ask(FastPing(n=3))
    assert_type(fast, Pong)
    assert type(fast) is FastPong
    found = await ref.ask(Lookup(n=-1))
    assert_type(found, Pong | None)
    assert found is None
    count = await ref.ask(Count())
    assert_type(count, int)
    assert count == 3
    await ref.ask(Ack())  # a Request[None]: mypy refuses to use its (None) result
    relayed = await ref.ask(Relay(n=4))
    assert_type(relayed, Pong)
    assert relayed == Pong(n=4)
    anything = await ref.ask(Note(n=5))
    assert_type(anything, Any)
    assert anything == Pong(n=5)


def blocking_asks(kernel: BlockingKernel) -> None:
    """The same through ``BlockingRef``."""
    ref = kernel.ref(Echo, "a")
    pong = ref.ask(Ping(n=1), timeout=5)
    assert_type(pong, Pong)
    assert pong == Pong(n=1)
    fast = ref.ask(FastPing(n=3))
    assert_type(fast, Pong)
    assert type(fast) is FastPong
    found = ref.ask(Lookup(n=7))
    assert_type(found, Pong | None)
    assert found == Pong(n=7)
    anything = ref.ask(Note(n=5))
    assert_type(anything, Any)
    assert anything == Pong(n=5)
