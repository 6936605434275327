"""Graceful stop: drain, cancel, on_stop once, nothing left running."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any, ClassVar

import pytest

from kerna import Agent, DeadLetter, Kernel, KernelStopped, Message, handler

from .agents import Boom, Echo, Ping, Pong, Slow
from .conftest import assert_no_stray_tasks

pytestmark = pytest.mark.anyio


class Work(Message):
    n: int
    seconds: float = 0.0


class Worker(Agent):
    done: ClassVar[list[int]] = []
    stops: ClassVar[list[str]] = []

    async def on_stop(self) -> None:
        Worker.stops.append(self.id.key)

    @handler
    async def work(self, msg: Work) -> int:
        await asyncio.sleep(msg.seconds)
        Worker.done.append(msg.n)
        if msg.n % 2 == 0 and msg.n < 10:  # agents keep talking while the kernel drains
            await self.ref(Worker, "peer").tell(Work(n=msg.n + 101))
        return msg.n


@pytest.fixture(autouse=True)
def _reset() -> None:
    Worker.done = []
    Worker.stops = []


async def test_stop_drains_queued_work_within_grace() -> None:
    before = asyncio.all_tasks()
    kernel = Kernel()
    await kernel.start()
    kernel.register(Worker)
    for i in range(10):
        await kernel.ref(Worker, f"w{i % 3}").tell(Work(n=i, seconds=0.001))
    await asyncio.wait_for(kernel.stop(grace=5.0), 10)
    assert sorted(Worker.done) == sorted([*range(10), 101, 103, 105, 107, 109])
    assert sorted(Worker.stops) == ["peer", "w0", "w1", "w2"]  # once per activation
    assert kernel.stats().types["Worker"].active == 0
    assert_no_stray_tasks(before)


async def test_stop_while_busy_cancels_after_grace_and_fails_pending() -> None:
    before = asyncio.all_tasks()
    kernel = Kernel()
    await kernel.start()
    kernel.register(Echo, mailbox_size=2)
    kernel.register(Worker)
    ref = kernel.ref(Echo, "busy")
    running = asyncio.ensure_future(ref.ask(Slow(seconds=30)))
    queued = asyncio.ensure_future(ref.ask(Ping(n=1)))
    told = asyncio.ensure_future(ref.tell(Ping(n=2)))
    parked = asyncio.ensure_future(ref.ask(Ping(n=3)))  # mailbox full: parked sender
    await kernel.ref(Worker, "w").ask(Work(n=1))
    await asyncio.sleep(0)
    assert not parked.done()
    await asyncio.wait_for(kernel.stop(grace=0.05), 5)
    for pending in (running, queued, parked):
        with pytest.raises(KernelStopped):
            await asyncio.wait_for(pending, 5)
    await asyncio.wait_for(told, 5)
    assert Worker.stops == ["w"]
    assert kernel.stats().dead_letters >= 1  # the accepted tell was not handled
    assert_no_stray_tasks(before)


async def test_stop_is_idempotent_and_concurrent_stops_share_it() -> None:
    kernel = Kernel()
    await kernel.start()
    kernel.register(Echo)
    await kernel.ref(Echo, "a").tell(Slow(seconds=0.01))
    await asyncio.wait_for(asyncio.gather(kernel.stop(), kernel.stop(), kernel.stop()), 10)
    await asyncio.wait_for(kernel.stop(), 5)
    assert not kernel.running


async def test_stop_before_start_and_double_start() -> None:
    kernel = Kernel()
    await asyncio.wait_for(kernel.stop(), 5)
    with pytest.raises(RuntimeError, match="already stopped"):
        await kernel.start()
    async with Kernel() as running:
        with pytest.raises(RuntimeError, match="already running"):
            await running.start()


async def test_on_stop_errors_are_counted_not_raised() -> None:
    class BadStop(Agent):
        async def on_stop(self) -> None:
            raise RuntimeError("cleanup failed")

        @handler
        async def ping(self, msg: Ping) -> Pong:
            return Pong(n=msg.n)

    kernel = Kernel()
    await kernel.start()
    kernel.register(BadStop)
    await kernel.ref(BadStop, "b").ask(Ping(n=1))
    await asyncio.wait_for(kernel.stop(), 5)
    assert kernel.stats().types["BadStop"].failed == 1


async def test_dead_letter_subscribers_do_not_block_stop() -> None:
    class Sink(Agent):
        @handler
        async def on(self, msg: DeadLetter) -> None:
            await asyncio.sleep(10)

    kernel = Kernel()
    await kernel.start()
    kernel.register(Sink, mailbox_size=1)
    kernel.register(Echo)
    kernel.subscribe(Kernel.DEAD_LETTERS, Sink)
    for _ in range(5):
        await kernel.ref(Echo, "e").tell(Boom())
    await asyncio.wait_for(kernel.stop(grace=0.05), 5)
    assert not kernel.running


async def test_stray_task_check_can_fail() -> None:
    before = asyncio.all_tasks()
    kernel = Kernel()
    await kernel.start()  # the kernel's root task is a kerna task
    with pytest.raises(AssertionError, match="tasks left running"):
        assert_no_stray_tasks(before)
    await asyncio.wait_for(kernel.stop(), 5)
    assert_no_stray_tasks(before)


class _Frameless(Coroutine[Any, Any, None]):
    """A coroutine object without a Python frame, as compiled (Cython) coroutines are."""

    def __init__(self, inner: Coroutine[Any, Any, None]) -> None:
        self._inner = inner

    def send(self, value: Any) -> Any:
        return self._inner.send(value)

    def throw(self, *args: Any) -> Any:
        return self._inner.throw(*args)

    def close(self) -> None:
        self._inner.close()

    def __await__(self) -> Generator[Any, None, None]:
        return self._inner.__await__()


async def test_stray_task_check_counts_only_kernas_own_tasks() -> None:
    before = asyncio.all_tasks()
    release = asyncio.Event()

    async def not_kernas() -> None:
        await asyncio.wait_for(release.wait(), 5)

    plain = asyncio.ensure_future(not_kernas())
    frameless = asyncio.ensure_future(_Frameless(not_kernas()))
    await asyncio.sleep(0)
    assert not plain.done()
    assert not frameless.done()
    assert_no_stray_tasks(before)  # neither is kerna's, and neither breaks the check
    release.set()
    await asyncio.wait_for(asyncio.gather(plain, frameless), 5)
