"""``Kernel.wait_idle``: wait until every mailbox is empty and no handler runs, without
stopping the kernel."""

from __future__ import annotations

import asyncio
from typing import ClassVar

import pytest

from kerna import (
    Agent,
    AskTimeout,
    IdleTimeout,
    KernaError,
    Kernel,
    KernelStopped,
    Message,
    UsageError,
    handler,
)

from .agents import Echo, Ping, Pong

pytestmark = pytest.mark.anyio


class Hop(Message):
    """Tell the next agent ``left - 1`` (down to 0) and record the hop."""

    left: int
    fan: int = 1


class Hopper(Agent):
    handled: ClassVar[list[str]] = []

    @handler
    async def hop(self, msg: Hop) -> None:
        await asyncio.sleep(0)  # real handlers await something
        Hopper.handled.append(self.id.key)
        if msg.left > 0:
            for i in range(msg.fan):
                await self.ref(Hopper, f"{self.id.key}.{i}").tell(
                    Hop(left=msg.left - 1, fan=msg.fan)
                )


class Hold(Message):
    pass


class Holder(Agent):
    """Blocks in its handler until the test releases it."""

    entered: ClassVar[asyncio.Event]
    release: ClassVar[asyncio.Event]

    @handler
    async def hold(self, msg: Hold) -> str:
        Holder.entered.set()
        await Holder.release.wait()
        return "released"


@pytest.fixture(autouse=True)
def reset() -> None:
    Hopper.handled = []
    Holder.entered = asyncio.Event()
    Holder.release = asyncio.Event()


async def test_wait_idle_returns_once_a_cascade_of_tells_has_settled(kernel: Kernel) -> None:
    kernel.register(Hopper)
    # one tell from outside starts 1 + 3 + 9 + 27 + 81 handlers, each telling the next
    await kernel.ref(Hopper, "root").tell(Hop(left=4, fan=3))
    await kernel.wait_idle(timeout=5)
    assert len(Hopper.handled) == 1 + 3 + 9 + 27 + 81
    stats = kernel.stats()
    assert stats.running == 0
    assert stats.types["Hopper"].queued == 0
    assert stats.types["Hopper"].handled == 121


async def test_a_long_chain_settles_too(kernel: Kernel) -> None:
    kernel.register(Hopper)
    await kernel.ref(Hopper, "a").tell(Hop(left=200))
    await kernel.wait_idle(timeout=5)
    assert len(Hopper.handled) == 201


async def test_wait_idle_on_an_idle_kernel_returns_at_once(kernel: Kernel) -> None:
    await kernel.wait_idle(timeout=0.5)
    kernel.register(Echo)
    assert await kernel.ref(Echo, "a").ask(Ping(n=1)) == Pong(n=1)
    await kernel.wait_idle(timeout=0.5)


async def test_wait_idle_times_out_with_idle_timeout_and_the_kernel_runs_on(
    kernel: Kernel,
) -> None:
    kernel.register(Holder)
    kernel.register(Echo)
    held = asyncio.ensure_future(kernel.ref(Holder, "h").ask(Hold(), timeout=5))
    async with asyncio.timeout(5):
        await Holder.entered.wait()
    loop = asyncio.get_running_loop()
    begun = loop.time()
    with pytest.raises(IdleTimeout) as info:
        async with asyncio.timeout(5):  # the test's bound; wait_idle's own is 0.1 s
            await kernel.wait_idle(timeout=0.1)
    assert loop.time() - begun >= 0.1
    error = info.value
    assert isinstance(error, TimeoutError)
    assert isinstance(error, KernaError)
    assert not isinstance(error, AskTimeout)
    assert error.timeout == 0.1
    assert error.busy == 1
    assert "0.1s" in str(error)
    assert "Holder/h" in str(error)  # which agent is still at work
    # not stopped: the held handler goes on, new messages are taken
    assert kernel.running
    assert await kernel.ref(Echo, "e").ask(Ping(n=2)) == Pong(n=2)
    Holder.release.set()
    async with asyncio.timeout(5):
        assert await held == "released"
    await kernel.wait_idle(timeout=5)


async def test_wait_idle_waits_for_a_handler_that_is_running(kernel: Kernel) -> None:
    kernel.register(Holder)
    await kernel.ref(Holder, "h").tell(Hold())
    async with asyncio.timeout(5):
        await Holder.entered.wait()
    idle = asyncio.ensure_future(kernel.wait_idle(timeout=5))
    await asyncio.sleep(0)
    assert not idle.done()
    Holder.release.set()
    async with asyncio.timeout(5):
        await idle
    assert kernel.stats().types["Holder"].handled == 1


async def test_concurrent_waiters_all_return(kernel: Kernel) -> None:
    kernel.register(Holder)
    await kernel.ref(Holder, "h").tell(Hold())
    waiters = [asyncio.ensure_future(kernel.wait_idle(timeout=5)) for _ in range(3)]
    async with asyncio.timeout(5):
        await Holder.entered.wait()
    Holder.release.set()
    async with asyncio.timeout(5):
        await asyncio.gather(*waiters)


async def test_wait_idle_from_inside_a_handler_is_a_usage_error(kernel: Kernel) -> None:
    class Impatient(Agent):
        @handler
        async def ping(self, msg: Ping) -> str:
            try:
                await self.kernel.wait_idle(timeout=1)
            except UsageError as exc:
                return str(exc)
            return "returned"

    kernel.register(Impatient)
    assert "wait for itself" in await kernel.ref(Impatient, "i").ask(Ping(n=1))


async def test_wait_idle_on_a_stopped_kernel_raises_kernel_stopped() -> None:
    kernel = Kernel()
    with pytest.raises(KernelStopped):
        await kernel.wait_idle(timeout=1)
    async with kernel:
        await kernel.wait_idle(timeout=1)
    with pytest.raises(KernelStopped):
        await kernel.wait_idle(timeout=1)


@pytest.mark.parametrize("bad", ["1", None, True])
async def test_a_wait_idle_timeout_that_is_not_a_number_is_a_type_error(
    kernel: Kernel, bad: object
) -> None:
    if bad is None:
        await kernel.wait_idle(timeout=None)  # None: the kernel's ask_timeout
        return
    with pytest.raises(TypeError, match="wait_idle timeout"):
        await kernel.wait_idle(timeout=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan")])
async def test_a_wait_idle_timeout_out_of_range_is_a_value_error(
    kernel: Kernel, bad: float
) -> None:
    with pytest.raises(ValueError, match="wait_idle timeout"):
        await kernel.wait_idle(timeout=bad)


class Later(Message):
    pass


class Patient(Agent):
    """Schedules a far timer (Later) and defers the reply to a Hold ask."""

    @handler
    async def later(self, msg: Later) -> None:
        pass

    @handler
    async def hold(self, msg: Hold) -> None:
        self.schedule(30, Later())
        self.defer_reply()
        Holder.entered.set()


async def test_unfired_timers_and_unsent_deferred_replies_are_not_work(kernel: Kernel) -> None:
    kernel.register(Patient)
    ask = asyncio.ensure_future(kernel.ref(Patient, "p").ask(Hold(), timeout=5))
    async with asyncio.timeout(5):
        await Holder.entered.wait()
    await kernel.wait_idle(timeout=1)
    assert not ask.done()
    ask.cancel()


async def test_wait_idle_that_times_out_leaves_no_waiter_behind(kernel: Kernel) -> None:
    gate = asyncio.Event()

    class Busy(Agent):
        @handler
        async def hold(self, msg: Ping) -> None:
            await asyncio.wait_for(gate.wait(), 5)

    kernel.register(Busy)
    await kernel.ref(Busy, "b").tell(Ping(n=1))
    for _ in range(20):  # a caller polling a kernel that stays busy
        with pytest.raises(IdleTimeout):
            await kernel.wait_idle(timeout=0.001)
    assert kernel._runtime.quiet_waiters() == 0  # noqa: SLF001 - the test counts waiters
    gate.set()
    await kernel.wait_idle(timeout=5)
