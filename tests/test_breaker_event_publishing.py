"""Publishing ``BreakerChanged`` events does not depend on the caller yielding: a
caller that keeps failing fast on an open breaker, never giving the loop a turn, then
stops the kernel, still has the change published (the kernel's publishing task runs
in the stop's grace, and its sends are taken then), and leaves no task failing unseen
("Task exception was never retrieved"); an event the grace's end overtakes is counted."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from kerna import Agent, CircuitOpen, Kernel, RemoteError, Request, handler
from kerna.plugins import BREAKERS, Breaker, BreakerChanged, Policy, Resilience
from kerna.testing import VirtualClock


class Call(Request[str]):
    pass


class Down(Agent):
    @handler
    async def call(self, msg: Call) -> str:
        raise ConnectionError("service down")


class Watcher(Agent):
    seen: list[tuple[str, str]] = []

    @handler
    async def changed(self, event: BreakerChanged) -> None:
        Watcher.seen.append((event.old, event.new))


def test_a_change_made_by_a_caller_that_never_yielded_before_stop_is_still_published() -> None:
    Watcher.seen = []
    problems: list[dict[str, Any]] = []
    resilience = Resilience(
        policies={"p": Policy(breaker=Breaker(failures=1, reset_timeout=30))},
        targets={Down: "p"},
    )

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: problems.append(ctx))
        kernel = Kernel(middleware=[resilience])
        kernel.register(Down)
        kernel.register(Watcher)
        kernel.subscribe(BREAKERS, Watcher)
        async with kernel:
            ref = kernel.ref(Down, "a")
            try:
                await ref.ask(Call())  # the failure that opens it: a change to publish
            except RemoteError:
                pass
            for _ in range(200):  # fails fast, and never lets the loop run
                try:
                    await ref.ask(Call())
                except CircuitOpen:
                    pass
        gc.collect()  # a failed task nobody awaited is reported when it is collected

    VirtualClock().run(scenario)
    gc.collect()
    assert problems == []
    # The loop first runs the publishing task once stop() has begun: within the grace.
    assert Watcher.seen == [("closed", "open")]
    assert resilience.events_dropped == 0


class Stuck(Agent):
    """A subscriber that takes one event and never finishes it (its mailbox: 1)."""

    gate = asyncio.Event()
    seen: list[tuple[str, str]] = []

    @handler
    async def changed(self, event: BreakerChanged) -> None:
        Stuck.seen.append((event.old, event.new))
        await Stuck.gate.wait()


def test_an_event_still_waiting_for_room_when_the_grace_ends_is_counted_as_dropped() -> None:
    Stuck.seen, Stuck.gate = [], asyncio.Event()
    problems: list[dict[str, Any]] = []
    resilience = Resilience(
        policies={"p": Policy(breaker=Breaker(failures=1, reset_timeout=1))},
        targets={Down: "p"},
    )

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: problems.append(ctx))
        kernel = Kernel(middleware=[resilience], stop_grace=0.5)
        kernel.register(Down)
        kernel.register(Stuck, mailbox_size=1, overflow="wait")
        kernel.subscribe(BREAKERS, Stuck)
        async with kernel:
            ref = kernel.ref(Down, "a")
            for _ in range(2):  # open; half-open, open: three changes
                try:
                    await ref.ask(Call())
                except RemoteError:
                    pass
                await asyncio.sleep(1.5)
            # the first is being handled (for ever), the second queued, the third waits
            assert Stuck.seen == [("closed", "open")]
            assert resilience.events_dropped == 0
        gc.collect()

    VirtualClock().run(scenario)
    gc.collect()
    assert problems == []
    assert resilience.events_dropped == 1


def test_changes_are_published_in_order_by_one_task_when_the_caller_yields() -> None:
    Watcher.seen = []
    resilience = Resilience(
        policies={"p": Policy(breaker=Breaker(failures=1, reset_timeout=1))},
        targets={Down: "p"},
    )

    async def scenario() -> None:
        kernel = Kernel(middleware=[resilience])
        kernel.register(Down)
        kernel.register(Watcher)
        kernel.subscribe(BREAKERS, Watcher)
        async with kernel:
            ref = kernel.ref(Down, "a")
            for _ in range(3):  # open, half-open, open, half-open, open: five changes
                try:
                    await ref.ask(Call())
                except RemoteError:
                    pass
                await asyncio.sleep(1.5)
            await kernel.wait_idle(timeout=5)
        assert resilience.events_dropped == 0

    VirtualClock().run(scenario)
    assert Watcher.seen == [
        ("closed", "open"),
        ("open", "half-open"),
        ("half-open", "open"),
        ("open", "half-open"),
        ("half-open", "open"),
    ]
