"""Virtual activation, deactivation, start failures and timers."""

from __future__ import annotations

import asyncio
from typing import ClassVar

import pytest

from kerna import (
    ActivationFailed,
    Agent,
    AgentId,
    DeadlockError,
    Kernel,
    Message,
    handler,
)

from .agents import Ping, Pong

pytestmark = pytest.mark.anyio


class Life(Agent):
    """Records its lifecycle events in a class-level journal."""

    journal: ClassVar[list[tuple[str, str, int]]] = []
    stopped: ClassVar[asyncio.Event]

    async def on_start(self) -> None:
        Life.journal.append(("start", self.id.key, id(self)))

    async def on_stop(self) -> None:
        Life.journal.append(("stop", self.id.key, id(self)))
        Life.stopped.set()

    @handler
    async def ping(self, msg: Ping) -> int:
        Life.journal.append(("ping", self.id.key, id(self)))
        return id(self)

    @handler
    async def leave(self, msg: Pong) -> None:
        self.deactivate_on_idle()


@pytest.fixture(autouse=True)
def _reset() -> None:
    Life.journal = []
    Life.stopped = asyncio.Event()


async def test_first_message_activates_and_id_is_set_before_on_start(kernel: Kernel) -> None:
    seen: list[AgentId] = []

    class Early(Agent):
        async def on_start(self) -> None:
            seen.append(self.id)
            assert self.kernel is kernel

        @handler
        async def ping(self, msg: Ping) -> None:
            return None

    kernel.register(Early)
    ref = kernel.ref(Early, "e")
    assert kernel.stats().types["Early"].active == 0  # a ref activates nothing
    await ref.ask(Ping(n=1))
    assert seen == [AgentId("Early", "e")]
    assert kernel.stats().types["Early"].active == 1


async def test_one_activation_per_id_under_concurrency(kernel: Kernel) -> None:
    kernel.register(Life)
    refs = [kernel.ref(Life, "same") for _ in range(50)]
    ids = await asyncio.gather(*(r.ask(Ping(n=0)) for r in refs))
    assert len(set(ids)) == 1
    assert [e[0] for e in Life.journal].count("start") == 1
    assert kernel.stats().types["Life"].activations == 1


async def test_ref_deactivate_runs_on_stop_and_next_message_reactivates(kernel: Kernel) -> None:
    kernel.register(Life)
    ref = kernel.ref(Life, "x")
    first = await ref.ask(Ping(n=0))
    await asyncio.wait_for(ref.deactivate(), 5)
    assert ("stop", "x", first) in Life.journal
    assert kernel.stats().types["Life"].active == 0
    second = await ref.ask(Ping(n=0))
    assert second != first
    assert kernel.stats().types["Life"].activations == 2
    await asyncio.wait_for(kernel.ref(Life, "never").deactivate(), 5)  # not active: no-op


class Handover(Agent):
    """Journals which activation handled which Ping; its ``on_stop`` waits for the test."""

    journal: ClassVar[list[tuple[int, int]]] = []  # (n, id of the activation's agent)
    stopping: ClassVar[asyncio.Event]
    release: ClassVar[asyncio.Event]

    async def on_stop(self) -> None:
        Handover.stopping.set()
        async with asyncio.timeout(5):
            await Handover.release.wait()

    @handler
    async def ping(self, msg: Ping) -> int:
        Handover.journal.append((msg.n, id(self)))
        return id(self)


async def test_messages_during_deactivation_go_to_the_successor_in_order(kernel: Kernel) -> None:
    Handover.journal = []
    Handover.stopping, Handover.release = asyncio.Event(), asyncio.Event()
    kernel.register(Handover)
    ref = kernel.ref(Handover, "x")
    first = await ref.ask(Ping(n=-1))
    for i in range(3):  # queued before the request: the old activation handles them
        await ref.tell(Ping(n=i))
    deactivating = asyncio.ensure_future(ref.deactivate())
    async with asyncio.timeout(5):
        await Handover.stopping.wait()
    for i in range(3, 20):  # while on_stop runs: they wait for the successor
        await ref.tell(Ping(n=i))
    Handover.release.set()
    await asyncio.wait_for(deactivating, 5)
    second = await ref.ask(Ping(n=20))
    assert second != first
    assert Handover.journal == [(n, first) for n in range(-1, 3)] + [
        (n, second) for n in range(3, 21)
    ]


async def test_deactivate_on_idle_from_a_handler(kernel: Kernel) -> None:
    kernel.register(Life)
    ref = kernel.ref(Life, "x")
    await ref.ask(Ping(n=0))
    await ref.tell(Pong(n=0))
    await asyncio.wait_for(Life.stopped.wait(), 5)
    assert kernel.stats().types["Life"].active == 0


async def test_awaiting_own_deactivation_is_refused(kernel: Kernel) -> None:
    class Selfish(Agent):
        @handler
        async def ping(self, msg: Ping) -> str:
            try:
                await self.ref(Selfish, self.id.key).deactivate()
            except DeadlockError as exc:
                return str(exc)
            return "no error"

    kernel.register(Selfish)
    assert "deactivate_on_idle" in await kernel.ref(Selfish, "s").ask(Ping(n=0))


async def test_idle_agents_are_deactivated() -> None:
    async with Kernel() as kernel:
        kernel.register(Life, idle_timeout=0.05)
        ref = kernel.ref(Life, "idle")
        first = await ref.ask(Ping(n=0))
        await asyncio.wait_for(Life.stopped.wait(), 2.0)
        assert kernel.stats().types["Life"].active == 0
        assert await ref.ask(Ping(n=0)) != first


async def test_idle_agents_without_on_stop_leave_without_a_task() -> None:
    class Plain(Agent):
        @handler
        async def ping(self, msg: Ping) -> Pong:
            return Pong(n=msg.n)

    async with Kernel() as kernel:
        kernel.register(Plain, idle_timeout=0.02)
        for i in range(100):
            await kernel.ref(Plain, str(i)).tell(Ping(n=i))
        await kernel.ref(Plain, "last").ask(Ping(n=0))
        assert kernel.stats().types["Plain"].active == 101
        gone = asyncio.Event()

        def check() -> None:
            if kernel.stats().types["Plain"].active == 0:
                gone.set()
            else:
                asyncio.get_running_loop().call_later(0.01, check)

        check()
        await asyncio.wait_for(gone.wait(), 2.0)


class Flaky(Agent):
    failures_left: ClassVar[int] = 0
    attempts: ClassVar[int] = 0

    async def on_start(self) -> None:
        Flaky.attempts += 1
        if Flaky.failures_left > 0:
            Flaky.failures_left -= 1
            raise ConnectionError("backend not ready")

    @handler
    async def ping(self, msg: Ping) -> Pong:
        return Pong(n=msg.n)


async def test_failing_on_start_is_retried_with_backoff(kernel: Kernel) -> None:
    Flaky.failures_left, Flaky.attempts = 2, 0
    kernel.register(Flaky, max_restarts=3, restart_backoff=0.001)
    assert await kernel.ref(Flaky, "f").ask(Ping(n=1)) == Pong(n=1)
    assert Flaky.attempts == 3
    assert kernel.stats().types["Flaky"].restarts == 2


async def test_on_start_that_keeps_failing_marks_the_agent_failed(kernel: Kernel) -> None:
    Flaky.failures_left, Flaky.attempts = 100, 0
    kernel.register(Flaky, max_restarts=2, restart_backoff=0.001)
    ref = kernel.ref(Flaky, "f")
    queued = asyncio.ensure_future(ref.ask(Ping(n=2)))
    with pytest.raises(ActivationFailed) as info:
        await ref.ask(Ping(n=1))
    assert info.value.type_name == "ConnectionError"
    assert "backend not ready" in info.value.message
    with pytest.raises(ActivationFailed):
        await asyncio.wait_for(queued, 5)
    assert Flaky.attempts == 3
    with pytest.raises(ActivationFailed):  # fails fast now, no new attempt
        await ref.tell(Ping(n=3))
    assert Flaky.attempts == 3
    # deactivating clears the failure: the next message tries a fresh activation
    Flaky.failures_left = 0
    await asyncio.wait_for(ref.deactivate(), 5)
    assert await ref.ask(Ping(n=4)) == Pong(n=4)
    assert await kernel.ref(Flaky, "other").ask(Ping(n=5)) == Pong(n=5)


class Tick(Message):
    n: int


class Ticker(Agent):
    ticks: ClassVar[list[int]] = []
    enough: ClassVar[asyncio.Event]

    @handler
    async def start(self, msg: Ping) -> None:
        if msg.n == 0:
            self.schedule(0.001, Tick(n=-1))
        else:
            timer = self.schedule(0.002, Tick(n=msg.n), repeat=True)
            if msg.n == 2:
                timer.cancel()

    @handler
    async def tick(self, msg: Tick) -> None:
        Ticker.ticks.append(msg.n)
        if Ticker.ticks.count(1) >= 3:
            Ticker.enough.set()


async def test_timers_once_periodic_and_cancelled(kernel: Kernel) -> None:
    Ticker.ticks, Ticker.enough = [], asyncio.Event()
    kernel.register(Ticker)
    ref = kernel.ref(Ticker, "t")
    await ref.tell(Ping(n=0))
    await ref.tell(Ping(n=1))
    await ref.tell(Ping(n=2))
    await asyncio.wait_for(Ticker.enough.wait(), 2.0)
    assert Ticker.ticks.count(-1) == 1
    assert 2 not in Ticker.ticks
    # timers die with the activation
    await asyncio.wait_for(ref.deactivate(), 5)
    count = len(Ticker.ticks)
    await asyncio.sleep(0.02)  # ten periods: a live timer would have ticked
    assert len(Ticker.ticks) == count


async def test_bad_timer_delays(kernel: Kernel) -> None:
    class Bad(Agent):
        @handler
        async def ping(self, msg: Ping) -> str:
            errors = []
            for delay, repeat in ((-1.0, False), (0.0, True)):
                try:
                    self.schedule(delay, Tick(n=0), repeat=repeat)
                except ValueError as exc:
                    errors.append(str(exc))
            return " | ".join(errors)

        @handler
        async def tick(self, msg: Tick) -> None:
            return None

    kernel.register(Bad)
    text = await kernel.ref(Bad, "b").ask(Ping(n=0))
    assert text.count("timer delay must be > 0") == 2


async def test_factory_injects_dependencies(kernel: Kernel) -> None:
    class Configured(Agent):
        def __init__(self, greeting: str) -> None:
            self.greeting = greeting

        @handler
        async def ping(self, msg: Ping) -> str:
            return f"{self.greeting} {self.id.key}"

    kernel.register(Configured, factory=lambda: Configured("hello"))
    assert await kernel.ref(Configured, "bob").ask(Ping(n=0)) == "hello bob"


async def test_a_factory_returning_the_wrong_thing_fails_activation(kernel: Kernel) -> None:
    kernel.register(Life, factory=lambda: object(), max_restarts=0)  # type: ignore[arg-type,return-value]
    with pytest.raises(ActivationFailed, match="factory of Life returned"):
        await kernel.ref(Life, "x").ask(Ping(n=0))
    from kerna import RegistrationError

    with pytest.raises(RegistrationError, match="factory must be a callable"):
        kernel.register(Life, name="L2", factory="nope")  # type: ignore[arg-type]


async def test_user_error_types_keep_their_module_in_remote_errors(kernel: Kernel) -> None:
    class LocalError(Exception):
        pass

    class Raiser(Agent):
        @handler
        async def ping(self, msg: Ping) -> None:
            raise LocalError("x")

    kernel.register(Raiser)
    from kerna import RemoteError

    with pytest.raises(RemoteError) as info:
        await kernel.ref(Raiser, "r").ask(Ping(n=0))
    assert info.value.type_name.startswith(f"{__name__}.")  # not shortened to kerna.*
    assert info.value.type_name.endswith(".LocalError")


async def test_cancelled_start_leaves_nothing_behind() -> None:
    before = asyncio.all_tasks()
    kernel = Kernel()
    starting = asyncio.ensure_future(kernel.start())
    await asyncio.sleep(0)
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(starting, 5)
    from .conftest import assert_no_stray_tasks

    assert_no_stray_tasks(before)


async def test_a_start_entered_with_a_cancellation_pending_leaves_nothing_behind() -> None:
    """Ctrl-C during synchronous work before ``async with Kernel()`` (``asyncio.Runner``
    cancels the main task from its SIGINT handler while that task runs): the pending
    cancellation lands at start's first suspension; nothing of the kernel is left."""
    from .conftest import assert_no_stray_tasks

    kernel = Kernel()
    entered = False

    async def main() -> None:
        nonlocal entered
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # what the SIGINT handler does, while this task runs
        async with kernel:
            entered = True

    before = asyncio.all_tasks()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(asyncio.ensure_future(main()), 5)
    assert not entered
    assert not kernel.running
    assert_no_stray_tasks(before)


@pytest.mark.parametrize("steps", range(6))
async def test_a_start_cancelled_at_any_step_leaves_nothing_behind(steps: int) -> None:
    from .conftest import assert_no_stray_tasks

    before = asyncio.all_tasks()
    kernel = Kernel()
    starting = asyncio.ensure_future(kernel.start())
    for _ in range(steps):
        await asyncio.sleep(0)
    starting.cancel()
    try:
        await asyncio.wait_for(starting, 5)
    except asyncio.CancelledError:
        assert not kernel.running
    else:  # started before the cancellation could land: it stops as usual
        assert kernel.running
        await asyncio.wait_for(kernel.stop(), 5)
    assert_no_stray_tasks(before)
