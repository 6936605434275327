"""W5 and W6 on the caller's side, for any system that can ask, tell and report.

Every system's caller offers the same three calls (``Caller``); the clocks are the same
for all of them. W6's rate is measured at the receiver: from the caller's
``perf_counter_ns`` before the first tell to the receiver's when it handled the last
one (both are CLOCK_MONOTONIC on Linux, one clock for every process on the machine).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Protocol

from ._common import percentile

__all__ = ["Caller", "concurrent", "oneway", "sequential"]


class Caller(Protocol):
    async def ask(self, n: int) -> int:
        """Ask the echo agent; its reply's ``n``."""

    async def tell(self, n: int) -> None:
        """Tell the receiver agent (W6), one way."""

    async def last_tell_ns(self, n: int) -> int:
        """The receiver's ``perf_counter_ns`` when it handled the last of ``n`` tells."""


async def sequential(caller: Caller, n: int) -> dict[str, float]:
    """``n`` asks one after the other: p50 and p99 round trip in µs."""
    clock = time.perf_counter
    lat: list[float] = []
    for i in range(n):
        t0 = clock()
        got = await caller.ask(i)
        lat.append(clock() - t0)
        if got != i:
            raise RuntimeError(f"asked {i}, got the reply {got}")
    return {"p50_us": percentile(lat, 50) * 1e6, "p99_us": percentile(lat, 99) * 1e6}


async def concurrent(caller: Caller, callers: int, seconds: float) -> dict[str, float]:
    """``callers`` tasks asking in a loop for ``seconds``: replies per second, and how
    many replies did not answer the ask they completed (``mismatches``; every request
    number is unique across processes, so a reply delivered to the wrong caller, even in
    another process, is counted)."""
    clock = time.perf_counter
    done = mismatches = 0
    base = os.getpid() * 1_000_000_000
    t0 = clock()
    end = t0 + seconds

    async def one(k: int) -> None:
        nonlocal done, mismatches
        i = base + k * 10_000_000
        while clock() < end:
            got = await caller.ask(i)
            mismatches += got != i
            i += 1
            done += 1

    await asyncio.gather(*(one(k) for k in range(callers)))
    return {"rate": done / (clock() - t0), "asks": done, "mismatches": mismatches}


async def oneway(caller: Caller, n: int) -> dict[str, float]:
    """``n`` tells; messages handled per second at the receiver."""
    t0 = time.perf_counter_ns()
    for i in range(n):
        await caller.tell(i)
    last = await caller.last_tell_ns(n)
    return {"rate": n / ((last - t0) / 1e9)}
