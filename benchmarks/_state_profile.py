"""Where kerna's time goes when a state target is missed.

``cprofile_top`` runs a workload under cProfile (deterministic, main thread) and keeps
the functions with the most own time, per unit of work (cProfile inflates call-heavy
code: read it for what is called how often, and for shares). ``page_costs`` times
single ``backend.range`` pages at the start, middle and end of a 100,000-key log: on a
backend whose page cost grows with the position, a paged replay is quadratic. (The
sqlite store runs SQL on its own thread, which the profiler does not see: its page
costs are the evidence.)
"""

from __future__ import annotations

import cProfile
import pstats
import time
from collections.abc import Callable

from kerna.state import connect

from ._common import run_async
from ._state_recovery import KEY, LAYOUT, PAGE

__all__ = ["cprofile_top", "page_costs"]

TOP = 22


def _short(path: str) -> str:
    for marker in ("/site-packages/", "/lib/python3.", "/work/main/"):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "/lib/python3." else tail
    return path


def cprofile_top(fn: Callable[[], object], per: int, top: int = TOP) -> str:
    """cProfile of ``fn()``: the functions with the most own time, with calls and own
    µs per unit of work (``per`` units: writes, events)."""
    profile = cProfile.Profile()
    profile.enable()
    try:
        fn()
    finally:
        profile.disable()
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    rows = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:top]
    total = sum(v[2] for v in stats.values())
    lines = [
        f"total own time {total:.3f} s = {total / per * 1e6:.1f} µs per unit ({per:,} units)",
        f"{'calls/unit':>10} {'own µs/unit':>11} {'cum µs/unit':>11}  function",
    ]
    for (path, line, name), (_, calls, own, cum, _) in rows:
        where = f"{name} ({_short(path)}:{line})" if line else name
        lines.append(
            f"{calls / per:>10.2f} {own / per * 1e6:>11.1f} {cum / per * 1e6:>11.1f}  {where}"
        )
    return "\n".join(lines)


def page_costs(url: str, type_name: str, events: int, **options: object) -> str:
    """ms per ``backend.range(log prefix, start_after=..., limit=1000)`` page, at a few
    positions in the log (median of 3 reads each)."""

    async def main() -> str:
        backend = await connect(url, **options)
        prefix = LAYOUT.log_prefix(type_name, KEY)
        out = []
        try:
            for seq in (0, events // 2, events - PAGE):
                after = LAYOUT.log(type_name, KEY, seq) if seq else None
                costs = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    page = await backend.range(prefix, start_after=after, limit=PAGE)
                    costs.append(time.perf_counter() - t0)
                costs.sort()
                out.append(
                    f"page after seq {seq:>7,}: {costs[1] * 1e3:7.2f} ms ({len(page.kvs)} keys)"
                )
        finally:
            await backend.aclose()
        return "\n".join(out)

    return run_async(main, "asyncio")
