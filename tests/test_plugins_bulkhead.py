"""kerna.plugins' bulkheads and service tiers, on virtual time: a concurrency limit
per target that one slow dependency cannot exceed, callers waiting within their
deadline, and best-effort targets that never hold a critical workflow."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from kerna import Agent, AskTimeout, ConfigError, Kernel, Message, Request, handler
from kerna.plugins import Failed, Policy, Resilience, degradation, dependency, tier_options
from kerna.testing import VirtualClock

T = TypeVar("T")


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    return VirtualClock().run(scenario)


class Api:
    """A simulated dependency: counts the calls running at once; calls wait on a gate."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.done = 0
        self.gate = asyncio.Event()
        self.full = asyncio.Event()
        self.expect = 0

    async def call(self) -> str:
        self.running += 1
        self.peak = max(self.peak, self.running)
        if self.running >= self.expect:
            self.full.set()
        try:
            await self.gate.wait()
        finally:
            self.running -= 1
        self.done += 1
        return "ok"


class Use(Request[str]):
    dependency: str


class Worker(Agent):
    def __init__(self, apis: dict[str, Api]) -> None:
        self.apis = apis

    @handler
    async def use(self, msg: Use) -> str:
        return await dependency(self, msg.dependency).call(self.apis[msg.dependency].call)


def test_a_bulkhead_bounds_one_dependency_and_leaves_the_others_their_workers() -> None:
    apis = {"slow": Api(), "fast": Api()}
    resilience = Resilience(
        policies={"narrow": Policy(bulkhead=2), "open": Policy()},
        targets={"slow": "narrow", "fast": "open"},
    )

    async def scenario() -> None:
        async with Kernel(middleware=[resilience]) as kernel:
            kernel.register(Worker, factory=lambda: Worker(apis))
            apis["slow"].expect = 2
            slow = [
                asyncio.create_task(kernel.ref(Worker, f"s{i}").ask(Use("slow"))) for i in range(6)
            ]
            async with asyncio.timeout(5):
                await apis["slow"].full.wait()
            await asyncio.sleep(1)  # every worker had time to reach the dependency
            stats = resilience.target_stats("slow").bulkhead
            assert stats is not None
            assert (stats.active, stats.waiting) == (2, 4)
            # the other dependency still gets every worker it asks for
            apis["fast"].expect = 3
            fast = [
                asyncio.create_task(kernel.ref(Worker, f"f{i}").ask(Use("fast"))) for i in range(3)
            ]
            async with asyncio.timeout(5):
                await apis["fast"].full.wait()
            apis["fast"].gate.set()
            assert await asyncio.gather(*fast) == ["ok"] * 3
            apis["slow"].gate.set()
            assert await asyncio.gather(*slow) == ["ok"] * 6
        assert apis["slow"].peak == 2
        assert apis["fast"].peak == 3

    run(scenario)


class Job(Request[str]):
    pass


class Service(Agent):
    def __init__(self, api: Api) -> None:
        self.api = api

    @handler
    async def job(self, msg: Job) -> str:
        return await self.api.call()


def test_callers_wait_for_a_slot_within_their_deadline_then_time_out_uncalled() -> None:
    api = Api()
    resilience = Resilience(policies={"one": Policy(bulkhead=1)}, targets={Service: "one"})

    async def scenario() -> None:
        async with Kernel(middleware=[resilience]) as kernel:
            kernel.register(Service, factory=lambda: Service(api))
            api.expect = 1
            first = asyncio.create_task(kernel.ref(Service, "a").ask(Job()))
            async with asyncio.timeout(5):
                await api.full.wait()
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(AskTimeout, match="bulkhead of Service"):
                await kernel.ref(Service, "b").ask(Job(), timeout=0.5)
            assert loop.time() - start == pytest.approx(0.5)
            waiter = asyncio.create_task(kernel.ref(Service, "c").ask(Job()))
            await asyncio.sleep(1)
            api.gate.set()
            assert await first == "ok"
            assert await waiter == "ok"
        stats = resilience.target_stats(Service).bulkhead
        assert stats is not None
        assert (stats.peak, stats.timed_out, api.done) == (1, 1, 2)

    run(scenario)


# -- tiers -------------------------------------------------------------------------------


class Mood(Message):
    label: str


class Analyse(Request[Mood]):
    text: str


class Note(Message):
    text: str


class Sentiment(Agent):
    """Best effort: hangs (a model that stopped answering)."""

    @handler
    async def analyse(self, msg: Analyse) -> Mood:
        await asyncio.sleep(3600)
        return Mood("never")

    @handler
    async def note(self, msg: Note) -> None:
        await asyncio.sleep(3600)


class Checkout(Agent):
    """Critical: uses the sentiment if it comes in time, tells it notes."""

    @handler
    async def analyse(self, msg: Analyse) -> Mood:
        for i in range(5):  # into a full best-effort mailbox: never waits
            await self.ref(Sentiment, "s").tell(Note(str(i)))
        return await self.ref(Sentiment, "s").ask(Analyse(msg.text))


async def neutral(failed: Failed) -> Mood:
    return Mood("neutral")


def test_a_best_effort_target_never_holds_a_critical_workflow() -> None:
    with pytest.raises(ConfigError, match="best_effort policy needs a fallback and a timeout"):
        Policy(tier="best_effort", timeout=1.0)
    resilience = Resilience(
        policies={"be": Policy(tier="best_effort", timeout=0.2, fallback=neutral)},
        targets={Sentiment: "be"},
    )

    async def scenario() -> None:
        async with Kernel(middleware=[resilience], stop_grace=0.1) as kernel:
            kernel.register(Sentiment, mailbox_size=1, **tier_options("best_effort"))
            kernel.register(Checkout)
            loop = asyncio.get_running_loop()
            with degradation() as d:
                mood = await kernel.ref(Checkout, "c").ask(Analyse("x"), timeout=30)
            assert mood == Mood("neutral")
            assert d.degraded
            assert loop.time() == pytest.approx(0.2)
            assert kernel.stats().types["Sentiment"].dropped >= 3

    run(scenario)
    with pytest.raises(ConfigError, match="tier"):
        tier_options("gold")  # type: ignore[arg-type]
