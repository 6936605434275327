"""kerna's side of each workload, with default ``Kernel()`` settings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import ClassVar

from kerna import Agent, Kernel, handler

from ._common import LoopName, Ping, Pong, Tally, percentile, run_async, until_done

__all__ = ["w1", "w2_concurrent", "w2_sequential", "w3", "w4_activate"]

TOPIC = "bench.events"


class Counter(Agent):
    """Counts messages into the class's tally (set per run)."""

    tally: ClassVar[Tally]

    @handler
    async def on_ping(self, msg: Ping) -> None:
        tally = self.tally
        tally.count += 1
        if tally.count == tally.target:
            tally.done.set_result(None)


class Echo(Agent):
    """Replies ``Pong(n)`` to ``Ping(n)``."""

    @handler
    async def on_ping(self, msg: Ping) -> Pong:
        return Pong(msg.n)


def _subscriber_class(i: int, tally: Tally) -> type[Agent]:
    """A distinct subscriber agent type (W3 subscribes 10 types to one topic)."""
    return type(f"Subscriber{i}", (Counter,), {"tally": tally})


def w1(n: int, loop: LoopName) -> float:
    """One sender, one agent, ``n`` tells; messages handled per second."""

    async def main() -> float:
        Counter.tally = tally = Tally(n)
        async with Kernel() as kernel:
            kernel.register(Counter)
            ref = kernel.ref(Counter, "a")
            t0 = time.perf_counter()
            for i in range(n):
                await ref.tell(Ping(i))
            await until_done(tally, "kerna w1")
            elapsed = time.perf_counter() - t0
        return n / elapsed

    return run_async(main, loop)


def w2_sequential(n: int, loop: LoopName) -> tuple[float, float]:
    """``n`` sequential asks; (p50, p99) round-trip latency in microseconds."""

    async def main() -> tuple[float, float]:
        async with Kernel() as kernel:
            kernel.register(Echo)
            ref = kernel.ref(Echo, "a")
            clock = time.perf_counter
            lat: list[float] = []
            for i in range(n):
                t0 = clock()
                await ref.ask(Ping(i))
                lat.append(clock() - t0)
        return percentile(lat, 50) * 1e6, percentile(lat, 99) * 1e6

    return run_async(main, loop)


def w2_concurrent(callers: int, per_caller: int, loop: LoopName) -> float:
    """``callers`` tasks asking one agent ``per_caller`` times each; requests per second."""

    async def main() -> float:
        async with Kernel() as kernel:
            kernel.register(Echo)
            ref = kernel.ref(Echo, "a")

            async def caller() -> None:
                for i in range(per_caller):
                    await ref.ask(Ping(i))

            t0 = time.perf_counter()
            async with asyncio.TaskGroup() as tg:
                for _ in range(callers):
                    tg.create_task(caller())
            elapsed = time.perf_counter() - t0
        return callers * per_caller / elapsed

    return run_async(main, loop)


def w3(events: int, subscribers: int, loop: LoopName) -> float:
    """``subscribers`` agent types subscribed to one topic, ``events`` published;
    deliveries per second."""

    async def main() -> float:
        tally = Tally(events * subscribers)
        async with Kernel() as kernel:
            for i in range(subscribers):
                cls = _subscriber_class(i, tally)
                kernel.register(cls)
                kernel.subscribe(TOPIC, cls)
            t0 = time.perf_counter()
            for i in range(events):
                await kernel.publish(TOPIC, Ping(i))
            await until_done(tally, "kerna w3")
            elapsed = time.perf_counter() - t0
        return events * subscribers / elapsed

    return run_async(main, loop)


async def w4_activate(n: int) -> tuple[float, Callable[[], Awaitable[None]]]:
    """Activate ``n`` agents of one type (keys ``"0"``..) with one tell each.

    Returns the seconds until every message was handled, and a cleanup coroutine.
    """
    Counter.tally = tally = Tally(n)
    kernel = Kernel()
    await kernel.start()
    kernel.register(Counter)
    t0 = time.perf_counter()
    for i in range(n):
        await kernel.ref(Counter, str(i)).tell(Ping(i))
    await until_done(tally, "kerna w4_activate")
    elapsed = time.perf_counter() - t0
    return elapsed, kernel.stop
