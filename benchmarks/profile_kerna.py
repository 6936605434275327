"""Profile kerna's hot paths: ``python -m benchmarks.profile_kerna [--cprofile] [W ...]``.

Workloads: ``w1`` (200,000 tells), ``w2s`` (20,000 sequential asks), ``w2c`` (64
concurrent callers x 500 asks), ``w4`` (100,000 activations). pyinstrument (sampling,
low overhead) by default; ``--cprofile`` prints cProfile's top functions by own time
(deterministic; inflates call-heavy code, so read it for counts, not shares).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import time
from collections.abc import Callable

from . import _kerna
from ._common import Sizes, run_async

__all__ = ["main"]

SIZES = Sizes()


async def _w4() -> None:
    _, cleanup = await _kerna.w4_activate(SIZES.w4_agents)
    await cleanup()


WORKLOADS: dict[str, Callable[[], object]] = {
    "w1": lambda: _kerna.w1(SIZES.w1_messages, "asyncio"),
    "w2s": lambda: _kerna.w2_sequential(SIZES.w2_sequential, "asyncio"),
    "w2c": lambda: _kerna.w2_concurrent(SIZES.w2_callers, SIZES.w2_per_caller, "asyncio"),
    "w4": lambda: run_async(_w4, "asyncio"),
}


def _pyinstrument(fn: Callable[[], object]) -> str:
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0002, async_mode="disabled")
    profiler.start()
    fn()
    profiler.stop()
    return profiler.output_text(unicode=False, color=False)


def _cprofile(fn: Callable[[], object], top: int) -> str:
    profile = cProfile.Profile()
    profile.runcall(fn)
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


class _GcClock:
    """Wall time spent in the cyclic garbage collector (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = 0
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._t0
            self.collections += 1


def _gc_share(fn: Callable[[], object]) -> str:
    clock = _GcClock()
    gc.callbacks.append(clock)
    t0 = time.perf_counter()
    try:
        fn()
    finally:
        gc.callbacks.remove(clock)
    total = time.perf_counter() - t0
    return (
        f"unprofiled: {total:.3f} s, of which {clock.seconds:.3f} s "
        f"({clock.seconds / total:.0%}) in {clock.collections} gc collections"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_kerna")
    parser.add_argument("workloads", nargs="*", default=["w1", "w2s"], choices=[*WORKLOADS])
    parser.add_argument("--cprofile", action="store_true", help="cProfile instead")
    parser.add_argument("--top", type=int, default=25, help="cProfile rows")
    args = parser.parse_args(argv)
    for name in args.workloads:
        fn = WORKLOADS[name]
        fn()  # warm-up
        print(f"==== kerna {name}: {_gc_share(fn)} ====")
        print(f"==== kerna {name} ({'cProfile' if args.cprofile else 'pyinstrument'}) ====")
        text = _cprofile(fn, args.top) if args.cprofile else _pyinstrument(fn)
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
