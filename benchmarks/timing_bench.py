"""What ``Kernel(timing=True)`` costs on W1-W3, and what the code that makes it
possible costs with it off.

    python -m benchmarks.timing_bench [--base PYTHONPATH]  # off, every message, 1 in 16
    python -m benchmarks.timing_bench --variant none|off|on|sampled  # one run, JSON

``none`` passes no ``timing`` option (for a tree from before it existed: run it with
that tree's ``kerna`` first on ``PYTHONPATH``). Each run is a fresh process; the
report is the median of the rounds, variants interleaved so that a busy machine
slows them alike. Results: benchmarks/RESULTS-timing.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from kerna import Agent, Kernel, Message, handler

W1_N = 200_000
W2_N = 50_000
W3_EVENTS = 20_000
W3_TYPES = 10


class Ping(Message):
    n: int


class Sink(Agent):
    count = 0
    target = 0
    done: asyncio.Future[None] | None = None

    @handler
    async def ping(self, msg: Ping) -> int:
        Sink.count += 1
        if Sink.count == Sink.target and Sink.done is not None:
            Sink.done.set_result(None)
        return msg.n


TIMING = {"off": 0, "on": 1, "sampled": 16}


def _kernel(variant: str) -> Kernel:
    return Kernel() if variant == "none" else Kernel(timing=TIMING[variant])


def _reset(target: int) -> asyncio.Future[None]:
    Sink.count, Sink.target = 0, target
    Sink.done = asyncio.get_running_loop().create_future()
    return Sink.done


async def w1(variant: str) -> float:
    async with _kernel(variant) as kernel:
        kernel.register(Sink)
        done = _reset(W1_N)
        ref = kernel.ref(Sink, "a")
        t0 = time.perf_counter()
        for i in range(W1_N):
            await ref.tell(Ping(i))
        await done
        return W1_N / (time.perf_counter() - t0)


async def w2(variant: str) -> float:
    async with _kernel(variant) as kernel:
        kernel.register(Sink)
        _reset(W2_N)
        ref = kernel.ref(Sink, "a")
        lat = []
        for i in range(W2_N):
            t0 = time.perf_counter()
            await ref.ask(Ping(i))
            lat.append(time.perf_counter() - t0)
        return statistics.median(lat) * 1e6


async def w3(variant: str) -> float:
    async with _kernel(variant) as kernel:
        for i in range(W3_TYPES):
            kernel.register(type(f"Sink{i}", (Sink,), {}))
            kernel.subscribe("t", f"Sink{i}")
        done = _reset(W3_EVENTS * W3_TYPES)
        t0 = time.perf_counter()
        for i in range(W3_EVENTS):
            await kernel.publish("t", Ping(i))
        await done
        return W3_EVENTS * W3_TYPES / (time.perf_counter() - t0)


def one(variant: str) -> dict[str, float]:
    return {
        "w1_msgs_s": asyncio.run(w1(variant)),
        "w2_p50_us": asyncio.run(w2(variant)),
        "w3_deliveries_s": asyncio.run(w3(variant)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", choices=("none", "off", "on", "sampled"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--base", help="PYTHONPATH of a tree to run as 'none' (optional)")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(one(args.variant)))
        return
    variants: list[tuple[str, str, dict[str, str]]] = []
    if args.base:
        variants.append(("base", "none", {**os.environ, "PYTHONPATH": args.base}))
    variants += [(v, v, dict(os.environ)) for v in ("off", "on", "sampled")]
    runs: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in variants}
    for _ in range(args.rounds):
        for label, variant, env in variants:
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.timing_bench", "--variant", variant],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            runs[label].append(json.loads(out))
    medians: dict[str, Any] = {
        label: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for label, rs in runs.items()
    }
    print(json.dumps(medians, indent=2))


if __name__ == "__main__":
    main()
