"""kerna.testing.VirtualClock: kernels on virtual time, and the clock itself.

These tests are sync: each runs its scenario on a loop of its own clock
(``clock.run``), not on the suite's shared session loop. Every wait inside a scenario
is bounded in virtual time, so a regression fails at once instead of hanging; the real
time a scenario takes is measured around it.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import anyio
import pytest

from kerna import Agent, AskTimeout, Kernel, Message, handler
from kerna.state import connect
from kerna.testing import VirtualClock

from .agents import Counter, Inc, Ping, Pong, Read

T = TypeVar("T")

# A scenario of minutes or hours of virtual time takes milliseconds; this leaves room
# for a loaded machine and still fails if the clock ever waits for real.
REAL_LIMIT = 5.0


def run_fast(clock: VirtualClock, scenario: Callable[[], Awaitable[T]]) -> T:
    start = time.perf_counter()
    result = clock.run(scenario)
    real = time.perf_counter() - start
    assert real < REAL_LIMIT, f"took {real:.1f}s of real time"
    return result


def now() -> float:
    return asyncio.get_running_loop().time()


class Tick(Message):
    pass


class Ticker(Agent):
    """Schedules a Tick every 10 s; records when each one is handled."""

    ticks: ClassVar[list[float]]
    tenth: ClassVar[asyncio.Event]

    async def on_start(self) -> None:
        self.schedule(10, Tick(), repeat=True)

    @handler
    async def tick(self, msg: Tick) -> None:
        Ticker.ticks.append(now())
        if len(Ticker.ticks) == 10:
            Ticker.tenth.set()


def test_an_agent_timer_every_10s_ticks_10_times_on_the_dot() -> None:
    async def scenario() -> tuple[float, list[float]]:
        Ticker.ticks, Ticker.tenth = [], asyncio.Event()
        async with Kernel() as kernel:
            kernel.register(Ticker)
            await kernel.ref(Ticker, "t").tell(Tick())  # activates it: the timer starts
            started = now()
            async with asyncio.timeout(200):
                await Ticker.tenth.wait()
        return started, Ticker.ticks

    started, ticks = run_fast(VirtualClock(), scenario)
    assert ticks[0] == started  # the activating tell
    assert ticks[1:] == [started + 10 * i for i in range(1, 10)]


class Stuck(Agent):
    """Never answers."""

    @handler
    async def ping(self, msg: Ping) -> Pong:
        await asyncio.sleep(3600)
        return Pong(n=msg.n)


def test_a_30s_ask_timeout_fires_at_30s() -> None:
    async def scenario() -> tuple[float, float]:
        async with Kernel(stop_grace=5) as kernel:
            kernel.register(Stuck)
            asked = now()
            with pytest.raises(AskTimeout, match="in 30s"):
                await kernel.ref(Stuck, "s").ask(Ping(n=1), timeout=30)
            failed = now()
        return asked, failed  # stop's grace for the stuck handler took no real time

    asked, failed = run_fast(VirtualClock(), scenario)
    assert failed - asked == 30


class Napper(Counter):
    """A Counter that records when it is deactivated."""

    stops: ClassVar[list[float]]
    stopped: ClassVar[asyncio.Event]

    async def on_stop(self) -> None:
        Napper.stops.append(now())
        Napper.stopped.set()


def test_an_idle_agent_leaves_after_its_60s_idle_timeout_and_comes_back() -> None:
    async def scenario() -> tuple[float, list[float], int, int]:
        Napper.stops, Napper.stopped = [], asyncio.Event()
        async with Kernel(idle_timeout=60) as kernel:
            kernel.register(Napper)
            ref = kernel.ref(Napper, "n")
            await ref.ask(Inc())
            last = now()
            async with asyncio.timeout(300):
                await Napper.stopped.wait()
            stops = list(Napper.stops)
            active = kernel.stats().types["Napper"].active
            value: int = await ref.ask(Read())  # a new activation loads the saved state
        return last, stops, active, value

    last, stops, active, value = run_fast(VirtualClock(), scenario)
    assert len(stops) == 1
    assert 60 <= stops[0] - last <= 75  # idle_timeout .. 1.25 x idle_timeout
    assert active == 0
    assert value == 1


class Flaky(Agent):
    """Fails to start twice, then starts."""

    attempts: ClassVar[list[float]]

    async def on_start(self) -> None:
        Flaky.attempts.append(now())
        if len(Flaky.attempts) <= 2:
            raise ConnectionError("not yet")

    @handler
    async def ping(self, msg: Ping) -> Pong:
        return Pong(n=msg.n)


def test_restart_backoff_retries_after_10s_then_20s() -> None:
    async def scenario() -> tuple[float, list[float], Pong, int]:
        Flaky.attempts = []
        async with Kernel(restart_backoff=10, max_restarts=3) as kernel:
            kernel.register(Flaky)
            asked = now()
            pong = await kernel.ref(Flaky, "f").ask(Ping(n=1), timeout=120)
            restarts = kernel.stats().types["Flaky"].restarts
        return asked, Flaky.attempts, pong, restarts

    asked, attempts, pong, restarts = run_fast(VirtualClock(), scenario)
    assert attempts == [asked, asked + 10, asked + 30]
    assert pong == Pong(n=1)
    assert restarts == 2


def test_a_stateful_agent_keeps_its_claim_across_an_hour_of_jumps() -> None:
    async def scenario() -> int:
        async with Kernel(idle_timeout=None, lease_ttl=10) as kernel:
            kernel.register(Counter)
            ref = kernel.ref(Counter, "c")
            await ref.ask(Inc())
            await asyncio.sleep(3600)  # hundreds of lease refreshes, none of them late
            result: int = await ref.ask(Inc())
        return result

    assert run_fast(VirtualClock(), scenario) == 2


class Beat(Message):
    pass


class Drummer(Agent):
    """Beats every <key> seconds; leaves after every fifth beat of the band."""

    journal: ClassVar[list[tuple[float, str]]] = []

    async def on_start(self) -> None:
        self.schedule(int(self.id.key), Beat(), repeat=True)

    async def on_stop(self) -> None:
        Drummer.journal.append((now(), f"stop {self.id.key}"))

    @handler
    async def beat(self, msg: Beat) -> None:
        Drummer.journal.append((now(), self.id.key))
        if len(Drummer.journal) % 5 == 0:
            self.deactivate_on_idle()


def test_the_same_scenario_happens_the_same_way_every_run() -> None:
    async def scenario() -> list[tuple[float, str]]:
        Drummer.journal = []
        async with Kernel(idle_timeout=30, stop_grace=1) as kernel:
            kernel.register(Drummer)
            for _ in range(10):  # wake the band every 50 s
                for period in (7, 11, 13):
                    await kernel.ref(Drummer, str(period)).tell(Beat())
                await asyncio.sleep(50)
        return Drummer.journal

    first = run_fast(VirtualClock(), scenario)
    second = run_fast(VirtualClock(), scenario)
    assert len(first) > 50
    assert first == second


# -- the clock itself ----------------------------------------------------------------------


def test_time_starts_where_asked_and_jumps_to_the_next_timer() -> None:
    async def scenario() -> list[float]:
        seen = [now()]
        await asyncio.sleep(2.5)
        seen.append(now())
        async with asyncio.timeout(7):
            await asyncio.Event().wait()  # nothing else would ever wake this loop
        raise AssertionError("not reached")

    clock = VirtualClock(start=1000)
    with pytest.raises(TimeoutError):
        run_fast(clock, scenario)
    assert clock.time() == 1009.5


def test_time_stands_still_while_the_loop_has_work() -> None:
    async def scenario() -> tuple[float, float]:
        before = now()
        for _ in range(1000):
            await asyncio.sleep(0)
        busy_until = time.perf_counter() + 0.05
        while time.perf_counter() < busy_until:  # real time passes; virtual does not
            pass
        return before, now()

    before, after = run_fast(VirtualClock(), scenario)
    assert after == before


def test_ready_io_is_handled_before_the_clock_jumps() -> None:
    async def scenario() -> tuple[bytes, float, float]:
        left, right = socket.socketpair()
        with left, right:
            reader, writer = await asyncio.open_connection(sock=left)
            right.sendall(b"ping")  # ready before the loop next looks
            sent = now()
            async with asyncio.timeout(60):
                data = await reader.readexactly(4)
            got = now()
            writer.close()
        return data, sent, got

    data, sent, got = run_fast(VirtualClock(), scenario)
    assert data == b"ping"
    assert got == sent


def test_without_autojump_only_advance_moves_time() -> None:
    clock = VirtualClock(autojump_threshold=float("inf"))

    async def scenario() -> list[str]:
        events: list[str] = []

        async def sleeper() -> None:
            await asyncio.sleep(10)
            events.append(f"woke at {now():g}")

        task = asyncio.create_task(sleeper())
        for _ in range(10):
            await asyncio.sleep(0)
        clock.advance(4)
        for _ in range(10):
            await asyncio.sleep(0)
        events.append(f"still asleep at {now():g}")
        clock.advance(6)
        for _ in range(10):
            await asyncio.sleep(0)
        assert task.done()
        return events

    assert run_fast(clock, scenario) == ["still asleep at 4", "woke at 10"]


def test_advance_from_another_thread_wakes_a_loop_without_autojump() -> None:
    clock = VirtualClock(autojump_threshold=float("inf"))

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        helper = threading.Timer(0.01, clock.advance, args=(30,))
        # Should the loop never wake, fail in 5 s, not at the suite's timeout.
        watchdog = threading.Timer(5, loop.call_soon_threadsafe, args=(task.cancel,))
        helper.start()
        watchdog.start()
        try:
            await asyncio.sleep(30)  # only the helper thread's advance can end this
        finally:
            watchdog.cancel()
            helper.join(5)
        return now()

    assert run_fast(clock, scenario) == 30


def test_a_threshold_lets_a_thread_answer_before_the_clock_jumps() -> None:
    def scenario_for(clock: VirtualClock) -> Callable[[], Awaitable[str]]:
        async def scenario() -> str:
            loop = asyncio.get_running_loop()
            answer: asyncio.Future[str] = loop.create_future()
            release = threading.Event()

            def worker() -> None:
                release.wait(5)
                loop.call_soon_threadsafe(answer.set_result, "thread")

            thread = threading.Thread(target=worker)
            thread.start()
            try:
                loop.call_soon(release.set)  # the thread answers as soon as it can
                winner = await asyncio.wait_for(answer, 30)
            except TimeoutError:
                winner = "timer"
            finally:
                release.set()
                thread.join(5)
            return winner

        return scenario

    patient = VirtualClock(autojump_threshold=2.0)
    assert run_fast(patient, scenario_for(patient)) == "thread"
    assert patient.time() == 0


def test_anyio_takes_the_clock_as_its_loop_factory() -> None:
    clock = VirtualClock()

    async def scenario() -> float:
        assert VirtualClock.current() is clock
        with anyio.fail_after(100):
            await anyio.sleep(42)
        return anyio.current_time()

    started = time.perf_counter()
    result = anyio.run(
        scenario, backend="asyncio", backend_options={"loop_factory": clock.new_event_loop}
    )
    assert result == 42
    assert time.perf_counter() - started < REAL_LIMIT


def test_bad_arguments_are_refused_naming_them() -> None:
    with pytest.raises(ValueError, match="advance takes a finite number of seconds >= 0"):
        VirtualClock().advance(-1)
    with pytest.raises(ValueError, match="advance"):
        VirtualClock().advance(float("nan"))
    with pytest.raises(ValueError, match="autojump_threshold must be"):
        VirtualClock(autojump_threshold=-0.1)
    with pytest.raises(ValueError, match="start must be a finite number"):
        VirtualClock(start=float("inf"))
    with pytest.raises(RuntimeError, match="no running event loop"):
        VirtualClock.current()

    async def on_a_plain_loop() -> Any:
        return VirtualClock.current()

    with pytest.raises(RuntimeError, match="has no virtual clock"):
        asyncio.run(on_a_plain_loop())
    assert repr(VirtualClock(start=5)) == "VirtualClock(time=5.0, autojump_threshold=0.0)"


USERS_TESTS = """
import asyncio

import pytest

from kerna import AskTimeout, Kernel
from kerna.testing import VirtualClock


@pytest.fixture
def clock():
    return VirtualClock()


@pytest.fixture
def anyio_backend(clock):
    return "asyncio", {"loop_factory": clock.new_event_loop}


@pytest.mark.anyio
async def test_an_hour_passes_at_once(clock):
    assert VirtualClock.current() is clock
    async with Kernel():
        await asyncio.sleep(3600)
    assert clock.time() == 3600


@pytest.mark.anyio
async def test_each_test_has_a_clock_of_its_own(clock):
    assert clock.time() == 0
"""


def test_the_documented_pytest_recipe_runs_users_tests_on_virtual_time(tmp_path: Path) -> None:
    (tmp_path / "test_users.py").write_text(USERS_TESTS)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_users.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


def test_a_memory_lease_lapses_on_virtual_time() -> None:
    async def scenario() -> tuple[bool, bool]:
        backend = await connect("memory://")
        try:
            lease = await backend.lease_grant(10.0)
            await backend.put("k", b"v", lease=lease)
            await asyncio.sleep(9.0)
            alive = await backend.get("k") is not None
            await asyncio.sleep(2.0)  # past the TTL, with no keepalive
            gone = await backend.get("k") is None
            return alive, gone
        finally:
            await backend.aclose()

    assert VirtualClock().run(scenario) == (True, True)
