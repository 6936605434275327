"""Publishing ``BreakerChanged`` events does not depend on the caller yielding: a
caller that keeps failing fast on an open breaker, never giving the loop a turn, then
stops the kernel, leaves no task failing unseen ("Task exception was never
retrieved") and no event unaccounted for."""

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


def test_a_change_seen_only_at_stop_is_counted_as_dropped_and_no_task_fails_unseen() -> None:
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
    # The change reached the subscriber, or was counted as not published: never lost
    # silently. Here the loop first runs once stop() has begun: counted.
    assert Watcher.seen == []
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
