"""W4 in a fresh process: ``python -m benchmarks._scale SYSTEM LOOP N`` prints JSON.

Memory per idle agent is the process's RSS growth (``/proc/self/statm``) from before
the first activation to after every agent handled its one message and went idle
(``gc.collect()`` before both readings), divided by N: mailbox, directory, agent
objects, ids and keys all included.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from ._common import LoopName, rss_bytes, run_async

__all__ = ["measure"]

Activate = Callable[[int], Awaitable[tuple[float, Callable[[], Awaitable[None]]]]]


def _async_activate(system: str) -> Activate:
    if system in ("floor", "lean-floor"):
        from ._floor import w4_activate as floor_activate

        return functools.partial(floor_activate, lean=system == "lean-floor")
    if system == "kerna":
        from ._kerna import w4_activate
    elif system == "autogen-core":
        from ._autogen import w4_activate
    else:
        raise SystemExit(f"unknown system {system!r}")
    return w4_activate


def _result(n: int, seconds: float, before: int, after: int) -> dict[str, Any]:
    return {
        "n": n,
        "seconds": seconds,
        "rate": n / seconds,
        "bytes_per_agent": (after - before) / n,
    }


def _emit(result: dict[str, Any]) -> None:
    """Print the result and end the process at once: tearing down 100,000 agents is not
    measured and takes as long as building them."""
    print(json.dumps(result), flush=True)
    os._exit(0)


def measure(system: str, loop: LoopName, n: int) -> None:
    """Activate ``n`` agents of ``system`` with one message each; print seconds and bytes
    as JSON, then exit."""
    if system == "pykka":
        from ._pykka import w4_activate as pykka_activate

        gc.collect()
        before = rss_bytes()
        seconds, keep = pykka_activate(n)  # keep the actors alive until measured
        gc.collect()
        after = rss_bytes()
        _emit(_result(n, seconds, before, after))
        del keep

    activate = _async_activate(system)

    async def main() -> None:
        gc.collect()
        before = rss_bytes()
        seconds, keep = await activate(n)  # keep the agents alive until measured
        for _ in range(3):  # let finished workers exit
            await asyncio.sleep(0)
        gc.collect()
        after = rss_bytes()
        _emit(_result(n, seconds, before, after))
        del keep

    run_async(main, loop)


if __name__ == "__main__":
    name, loop_name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if loop_name not in ("asyncio", "uvloop"):
        raise SystemExit(f"unknown loop {loop_name!r}")
    measure(name, "uvloop" if loop_name == "uvloop" else "asyncio", count)
