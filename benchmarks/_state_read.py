"""``self.state`` against ``d[k]``, both read inside one handler (``Reader``)."""

from __future__ import annotations

from kerna import Kernel

from ._common import run_async
from ._state_models import ReadBench, Reader, ReadTimes

__all__ = ["reads"]


def reads(n: int, rounds: int) -> dict[str, float]:
    """ns per read of ``self.state`` and ``d[k]`` (the baseline subtracted), the
    baseline itself, and the ratios net and gross."""

    async def main() -> ReadTimes:
        async with Kernel() as kernel:  # state reads are local: the default backend
            kernel.register(Reader)
            times: ReadTimes = await kernel.ref(Reader, "r").ask(
                ReadBench(n=n, rounds=rounds), timeout=600
            )
            return times

    t = run_async(main, "asyncio")
    per = 1e9 / n
    base = t.baseline * per
    state, d = t.state * per - base, t.dict * per - base
    return {
        "state_ns": state,
        "dict_ns": d,
        "baseline_ns": base,
        "ratio": state / d,
        "gross_ratio": t.state / t.dict,
    }
