"""autogen-core's side: ``SingleThreadedAgentRuntime`` with ``RoutedAgent`` handlers.

autogen-core's one-way primitive is ``publish_message`` (``send_message`` always waits
for the handler's result), so W1 publishes to a topic one agent type subscribes to
(``TypeSubscription``; the topic source is the agent key). W2 uses ``send_message``, its
request/response call. W3 subscribes ten agent types to one topic type. Messages are
dataclasses, autogen-core's idiom. Its runtime has no mailbox bound and no ask timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from autogen_core import (
    AgentId,
    MessageContext,
    RoutedAgent,
    SingleThreadedAgentRuntime,
    TopicId,
    TypeSubscription,
    message_handler,
)

from ._common import LoopName, Tally, percentile, run_async, until_done

__all__ = ["w1", "w2_concurrent", "w2_sequential", "w3", "w4_activate"]


@dataclass
class APing:
    n: int


@dataclass
class APong:
    n: int


class ACounter(RoutedAgent):
    """Counts messages into a shared tally."""

    def __init__(self, tally: Tally) -> None:
        super().__init__("counter")
        self.tally = tally

    @message_handler
    async def on_ping(self, message: APing, ctx: MessageContext) -> None:
        tally = self.tally
        tally.count += 1
        if tally.count == tally.target:
            tally.done.set_result(None)


class AEcho(RoutedAgent):
    """Replies ``APong(n)`` to ``APing(n)``."""

    def __init__(self) -> None:
        super().__init__("echo")

    @message_handler
    async def on_ping(self, message: APing, ctx: MessageContext) -> APong:
        return APong(message.n)


async def _counters(
    runtime: SingleThreadedAgentRuntime, topic: str, types: list[str], tally: Tally
) -> None:
    for name in types:
        await ACounter.register(runtime, name, lambda: ACounter(tally))
        await runtime.add_subscription(TypeSubscription(topic_type=topic, agent_type=name))


def w1(n: int, loop: LoopName) -> float:
    """One sender, one agent, ``n`` published messages; messages handled per second."""

    async def main() -> float:
        tally = Tally(n)
        runtime = SingleThreadedAgentRuntime()
        await _counters(runtime, "w1", ["counter"], tally)
        runtime.start()
        topic = TopicId("w1", "a")
        t0 = time.perf_counter()
        for i in range(n):
            await runtime.publish_message(APing(i), topic)
        await until_done(tally, "autogen-core w1")
        elapsed = time.perf_counter() - t0
        await runtime.stop_when_idle()
        return n / elapsed

    return run_async(main, loop)


async def _echo_runtime() -> SingleThreadedAgentRuntime:
    runtime = SingleThreadedAgentRuntime()
    await AEcho.register(runtime, "echo", AEcho)
    runtime.start()
    return runtime


def w2_sequential(n: int, loop: LoopName) -> tuple[float, float]:
    """``n`` sequential ``send_message`` calls; (p50, p99) latency in microseconds."""

    async def main() -> tuple[float, float]:
        runtime = await _echo_runtime()
        target = AgentId("echo", "a")
        clock = time.perf_counter
        lat: list[float] = []
        for i in range(n):
            t0 = clock()
            await runtime.send_message(APing(i), target)
            lat.append(clock() - t0)
        await runtime.stop_when_idle()
        return percentile(lat, 50) * 1e6, percentile(lat, 99) * 1e6

    return run_async(main, loop)


def w2_concurrent(callers: int, per_caller: int, loop: LoopName) -> float:
    """``callers`` tasks calling ``send_message`` ``per_caller`` times each; req/s."""

    async def main() -> float:
        runtime = await _echo_runtime()
        target = AgentId("echo", "a")

        async def caller() -> None:
            for i in range(per_caller):
                await runtime.send_message(APing(i), target)

        t0 = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for _ in range(callers):
                tg.create_task(caller())
        elapsed = time.perf_counter() - t0
        await runtime.stop_when_idle()
        return callers * per_caller / elapsed

    return run_async(main, loop)


def w3(events: int, subscribers: int, loop: LoopName) -> float:
    """``subscribers`` agent types subscribed to one topic type; deliveries per second."""

    async def main() -> float:
        tally = Tally(events * subscribers)
        runtime = SingleThreadedAgentRuntime()
        await _counters(runtime, "w3", [f"sub{i}" for i in range(subscribers)], tally)
        runtime.start()
        topic = TopicId("w3", "a")
        t0 = time.perf_counter()
        for i in range(events):
            await runtime.publish_message(APing(i), topic)
        await until_done(tally, "autogen-core w3")
        elapsed = time.perf_counter() - t0
        await runtime.stop_when_idle()
        return events * subscribers / elapsed

    return run_async(main, loop)


async def w4_activate(n: int) -> tuple[float, Callable[[], Awaitable[None]]]:
    """Activate ``n`` agents (one per topic source) with one published message each."""
    tally = Tally(n)
    runtime = SingleThreadedAgentRuntime()
    await _counters(runtime, "w4", ["counter"], tally)
    runtime.start()
    t0 = time.perf_counter()
    for i in range(n):
        await runtime.publish_message(APing(i), TopicId("w4", str(i)))
    await until_done(tally, "autogen-core w4_activate")
    elapsed = time.perf_counter() - t0
    return elapsed, runtime.stop_when_idle
