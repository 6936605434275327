"""W5 in a fresh process: event-loop lag while kerna's idle sweep runs.

``python -m benchmarks._sweep LOOP N SECONDS`` prints one JSON line.

The setting (ISSUE6 item 15): one agent type registered with ``idle_timeout=0.2``
(``FAST_AGENTS`` agents, told again every ``RETELL`` seconds, so each one keeps being
deactivated by the sweep and re-activated) and ``N`` agents of another type with the
default idle timeout (300 s), activated with one message each and then idle. A ticker
re-arms itself every millisecond with ``loop.call_later`` and records how late each
tick ran (actual minus planned time); p50 / p99 / max over ``SECONDS``.

The floor is the same ticker on the same event loop in the same process before any
kernel exists: an empty loop's lag (timer and ``epoll`` granularity, the machine's other
load). Only kerna's public API is used (``Kernel``, ``register(..., idle_timeout=...)``,
``ref().tell``, ``stats()``), so the figure holds for whatever the sweep does inside.

A run fails (exit status 1) if the short-timeout agents were never re-activated: then
no sweep deactivated them and the lag would measure nothing.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import time
from typing import Any

from kerna import Agent, Kernel, handler

from ._common import LoopName, Ping, Tally, percentile, run_async, until_done
from ._kerna import Counter

IDLE = "Idle"  # the many: W1's Counter (one message each), under the default idle timeout

__all__ = ["FAST_AGENTS", "FAST_IDLE", "RETELL", "TICK", "loop_lag", "measure"]

FAST_AGENTS = 5
FAST_IDLE = 0.2
"""``idle_timeout`` of the short-lived type: today's sweep then runs every 50 ms."""
RETELL = 0.5
"""Seconds between messages to each short-lived agent: more than its idle timeout plus
the sweep's slack, so each message finds it deactivated and activates it again."""
TICK = 0.001


class Fast(Agent):
    """The few, registered with ``idle_timeout=FAST_IDLE``."""

    @handler
    async def on_ping(self, msg: Ping) -> None:
        return None


async def loop_lag(seconds: float) -> list[float]:
    """Seconds each 1 ms tick ran late, for ``seconds`` (one sample per tick)."""
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    done: asyncio.Future[None] = loop.create_future()
    end = loop.time() + seconds

    def tick(planned: float) -> None:
        now = loop.time()
        lags.append(now - planned)
        if now >= end:
            done.set_result(None)
        else:
            loop.call_at(now + TICK, tick, now + TICK)

    start = loop.time()
    loop.call_at(start + TICK, tick, start + TICK)
    await done
    return lags


def _summary(lags: list[float], prefix: str) -> dict[str, float]:
    return {
        f"{prefix}p50_ms": percentile(lags, 50) * 1e3,
        f"{prefix}p99_ms": percentile(lags, 99) * 1e3,
        f"{prefix}max_ms": max(lags) * 1e3,
        f"{prefix}ticks": float(len(lags)),
    }


async def _feed(kernel: Kernel) -> None:
    """Tell every short-lived agent one message every ``RETELL`` seconds, forever."""
    refs = [kernel.ref(Fast, str(i)) for i in range(FAST_AGENTS)]
    while True:
        for i, ref in enumerate(refs):
            await ref.tell(Ping(i))
        await asyncio.sleep(RETELL)


async def _kerna_lag(n: int, seconds: float) -> dict[str, Any]:
    """kerna's lag with ``n`` idle agents; the kernel is left running (the process
    exits right after: stopping ``n`` agents is not measured)."""
    Counter.tally = tally = Tally(n)
    kernel = Kernel()
    await kernel.start()
    fast = kernel.register(Fast, idle_timeout=FAST_IDLE)
    kernel.register(Counter, name=IDLE)
    feeder = asyncio.get_running_loop().create_task(_feed(kernel))
    t0 = time.perf_counter()
    for i in range(n):
        await kernel.ref(IDLE, str(i)).tell(Ping(i))
    await until_done(tally, "kerna w5 activation")
    activated = time.perf_counter() - t0
    await asyncio.sleep(2 * RETELL)  # workers exit; the sweep settles into its rhythm
    gc.collect()
    gen2 = gc.get_stats()[2]["collections"]
    before = kernel.stats().types[fast].activations  # O(N): outside the window
    lags = await loop_lag(seconds)
    gen2 = gc.get_stats()[2]["collections"] - gen2
    feeder.cancel()
    stats = kernel.stats()
    reactivations = stats.types[fast].activations - before
    idle_active = stats.types[IDLE].active
    if reactivations < 1:
        raise SystemExit(
            f"{FAST_AGENTS} agents with idle_timeout={FAST_IDLE} were never deactivated and"
            f" re-activated in {seconds:g} s: no idle sweep ran, the lag measures nothing"
        )
    if idle_active != n:
        raise SystemExit(f"{n:,} idle agents expected alive, {idle_active:,} are")
    return {
        **_summary(lags, ""),
        "activate_s": activated,
        "fast_reactivations": float(reactivations),
        "gc_gen2": float(gen2),
    }


def measure(loop: LoopName, n: int, seconds: float) -> None:
    """Print the empty loop's lag, then kerna's with ``n`` idle agents (both over
    ``seconds``) as JSON, then end the process at once."""

    async def main() -> None:
        gc.collect()
        floor = _summary(await loop_lag(seconds), "floor_")
        result = {"n": n, "seconds": seconds, **floor, **await _kerna_lag(n, seconds)}
        print(json.dumps(result), flush=True)
        os._exit(0)  # tearing down n agents is not measured

    run_async(main, loop)


if __name__ == "__main__":
    loop_name, count, window = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    if loop_name not in ("asyncio", "uvloop"):
        raise SystemExit(f"unknown loop {loop_name!r}")
    measure("uvloop" if loop_name == "uvloop" else "asyncio", count, window)
