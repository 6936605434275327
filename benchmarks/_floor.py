"""The plain-asyncio floor: the least work an asyncio actor runtime can do.

One ``asyncio.Queue`` mailbox of kerna's default capacity and one task per agent; the
task calls ``async def handle(msg)`` per message. A mailbox item is ``(message, reply)``
(``reply`` is None for a tell), because one mailbox carries both tells and asks. An ask
is a Future, a ``loop.call_later`` timeout timer and an await; the agent sets the
result (or the exception, so the agent survives a failing handler). Kerna does all of
this too, so a ratio against the floor is the price of kerna's extras.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ._common import (
    ASK_TIMEOUT,
    MAILBOX,
    LoopName,
    Ping,
    Pong,
    Tally,
    percentile,
    run_async,
    until_done,
)

__all__ = ["FloorRef", "w1", "w2_concurrent", "w2_sequential", "w3", "w4_activate"]

Handle = Callable[[Any], Awaitable[Any]]
Item = tuple[Any, "asyncio.Future[Any] | None"]


async def _agent_loop(mailbox: asyncio.Queue[Item], handle: Handle) -> None:
    while True:
        message, reply = await mailbox.get()
        try:
            result = await handle(message)
        except Exception as exc:
            if reply is not None and not reply.done():
                reply.set_exception(exc)
            continue
        if reply is not None and not reply.done():
            reply.set_result(result)


def _expire(reply: asyncio.Future[Any]) -> None:
    if not reply.done():
        reply.set_exception(TimeoutError("ask timed out"))


class FloorRef:
    """One floor agent: its mailbox and its task."""

    __slots__ = ("mailbox", "task")

    def __init__(self, handle: Handle) -> None:
        self.mailbox: asyncio.Queue[Item] = asyncio.Queue(MAILBOX)
        self.task = asyncio.get_running_loop().create_task(_agent_loop(self.mailbox, handle))

    async def tell(self, message: Any) -> None:
        await self.mailbox.put((message, None))

    async def ask(self, message: Any, timeout: float = ASK_TIMEOUT) -> Any:
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Any] = loop.create_future()
        await self.mailbox.put((message, reply))
        timer = loop.call_later(timeout, _expire, reply)
        try:
            return await reply
        finally:
            timer.cancel()


class Counter:
    """Counts messages into a shared tally (W1, W3, W4)."""

    __slots__ = ("tally",)

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    async def handle(self, msg: Ping) -> None:
        tally = self.tally
        tally.count += 1
        if tally.count == tally.target:
            tally.done.set_result(None)


class Echo:
    """Replies ``Pong(n)`` to ``Ping(n)`` (W2)."""

    __slots__ = ()

    async def handle(self, msg: Ping) -> Pong:
        return Pong(msg.n)


async def _stop(refs: list[FloorRef]) -> None:
    for ref in refs:
        ref.task.cancel()
    await asyncio.gather(*(ref.task for ref in refs), return_exceptions=True)


def w1(n: int, loop: LoopName) -> float:
    """One sender, one agent, ``n`` tells; messages handled per second."""

    async def main() -> float:
        tally = Tally(n)
        ref = FloorRef(Counter(tally).handle)
        t0 = time.perf_counter()
        for i in range(n):
            await ref.tell(Ping(i))
        await until_done(tally, "floor w1")
        elapsed = time.perf_counter() - t0
        await _stop([ref])
        return n / elapsed

    return run_async(main, loop)


def w2_sequential(n: int, loop: LoopName) -> tuple[float, float]:
    """``n`` sequential asks; (p50, p99) round-trip latency in microseconds."""

    async def main() -> tuple[float, float]:
        ref = FloorRef(Echo().handle)
        clock = time.perf_counter
        lat: list[float] = []
        for i in range(n):
            t0 = clock()
            await ref.ask(Ping(i))
            lat.append(clock() - t0)
        await _stop([ref])
        return percentile(lat, 50) * 1e6, percentile(lat, 99) * 1e6

    return run_async(main, loop)


def w2_concurrent(callers: int, per_caller: int, loop: LoopName) -> float:
    """``callers`` tasks asking one agent ``per_caller`` times each; requests per second."""

    async def main() -> float:
        ref = FloorRef(Echo().handle)

        async def caller() -> None:
            for i in range(per_caller):
                await ref.ask(Ping(i))

        t0 = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for _ in range(callers):
                tg.create_task(caller())
        elapsed = time.perf_counter() - t0
        await _stop([ref])
        return callers * per_caller / elapsed

    return run_async(main, loop)


def w3(events: int, subscribers: int, loop: LoopName) -> float:
    """Publish ``events`` to ``subscribers`` agents (a put into each); deliveries/s."""

    async def main() -> float:
        tally = Tally(events * subscribers)
        refs = [FloorRef(Counter(tally).handle) for _ in range(subscribers)]

        async def publish(message: Ping) -> None:
            for ref in refs:
                await ref.tell(message)

        t0 = time.perf_counter()
        for i in range(events):
            await publish(Ping(i))
        await until_done(tally, "floor w3")
        elapsed = time.perf_counter() - t0
        await _stop(refs)
        return events * subscribers / elapsed

    return run_async(main, loop)


async def w4_activate(n: int) -> tuple[float, Callable[[], Awaitable[None]]]:
    """Activate ``n`` agents (directory: key -> agent) with one tell each.

    Returns the seconds until every message was handled, and a cleanup coroutine.
    """
    tally = Tally(n)
    directory: dict[str, FloorRef] = {}

    async def tell(key: str, message: Ping) -> None:
        ref = directory.get(key)
        if ref is None:
            ref = directory[key] = FloorRef(Counter(tally).handle)
        await ref.tell(message)

    t0 = time.perf_counter()
    for i in range(n):
        await tell(str(i), Ping(i))
    await until_done(tally, "floor w4_activate")
    elapsed = time.perf_counter() - t0

    async def cleanup() -> None:
        await _stop(list(directory.values()))

    return elapsed, cleanup
