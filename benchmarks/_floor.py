"""The plain-asyncio floors: the least work an asyncio actor runtime can do.

One ``asyncio.Queue`` mailbox of kerna's default capacity and one task per agent; the
task calls ``async def handle(msg)`` per message. A mailbox item is ``(message, reply)``
(``reply`` is None for a tell), because one mailbox carries both tells and asks. An ask
is a Future, a ``loop.call_later`` timeout timer and an await; the agent sets the
result (or the exception, so the agent survives a failing handler). Kerna does all of
this too, so a ratio against the floor is the price of kerna's extras.

Two floors with the same semantics (same bounded mailbox, same backpressure, same
clocks), differing only in how they touch the queue:

- the **Queue floor** (``lean=False``) awaits ``Queue.put`` and ``Queue.get`` for every
  message: a second coroutine per send and per receive, on top of the ``tell``;
- the **lean floor** (``lean=True``) calls ``put_nowait`` when the mailbox has room and
  ``get_nowait`` when it holds a message, and awaits ``put`` / ``get`` only to wait for
  room or for a message, as kerna appends to and pops from a deque.
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

__all__ = ["FloorRef", "LeanFloorRef", "w1", "w2_concurrent", "w2_sequential", "w3", "w4_activate"]

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


async def _lean_loop(mailbox: asyncio.Queue[Item], handle: Handle) -> None:
    get_nowait = mailbox.get_nowait
    while True:
        # get_nowait also wakes a sender waiting for room, as get does.
        message, reply = get_nowait() if mailbox.qsize() else await mailbox.get()
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
    """One Queue-floor agent: its mailbox and its task; every send awaits ``put``."""

    __slots__ = ("mailbox", "task")

    def __init__(self, handle: Handle) -> None:
        self.mailbox: asyncio.Queue[Item] = asyncio.Queue(MAILBOX)
        self.task = asyncio.get_running_loop().create_task(self._loop(self.mailbox, handle))

    _loop = staticmethod(_agent_loop)

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


class LeanFloorRef(FloorRef):
    """One lean-floor agent: ``put_nowait`` when there is room, else wait for room.

    Every workload has one sender per mailbox or never fills it (W2's 64 callers against
    a capacity of 1000), so taking free room ahead of a sender already waiting for it
    (``asyncio.Queue`` allows that to ``put_nowait``; kerna does not) never happens here.
    """

    __slots__ = ()

    _loop = staticmethod(_lean_loop)

    async def tell(self, message: Any) -> None:
        mailbox = self.mailbox
        if mailbox.full():
            await mailbox.put((message, None))
        else:
            mailbox.put_nowait((message, None))

    async def ask(self, message: Any, timeout: float = ASK_TIMEOUT) -> Any:
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Any] = loop.create_future()
        mailbox = self.mailbox
        if mailbox.full():
            await mailbox.put((message, reply))
        else:
            mailbox.put_nowait((message, reply))
        timer = loop.call_later(timeout, _expire, reply)
        try:
            return await reply
        finally:
            timer.cancel()


def _ref_class(lean: bool) -> type[FloorRef]:
    return LeanFloorRef if lean else FloorRef


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


def w1(n: int, loop: LoopName, *, lean: bool = False) -> float:
    """One sender, one agent, ``n`` tells; messages handled per second."""

    async def main() -> float:
        tally = Tally(n)
        ref = _ref_class(lean)(Counter(tally).handle)
        t0 = time.perf_counter()
        for i in range(n):
            await ref.tell(Ping(i))
        await until_done(tally, "floor w1")
        elapsed = time.perf_counter() - t0
        await _stop([ref])
        return n / elapsed

    return run_async(main, loop)


def w2_sequential(n: int, loop: LoopName, *, lean: bool = False) -> tuple[float, float]:
    """``n`` sequential asks; (p50, p99) round-trip latency in microseconds."""

    async def main() -> tuple[float, float]:
        ref = _ref_class(lean)(Echo().handle)
        clock = time.perf_counter
        lat: list[float] = []
        for i in range(n):
            t0 = clock()
            await ref.ask(Ping(i))
            lat.append(clock() - t0)
        await _stop([ref])
        return percentile(lat, 50) * 1e6, percentile(lat, 99) * 1e6

    return run_async(main, loop)


def w2_concurrent(callers: int, per_caller: int, loop: LoopName, *, lean: bool = False) -> float:
    """``callers`` tasks asking one agent ``per_caller`` times each; requests per second."""

    async def main() -> float:
        ref = _ref_class(lean)(Echo().handle)

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


def w3(events: int, subscribers: int, loop: LoopName, *, lean: bool = False) -> float:
    """Publish ``events`` to ``subscribers`` agents (a put into each); deliveries/s.

    The Queue floor's publish awaits each subscriber's ``tell``; the lean floor's is one
    coroutine per event that ``put_nowait``s into each mailbox with room (and waits for
    room in a full one), as ``kernel.publish`` is one coroutine appending to each.
    """

    async def main() -> float:
        tally = Tally(events * subscribers)
        ref_class = _ref_class(lean)
        refs = [ref_class(Counter(tally).handle) for _ in range(subscribers)]

        async def publish_queue(message: Ping) -> None:
            for ref in refs:
                await ref.tell(message)

        async def publish_lean(message: Ping) -> None:
            item: Item = (message, None)
            for ref in refs:
                mailbox = ref.mailbox
                if mailbox.full():
                    await mailbox.put(item)
                else:
                    mailbox.put_nowait(item)

        publish = publish_lean if lean else publish_queue
        t0 = time.perf_counter()
        for i in range(events):
            await publish(Ping(i))
        await until_done(tally, "floor w3")
        elapsed = time.perf_counter() - t0
        await _stop(refs)
        return events * subscribers / elapsed

    return run_async(main, loop)


async def w4_activate(n: int, *, lean: bool = False) -> tuple[float, Callable[[], Awaitable[None]]]:
    """Activate ``n`` agents (directory: key -> agent) with one tell each.

    Returns the seconds until every message was handled, and a cleanup coroutine.
    """
    tally = Tally(n)
    directory: dict[str, FloorRef] = {}
    ref_class = _ref_class(lean)

    async def tell(key: str, message: Ping) -> None:
        ref = directory.get(key)
        if ref is None:
            ref = directory[key] = ref_class(Counter(tally).handle)
        await ref.tell(message)

    t0 = time.perf_counter()
    for i in range(n):
        await tell(str(i), Ping(i))
    await until_done(tally, "floor w4_activate")
    elapsed = time.perf_counter() - t0

    async def cleanup() -> None:
        await _stop(list(directory.values()))

    return elapsed, cleanup
