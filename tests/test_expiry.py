"""An ask nobody waits for any more is not handled: it is counted as expired."""

from __future__ import annotations

import asyncio

import pytest

from kerna import Agent, AskTimeout, Kernel, Message, handler

from .agents import Ping, Pong

pytestmark = pytest.mark.anyio


class Hold(Message):
    pass


class Costly(Agent):
    """Counts its handler runs; Hold blocks it until the test opens the gate."""

    runs: list[int]
    gate: asyncio.Event
    entered: asyncio.Event

    @handler
    async def hold(self, msg: Hold) -> None:
        Costly.entered.set()
        await Costly.gate.wait()

    @handler
    async def ping(self, msg: Ping) -> Pong:
        Costly.runs.append(msg.n)
        return Pong(n=msg.n)


@pytest.fixture(autouse=True)
def _reset() -> None:
    Costly.runs, Costly.gate, Costly.entered = [], asyncio.Event(), asyncio.Event()


async def _blocked(kernel: Kernel, key: str) -> None:
    await kernel.ref(Costly, key).tell(Hold())
    async with asyncio.timeout(5):
        await Costly.entered.wait()


async def test_asks_that_timed_out_in_the_mailbox_are_not_handled(kernel: Kernel) -> None:
    kernel.register(Costly)
    await _blocked(kernel, "c")
    ref = kernel.ref(Costly, "c")
    asks = [asyncio.ensure_future(ref.ask(Ping(n=i), timeout=0.05)) for i in range(100)]
    done = await asyncio.wait_for(asyncio.gather(*asks, return_exceptions=True), 5)
    assert all(isinstance(d, AskTimeout) for d in done)
    Costly.gate.set()
    assert await ref.ask(Ping(n=-1), timeout=5) == Pong(n=-1)
    assert Costly.runs == [-1]  # today: every abandoned ask ran first
    stats = kernel.stats().types["Costly"]
    assert stats.expired == 100
    assert (stats.handled, stats.late_replies) == (2, 0)


async def test_an_ask_whose_asker_was_cancelled_is_not_handled(kernel: Kernel) -> None:
    kernel.register(Costly)
    await _blocked(kernel, "c")
    ref = kernel.ref(Costly, "c")
    gone = asyncio.ensure_future(ref.ask(Ping(n=1), timeout=30))
    kept = asyncio.ensure_future(ref.ask(Ping(n=2), timeout=30))
    await asyncio.sleep(0)  # both are in the mailbox
    gone.cancel()
    Costly.gate.set()
    assert await asyncio.wait_for(kept, 5) == Pong(n=2)
    assert Costly.runs == [2]
    assert kernel.stats().types["Costly"].expired == 1


async def test_a_tell_is_always_handled_however_long_it_waited(kernel: Kernel) -> None:
    kernel.register(Costly)
    await _blocked(kernel, "c")
    ref = kernel.ref(Costly, "c")
    for i in range(5):
        await ref.tell(Ping(n=i))
    Costly.gate.set()
    assert await ref.ask(Ping(n=9), timeout=5) == Pong(n=9)
    assert Costly.runs == [0, 1, 2, 3, 4, 9]
    assert kernel.stats().types["Costly"].expired == 0
