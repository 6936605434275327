"""Stop is always bounded, survives its own cancellation, and loses nothing silently."""

from __future__ import annotations

import asyncio
import logging

import pytest

from kerna import Agent, ConfigError, Kernel, KernelStopped, Message, TypeStats, handler
from kerna.state import connect

from .agents import Count, Ping, Pong
from .conftest import assert_no_stray_tasks

pytestmark = pytest.mark.anyio


class Hold(Message):
    """Handled by waiting on the test's gate."""


class Stubborn(Agent):
    """Swallows every cancellation until the test releases it."""

    release: asyncio.Event
    entered: asyncio.Event

    @handler
    async def hold(self, msg: Hold) -> str:
        Stubborn.entered.set()
        while not Stubborn.release.is_set():
            try:
                await Stubborn.release.wait()
            except asyncio.CancelledError:
                continue  # ignores the kernel's cancellation: cannot be killed
        return "released"

    @handler
    async def ping(self, msg: Ping) -> Pong:
        return Pong(n=msg.n)


class Gated(Agent):
    """Waits on the test's gate (cancellable)."""

    gate: asyncio.Event
    entered: asyncio.Event

    @handler
    async def hold(self, msg: Hold) -> str:
        Gated.entered.set()
        await Gated.gate.wait()
        return "opened"

    @handler
    async def ping(self, msg: Ping) -> Pong:
        return Pong(n=msg.n)


class Counter(Agent, state=Count):
    @handler
    async def hold(self, msg: Hold) -> str:
        await self.save(Count(self.state.n + 1))
        Gated.entered.set()
        await Gated.gate.wait()
        return "saved"


@pytest.fixture(autouse=True)
def _events() -> None:
    Stubborn.release, Stubborn.entered = asyncio.Event(), asyncio.Event()
    Gated.gate, Gated.entered = asyncio.Event(), asyncio.Event()


async def _entered(event: asyncio.Event) -> None:
    async with asyncio.timeout(5):
        await event.wait()


def _accounted(stats: TypeStats) -> int:
    return (
        stats.handled
        + stats.failed
        + stats.dead_letters
        + stats.dropped
        + stats.rejected
        + stats.expired
    )


async def test_stop_is_bounded_when_a_handler_swallows_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kernel = Kernel(cancel_grace=0.2)
    await kernel.start()
    kernel.register(Stubborn)
    stuck = kernel.ref(Stubborn, "stuck")
    running = asyncio.ensure_future(stuck.ask(Hold(), timeout=30))
    queued = asyncio.ensure_future(stuck.ask(Ping(n=1), timeout=30))
    await _entered(Stubborn.entered)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with caplog.at_level(logging.ERROR, logger="kerna"):
            async with asyncio.timeout(5):  # today: never returns
                await kernel.stop(grace=0.1)
    finally:
        Stubborn.release.set()  # the abandoned task ends when its handler does
    took = loop.time() - started
    assert took < 0.1 + 2 * 0.2 + 0.5, took  # grace + 2 x cancel_grace, with a margin
    for pending in (running, queued):
        with pytest.raises(KernelStopped):
            await asyncio.wait_for(pending, 5)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("Stubborn/stuck" in e and "cannot be killed" in e for e in errors), errors
    assert not kernel.running


async def test_a_cancelled_stop_still_completes_the_shutdown() -> None:
    backend = await connect("memory://cancelled-stop")
    try:
        kernel = Kernel(state="memory://cancelled-stop", lease_ttl=30)
        await kernel.start()
        kernel.register(Counter)
        kernel.register(Gated)
        answer = asyncio.ensure_future(kernel.ref(Counter, "c").ask(Hold(), timeout=30))
        await _entered(Gated.entered)
        claims = (await backend.range("kerna/act/")).kvs
        assert len(claims) == 1
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(kernel.stop(grace=5), 0.3)
        assert not kernel.running
        with pytest.raises(KernelStopped):
            await kernel.ref(Gated, "g").ask(Ping(n=1))
        Gated.gate.set()  # the shutdown went on: the handler finishes within its grace
        assert await asyncio.wait_for(answer, 5) == "saved"
        async with asyncio.timeout(5):
            await kernel.stop()  # waits for the shutdown the cancelled stop began
        assert (await backend.range("kerna/act/")).kvs == ()  # the lease was revoked
        assert (await backend.get("kerna/state/Counter/c")) is not None
        with pytest.raises(ConfigError, match="closed"):
            await kernel.state_backend.get("kerna/state/Counter/c")  # the kernel closed it
    finally:
        await backend.aclose()


async def test_a_second_stop_with_a_shorter_grace_ends_the_grace_period_sooner() -> None:
    kernel = Kernel()
    await kernel.start()
    kernel.register(Gated)
    answer = asyncio.ensure_future(kernel.ref(Gated, "g").ask(Hold(), timeout=30))
    await _entered(Gated.entered)
    first = asyncio.ensure_future(kernel.stop(grace=30))
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await kernel.stop(grace=0)
    assert first.done()
    await asyncio.wait_for(first, 5)
    with pytest.raises(KernelStopped):
        await asyncio.wait_for(answer, 5)


async def test_senders_parked_on_a_full_mailbox_get_kernel_stopped() -> None:
    kernel = Kernel()
    await kernel.start()
    kernel.register(Gated, mailbox_size=1)
    ref = kernel.ref(Gated, "g")
    await ref.tell(Hold())  # being handled
    await _entered(Gated.entered)
    await ref.tell(Ping(n=1))  # queued: fills the mailbox
    parked_tell = asyncio.ensure_future(ref.tell(Ping(n=2)))
    parked_ask = asyncio.ensure_future(ref.ask(Ping(n=3), timeout=30))
    await asyncio.sleep(0)
    assert not parked_tell.done()
    await kernel.stop(grace=0.05)
    with pytest.raises(KernelStopped):
        await asyncio.wait_for(
            parked_tell, 5
        )  # today: returns normally, and the message is dead-lettered
    with pytest.raises(KernelStopped):
        await asyncio.wait_for(parked_ask, 5)
    stats = kernel.stats().types["Gated"]
    assert (stats.failed, stats.dead_letters, stats.rejected) == (1, 1, 2)
    assert _accounted(stats) == 4


async def test_every_message_sent_is_accounted_for_after_an_abrupt_stop() -> None:
    before = asyncio.all_tasks()
    kernel = Kernel()
    await kernel.start()
    kernel.register(Gated, mailbox_size=20)
    refs = [kernel.ref(Gated, f"g{key}") for key in range(30)]
    sent = 0
    for ref in refs:  # a burst: each tell finds room and returns without yielding
        await ref.tell(Hold())  # blocks its agent until the stop cancels it
        for n in range(10):
            await ref.tell(Ping(n=n))
        sent += 11
    parked = []  # and senders that will wait for room, or be refused
    for ref in refs:
        parked += [asyncio.ensure_future(ref.tell(Ping(n=n))) for n in range(15)]
        sent += 15
    await asyncio.sleep(0)  # the parked senders and the workers run once
    await kernel.stop(grace=0)
    outcomes = await asyncio.wait_for(asyncio.gather(*parked, return_exceptions=True), 5)
    assert all(o is None or isinstance(o, KernelStopped) for o in outcomes), outcomes
    stats = kernel.stats().types["Gated"]
    refused = sum(isinstance(o, KernelStopped) for o in outcomes)
    assert refused == 30 * 5  # 10 of each 15 found room; 5 were parked
    assert (stats.failed, stats.rejected) == (30, refused)  # Hold interrupted; refusals
    assert stats.dead_letters == 30 * 20  # queued, never handled
    assert _accounted(stats) == sent, stats
    assert_no_stray_tasks(before)


async def test_an_abrupt_stop_before_any_worker_ran_accounts_for_every_tell() -> None:
    kernel = Kernel()
    await kernel.start()
    kernel.register(Gated)
    for key in range(100):
        await kernel.ref(Gated, f"g{key}").tell(Ping(n=key))  # no worker has run yet
    loop = asyncio.get_running_loop()
    started = loop.time()
    await kernel.stop(grace=0)
    assert loop.time() - started < 1.0  # no wait for workers that never ran
    stats = kernel.stats().types["Gated"]
    assert _accounted(stats) == 100, stats
    assert kernel.stats().running == 0


class StubbornStop(Agent):
    """An on_stop that swallows every cancellation until the test releases it."""

    @handler
    async def ping(self, msg: Ping) -> Pong:
        return Pong(n=msg.n)

    async def on_stop(self) -> None:
        Stubborn.entered.set()
        while not Stubborn.release.is_set():
            try:
                await Stubborn.release.wait()
            except asyncio.CancelledError:
                continue


async def test_stop_is_bounded_when_an_on_stop_hook_swallows_cancellation() -> None:
    kernel = Kernel(cancel_grace=0.2)
    await kernel.start()
    kernel.register(StubbornStop)
    await kernel.ref(StubbornStop, "s").ask(Ping(n=1), timeout=5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with asyncio.timeout(5):
            await kernel.stop(grace=0)
    finally:
        Stubborn.release.set()  # the abandoned hook ends
    took = loop.time() - started
    assert Stubborn.entered.is_set()
    assert took < 2 * 0.2 + 0.1, took  # grace + 2 x cancel_grace, with a margin


def test_a_shutdown_cancelled_by_the_loop_ending_still_releases_the_lease() -> None:
    url = "memory://shutdown-cancelled"
    claims: list[int] = []

    async def main() -> None:
        kernel = Kernel(state=url, lease_ttl=30)
        await kernel.start()
        kernel.register(Counter)
        kernel.register(Gated)
        left = [asyncio.ensure_future(kernel.ref(Counter, "c").ask(Hold(), timeout=30))]
        await _entered(Gated.entered)
        claims.append(len((await kernel.state_backend.range("kerna/act/")).kvs))
        left.append(asyncio.ensure_future(kernel.stop(grace=30)))
        await asyncio.sleep(0)  # main returns: asyncio.run cancels the shutdown, mid-grace

    async def remaining() -> int:
        backend = await connect(url)
        try:
            return len((await backend.range("kerna/act/")).kvs)
        finally:
            await backend.aclose()

    keep = asyncio.run(connect(url))  # keeps the named store alive between the runs
    try:
        Gated.gate, Gated.entered = asyncio.Event(), asyncio.Event()
        asyncio.run(main())
        assert claims == [1]
        assert asyncio.run(remaining()) == 0  # the lease was revoked on the way out
    finally:
        asyncio.run(keep.aclose())
