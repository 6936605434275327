"""kerna.plugins' circuit breakers (pybreaker's state machine driven from asyncio),
exact on virtual time: trips after exactly N consecutive failures, lets nothing
through while open, admits exactly the configured probes when half-open, and stays
consistent under concurrent callers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from kerna import Agent, AgentId, CircuitOpen, ConfigError, Kernel, RemoteError, Request, handler
from kerna.plugins import (
    BREAKERS,
    Breaker,
    BreakerChanged,
    Policy,
    Resilience,
    Retry,
    breaker_stats,
    idempotent,
)
from kerna.testing import VirtualClock

T = TypeVar("T")


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    return VirtualClock().run(scenario)


class Call(Request[str]):
    pass


class Backend:
    """What the target agents share: whether they fail, a gate, the calls they saw."""

    def __init__(self) -> None:
        self.failing = True
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.wanted = 0
        self.arrived = asyncio.Event()

    async def reached(self, calls: int) -> None:
        """Wait (bounded) until the agents have seen ``calls`` calls."""
        self.wanted = calls
        if self.calls < calls:
            self.arrived.clear()
            async with asyncio.timeout(1):
                await self.arrived.wait()


class Service(Agent):
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    @handler
    async def call(self, msg: Call) -> str:
        backend = self.backend
        backend.calls += 1
        if backend.calls >= backend.wanted:
            backend.arrived.set()
        if backend.gate is not None:
            await backend.gate.wait()
        if backend.failing:
            raise ConnectionError("service down")
        return "ok"


events: list[tuple[str, str, str]] = []


class Watcher(Agent):
    @handler
    async def changed(self, event: BreakerChanged) -> None:
        events.append((event.target, event.old, event.new))


def make(backend: Backend, breaker: Breaker, target: object = Service) -> Kernel:
    resilience = Resilience(
        policies={"p": Policy(breaker=breaker)},
        targets={target: "p"},  # type: ignore[dict-item]
    )
    kernel = Kernel(middleware=[resilience])
    kernel.register(Service, factory=lambda: Service(backend))
    kernel.register(Watcher)
    kernel.subscribe(BREAKERS, Watcher)
    return kernel


async def fails(kernel: Kernel, key: str = "a") -> type[BaseException]:
    try:
        await kernel.ref(Service, key).ask(Call())
    except (RemoteError, CircuitOpen) as exc:
        return type(exc)
    return type(None)


def test_a_breaker_trips_after_exactly_n_consecutive_failures_and_then_fails_fast() -> None:
    backend = Backend()
    events.clear()

    async def scenario() -> None:
        async with make(backend, Breaker(failures=3, reset_timeout=30)) as kernel:
            # two failures, a success, two failures: never 3 in a row, stays closed
            for failing in (True, True, False, True, True):
                backend.failing = failing
                await fails(kernel)
            assert breaker_stats(kernel, Service).state == "closed"
            assert await fails(kernel) is RemoteError  # the third in a row: it opens
            assert breaker_stats(kernel, Service).state == "open"
            calls = backend.calls
            loop = asyncio.get_running_loop()
            took: list[float] = []
            for _ in range(20):
                before, t0 = loop.time(), time.perf_counter()
                assert await fails(kernel) is CircuitOpen
                took.append(time.perf_counter() - t0)
                assert loop.time() == before  # no wait, not even on the virtual clock
            # under 1 ms: the median of the 20 (one call preempted by the machine's
            # other work must not decide it; the loop clock above shows none waited)
            assert sorted(took)[10] < 0.001, took
            assert backend.calls == calls  # 0 calls let through while open
            stats = breaker_stats(kernel, Service)
            assert (stats.opened, stats.rejected, stats.calls) == (1, 20, 6)
            await kernel.wait_idle()
        assert events == [("Service", "closed", "open")]

    run(scenario)


def test_half_open_admits_exactly_the_configured_probes_and_their_successes_close_it() -> None:
    backend = Backend()
    events.clear()

    async def scenario() -> None:
        async with make(backend, Breaker(failures=2, reset_timeout=10, probes=2)) as kernel:
            await fails(kernel, "x")
            await fails(kernel, "y")
            assert breaker_stats(kernel, Service).state == "open"
            await asyncio.sleep(9.9)
            assert await fails(kernel, "z") is CircuitOpen  # not yet
            await asyncio.sleep(0.1)
            backend.failing = False
            backend.gate = asyncio.Event()
            calls = backend.calls
            # five concurrent callers, to five agents (the breaker is the type's)
            tasks = [asyncio.create_task(fails(kernel, str(i))) for i in range(5)]
            await backend.reached(calls + 2)
            await asyncio.sleep(1)
            assert backend.calls == calls + 2  # exactly the probes got through
            assert breaker_stats(kernel, Service).state == "half-open"
            backend.gate.set()
            results = await asyncio.gather(*tasks)
            assert sorted(r.__name__ for r in results) == ["CircuitOpen"] * 3 + ["NoneType"] * 2
            assert breaker_stats(kernel, Service).state == "closed"
            backend.gate = None
            assert await fails(kernel) is type(None)
            await kernel.wait_idle()
        assert events == [
            ("Service", "closed", "open"),
            ("Service", "open", "half-open"),
            ("Service", "half-open", "closed"),
        ]

    run(scenario)


def test_a_failed_probe_opens_it_again_for_another_reset_timeout() -> None:
    backend = Backend()

    async def scenario() -> None:
        async with make(backend, Breaker(failures=1, reset_timeout=5)) as kernel:
            assert await fails(kernel) is RemoteError
            await asyncio.sleep(5)
            assert await fails(kernel) is RemoteError  # the probe: it failed
            stats = breaker_stats(kernel, Service)
            assert (stats.state, stats.opened, stats.half_opened) == ("open", 2, 1)
            await asyncio.sleep(4.9)
            assert await fails(kernel) is CircuitOpen
            await asyncio.sleep(0.1)
            backend.failing = False
            assert await fails(kernel) is type(None)
            assert breaker_stats(kernel, Service).state == "closed"

    run(scenario)


def test_concurrent_failures_open_the_breaker_once() -> None:
    backend = Backend()

    async def scenario() -> None:
        async with make(backend, Breaker(failures=3, reset_timeout=30)) as kernel:
            backend.gate = asyncio.Event()
            tasks = [asyncio.create_task(fails(kernel, str(i))) for i in range(10)]
            await backend.reached(10)
            backend.gate.set()  # ten failures land together, all admitted while closed
            assert await asyncio.gather(*tasks) == [RemoteError] * 10
            stats = breaker_stats(kernel, Service)
            assert (stats.state, stats.opened, stats.calls) == ("open", 1, 10)
            assert await fails(kernel) is CircuitOpen

    run(scenario)


def test_a_breaker_scoped_to_one_agent_leaves_the_others_of_its_type_alone() -> None:
    backend = Backend()

    async def scenario() -> None:
        sick = AgentId("Service", "sick")
        async with make(backend, Breaker(failures=1), target=sick) as kernel:
            assert await fails(kernel, "sick") is RemoteError
            assert await fails(kernel, "sick") is CircuitOpen
            assert await fails(kernel, "well") is RemoteError  # no breaker of its own
            assert await fails(kernel, "well") is RemoteError
            assert breaker_stats(kernel, sick).rejected == 1

    run(scenario)


def test_bad_breaker_options_are_refused() -> None:
    for options in ({"failures": 0}, {"probes": 0}, {"reset_timeout": 0}):
        with pytest.raises(ConfigError, match="Breaker"):
            Breaker(**options)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="names policy 'q'"):
        Resilience(policies={}, targets={Service: "q"})


@idempotent
class Retried(Request[str]):
    pass


class Flaky(Agent):
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    @handler
    async def retried(self, msg: Retried) -> str:
        self.backend.calls += 1
        if self.backend.failing:
            raise ConnectionError("service down")
        return "ok"


def test_calls_attempts_and_breaker_calls_are_counted_exactly_on_every_path() -> None:
    # A healthy breaker's calls take before_send's shortest path, counted once for the
    # three counters; failures, retries and the calls after them take the others.
    backend = Backend()
    policy = Policy(
        retry=Retry(on=(ConnectionError,), max_retries=1, interval=0.001),
        breaker=Breaker(failures=5, reset_timeout=30),
    )
    resilience = Resilience(policies={"p": policy}, targets={Flaky: "p"})

    def counts() -> tuple[int, ...]:
        stats = resilience.target_stats(Flaky)
        assert stats.breaker is not None
        assert stats.breaker == breaker_stats(kernel, Flaky)
        return stats.calls, stats.attempts, stats.retries, stats.breaker.calls, backend.calls

    kernel = Kernel(middleware=[resilience])
    kernel.register(Flaky, factory=lambda: Flaky(backend))

    async def scenario() -> None:
        async with kernel:
            ref = kernel.ref(Flaky, "f")
            backend.failing = False
            for _ in range(3):
                assert await ref.ask(Retried()) == "ok"
            assert counts() == (3, 3, 0, 3, 3)
            backend.failing = True  # the first attempt and its retry fail
            with pytest.raises(RemoteError, match="service down"):
                await ref.ask(Retried())
            assert counts() == (4, 5, 1, 5, 5)
            assert breaker_stats(kernel, Flaky).failures == 2
            backend.failing = False  # two failures counted: not the shortest path
            assert await ref.ask(Retried()) == "ok"
            assert counts() == (5, 6, 1, 6, 6)
            assert breaker_stats(kernel, Flaky).failures == 0  # healthy again
            assert await ref.ask(Retried()) == "ok"
            assert counts() == (6, 7, 1, 7, 7)

    run(scenario)
