"""Shared pieces: messages, completion tallies, loops, timing and memory helpers."""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import kerna

__all__ = [
    "ASK_TIMEOUT",
    "MAILBOX",
    "LoopName",
    "Ping",
    "Pong",
    "Sizes",
    "Tally",
    "ThreadTally",
    "percentile",
    "rss_bytes",
    "run_async",
    "until_done",
]

T = TypeVar("T")
LoopName = Literal["asyncio", "uvloop"]

_DEFAULTS = kerna.Kernel()
MAILBOX: int = _DEFAULTS.mailbox_size
"""Mailbox capacity of every floor agent: kerna's default (``Kernel().mailbox_size``)."""
ASK_TIMEOUT: float = _DEFAULTS.ask_timeout
"""Timeout of every floor ask: kerna's default ``ask_timeout``."""
del _DEFAULTS


class Ping(kerna.Message):
    """The request/one-way message (kerna and the floor share this class; pykka too)."""

    n: int


class Pong(kerna.Message):
    """The reply to a ``Ping`` ask."""

    n: int


@dataclass(frozen=True)
class Sizes:
    """Workload sizes for one system (peers too slow for the full sizes get smaller ones;
    every figure is per second or per agent, so sizes only change the run time)."""

    w1_messages: int = 200_000
    w2_sequential: int = 20_000
    w2_callers: int = 64
    w2_per_caller: int = 500
    w3_events: int = 20_000
    w3_subscribers: int = 10
    w4_agents: int = 100_000
    w5_agents: int = 300_000
    w5_seconds: float = 3.0

    def scaled(self, factor: float) -> Sizes:
        """Every count times ``factor`` (at least 1; callers and subscribers unchanged);
        W5's lag window too, but never under half a second (ten 50 ms sweeps)."""

        def s(n: int) -> int:
            return max(1, round(n * factor))

        return Sizes(
            w1_messages=s(self.w1_messages),
            w2_sequential=s(self.w2_sequential),
            w2_callers=self.w2_callers,
            w2_per_caller=s(self.w2_per_caller),
            w3_events=s(self.w3_events),
            w3_subscribers=self.w3_subscribers,
            w4_agents=s(self.w4_agents),
            w5_agents=s(self.w5_agents),
            w5_seconds=max(0.5, self.w5_seconds * factor),
        )


class Tally:
    """Counts handled messages on an event loop; ``done`` resolves at ``target``.

    Every asyncio system's handler does exactly this, inline, per message.
    """

    __slots__ = ("count", "done", "target")

    def __init__(self, target: int) -> None:
        self.count = 0
        self.target = target
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


HANG_GUARD = 600.0
"""Seconds after which a workload that never completes fails instead of hanging (not a
performance assertion: every workload here finishes in well under a minute)."""


async def until_done(tally: Tally, what: str) -> None:
    """Wait for ``tally.done``; fail with the count reached if it never comes."""
    try:
        async with asyncio.timeout(HANG_GUARD):
            await asyncio.shield(tally.done)
    except TimeoutError:
        raise RuntimeError(
            f"{what}: only {tally.count:,} of {tally.target:,} messages handled after "
            f"{HANG_GUARD:g} s (lost messages or a dead runtime)"
        ) from None


class ThreadTally:
    """``Tally`` for one pykka actor: counted by its thread, waited on by another."""

    __slots__ = ("count", "done", "target")

    def __init__(self, target: int) -> None:
        self.count = 0
        self.target = target
        self.done = threading.Event()

    def wait(self, what: str) -> None:
        """Wait for ``done``; fail with the count reached if it never comes."""
        if not self.done.wait(HANG_GUARD):
            raise RuntimeError(
                f"{what}: only {self.count:,} of {self.target:,} messages handled after "
                f"{HANG_GUARD:g} s"
            )


def run_async(main: Callable[[], Coroutine[Any, Any, T]], loop: LoopName) -> T:
    """Run ``main()`` on a fresh event loop of the given kind (gc collected first)."""
    gc.collect()
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


def percentile(samples: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``samples`` (inclusive method)."""
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[round(q) - 1]


_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """The process's resident set size now (from /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE
