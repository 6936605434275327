"""Benchmarks of kerna.plugins' inference-cost decorators (ISSUE10 section 6).

``make bench-plugins`` (= ``.venv-ray/bin/python -m benchmarks.plugins_bench --write``;
``[--runs 5] [--no-ray]``). ``--write`` writes benchmarks/RESULTS-plugins.md and
results-plugins.json. Any venv with kerna and cachetools runs it (``make test``'s
``.venv`` too); the Ray Serve rows need ``ray[serve]``, which only ``.venv-ray`` has
(``benchmarks/requirements-ray.txt``), and say why they are missing elsewhere.

- B1 batching: 64 concurrent callers ask a simulated model that costs 2 ms fixed plus
  0.1 ms per item per call (``asyncio.sleep``), one call at a time (one device: the
  model is one activation; ``@batched`` runs one batch at a time per activation).
  Unbatched: a ``@handler`` calls the model once per ask. Batched: ``@batched(max_size
  =64, max_wait=0.005)``. Figure: asks answered per second; target >= 10x. The peer:
  Ray Serve's ``@serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)`` on the
  same model, in one Serve replica, with the 64 callers in the replica's event loop
  (the decorator alone, the most favourable configuration for Ray) and through a
  ``DeploymentHandle`` (an actor call per ask); ``benchmarks/_ray_serve.py`` says why it
  cannot run outside a replica. All B1 runs are made while Ray's processes are up.
- B2 cache hit: 20,000 sequential asks whose answer is ready: a ``@cached`` handler on
  a hit, against a ``@handler`` returning the answer from a plain dict. Figure: p50 µs
  per ask; target <= 3x. Also shown, without a target: the bare in-handler cost of one
  hit (key encoding, BLAKE2b, TTLCache lookup) against one dict lookup.

Runs interleave the variants (a run measures each, starting one further on in each
run), each kerna run on a fresh event loop; figures are medians with min to max, a
ratio is the median of the per-run ratios. B1's runs come first, with Ray up; B2's
after Ray has stopped (its CPU-bound figures would feel Ray's background processes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from kerna import Agent, Kernel, Message, Request, handler
from kerna.plugins import batch_stats, batched, cached

from . import _ray_serve

HERE = Path(__file__).resolve().parent
CALLERS = 64
FIXED, PER_ITEM = 0.002, 0.0001


class Completion(Message):
    text: str


class Prompt(Request[Completion]):
    text: str


class Lookup(Request[Completion]):
    text: str


class Bare(Request[float]):
    n: int


async def model(batch_size: int) -> None:
    await asyncio.sleep(FIXED + PER_ITEM * batch_size)


class Unbatched(Agent):
    @handler
    async def infer(self, msg: Prompt) -> Completion:
        await model(1)
        return Completion(text=msg.text)


class Batched(Agent):
    @batched(max_size=64, max_wait=0.005)
    async def infer(self, batch: list[Prompt]) -> list[Completion]:
        await model(len(batch))
        return [Completion(text=p.text) for p in batch]


ANSWER = Completion(text="answer")


class Plain(Agent):
    table: dict[str, Completion] = {"q": ANSWER}

    @handler
    async def lookup(self, msg: Lookup) -> Completion:
        return self.table[msg.text]

    @handler
    async def bare(self, msg: Bare) -> float:
        table, start = self.table, time.perf_counter()
        for _ in range(msg.n):
            table["q"]
        return time.perf_counter() - start


class Cached(Agent):
    @handler
    @cached(ttl=3600, maxsize=10_000)
    async def lookup(self, msg: Lookup) -> Completion:
        return ANSWER

    @handler
    async def bare(self, msg: Bare) -> float:
        query, start = Lookup(text="q"), time.perf_counter()
        for _ in range(msg.n):
            await Cached.lookup(self, query)  # the hit path, as the worker calls it
        return time.perf_counter() - start


async def throughput(agent: type[Agent], per_caller: int) -> float:
    async with Kernel() as kernel:
        kernel.register(agent)
        ref = kernel.ref(agent, "m")

        async def caller(c: int) -> None:
            for i in range(per_caller):
                await ref.ask(Prompt(text=f"{c}.{i}"))

        await ref.ask(Prompt(text="warm"))
        start = time.perf_counter()
        await asyncio.gather(*(caller(c) for c in range(CALLERS)))
        elapsed = time.perf_counter() - start
        if agent is Batched:
            stats = batch_stats(kernel, Batched.infer)
            assert stats.largest == CALLERS, stats
    return CALLERS * per_caller / elapsed


async def hit_latency(agent: type[Agent], asks: int) -> tuple[float, float]:
    """p50 µs of a ready answer's ask; µs per bare lookup in the handler."""
    async with Kernel() as kernel:
        kernel.register(agent)
        ref = kernel.ref(agent, "h")
        query = Lookup(text="q")
        for _ in range(1000):  # warm: and the first @cached ask fills the cache
            await ref.ask(query)
        samples = []
        clock = time.perf_counter
        for _ in range(asks):
            start = clock()
            await ref.ask(query)
            samples.append(clock() - start)
        bare = await ref.ask(Bare(n=100_000))
    return statistics.median(samples) * 1e6, bare / 100_000 * 1e6


def run_loop(coro: Any, loop_factory: Any = None) -> Any:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coro)


def uvloop_factory() -> Any:
    """uvloop's loop factory, or None when it is not installed."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def rotated(items: list[Any], run: int) -> list[Any]:
    """``items`` starting ``run`` places further on (each goes first in turn)."""
    k = run % len(items)
    return items[k:] + items[:k]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="write RESULTS-plugins.md")
    parser.add_argument("--no-ray", action="store_true", help="leave Ray Serve out")
    args = parser.parse_args()
    started = time.time()
    raw: dict[str, list[float]] = {
        k: [] for k in ("unbatched", "batched", "plain", "cached", "plain_bare", "cached_bare")
    }
    ray_missing = "left out (--no-ray)" if args.no_ray else _ray_serve.unavailable()
    ray_info: dict[str, Any] = {"missing": ray_missing}
    peer = _ray_serve.RayPeer() if ray_missing is None else contextlib.nullcontext(None)
    with peer as ray:
        uvloop = uvloop_factory()
        if ray is not None:
            ray_info |= {"version": ray.version, "startup_s": ray.startup_s, "loop": ray.loop}
            raw |= {"ray_replica": [], "ray_handle": []}
            if uvloop is not None:
                raw["batched_uvloop"] = []
        for run in range(args.runs):
            b1: list[tuple[str, Any]] = [
                ("unbatched", lambda: run_loop(throughput(Unbatched, 8))),
                ("batched", lambda: run_loop(throughput(Batched, 100))),
            ]
            if ray is not None:
                b1 += [
                    ("ray_replica", lambda: ray.measure("in_replica", 100)),
                    ("ray_handle", lambda: ray.measure("via_handle", 20)),
                ]
                if uvloop is not None:  # Ray's workers take it when installed (ray[serve] is)
                    b1.append(
                        ("batched_uvloop", lambda: run_loop(throughput(Batched, 100), uvloop))
                    )
            for name, measure in rotated(b1, run):
                raw[name].append(measure())
            line = ", ".join(f"{name} {raw[name][-1]:,.0f}/s" for name, _ in b1)
            print(f"B1 run {run + 1}: {line}", flush=True)
    for run in range(args.runs):
        hits = [("plain", Plain), ("cached", Cached)]
        for name, agent in rotated(hits, run):
            p50, bare = run_loop(hit_latency(agent, 20_000))
            raw[name].append(p50)
            raw[f"{name}_bare"].append(bare)
        print(
            f"B2 run {run + 1}: hit p50 plain {raw['plain'][-1]:.1f} µs cached"
            f" {raw['cached'][-1]:.1f} µs; bare {raw['plain_bare'][-1]:.3f} /"
            f" {raw['cached_bare'][-1]:.3f} µs",
            flush=True,
        )
    ratios = {
        "batching": [b / u for b, u in zip(raw["batched"], raw["unbatched"], strict=True)],
        "hit": [c / p for c, p in zip(raw["cached"], raw["plain"], strict=True)],
        "bare": [c / p for c, p in zip(raw["cached_bare"], raw["plain_bare"], strict=True)],
    }
    if "ray_replica" in raw:
        for name in ("ray_replica", "ray_handle"):
            ratios[f"{name}_unbatched"] = [
                r / u for r, u in zip(raw[name], raw["unbatched"], strict=True)
            ]
            ratios[f"batched_{name}"] = [
                b / r for b, r in zip(raw["batched"], raw[name], strict=True)
            ]
        if "batched_uvloop" in raw:
            ratios["batched_uvloop_unbatched"] = [
                b / u for b, u in zip(raw["batched_uvloop"], raw["unbatched"], strict=True)
            ]
            ratios["batched_uvloop_ray_replica"] = [
                b / r for b, r in zip(raw["batched_uvloop"], raw["ray_replica"], strict=True)
            ]
    load = os.getloadavg()
    report = render(raw, ratios, load, time.time() - started, args.runs, ray_info)
    print(report)
    if args.write:
        (HERE / "RESULTS-plugins.md").write_text(report)
        (HERE / "results-plugins.json").write_text(
            json.dumps({"raw": raw, "ratios": ratios, "load": load, "ray": ray_info}, indent=1)
            + "\n"
        )


def render(
    raw: dict[str, list[float]],
    ratios: dict[str, list[float]],
    load: tuple[float, float, float],
    took: float,
    runs: int,
    ray: dict[str, Any],
) -> str:
    def fig(name: str, fmt: str) -> str:
        s = summary(raw[name])
        return f"{s['median']:{fmt}} ({s['min']:{fmt}} to {s['max']:{fmt}})"

    def ratio(name: str) -> str:
        s = summary(ratios[name])
        return f"{s['median']:.2f}x ({s['min']:.2f}x to {s['max']:.2f}x)"

    batching = statistics.median(ratios["batching"])
    hit = statistics.median(ratios["hit"])
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        cwd=HERE,
    ).stdout.splitlines()
    outputs = ("RESULTS-plugins.md", "results-plugins.json")  # this report's own files
    dirty = [line for line in dirty if not line.endswith(outputs)]
    tree = "with local changes" if dirty else "clean working tree"
    uvloop_text = (
        f", {ratio('batched_uvloop_ray_replica')} on uvloop (the replica ran on {ray.get('loop')})"
        if "batched_uvloop" in raw
        else ""
    )
    if ray["missing"] is None:
        ray_rows = f"""
| Ray Serve {ray["version"]} `@serve.batch`, callers in the replica's loop | \
{fig("ray_replica", ",.0f")} | {ratio("ray_replica_unbatched")} |
| Ray Serve {ray["version"]} `@serve.batch` via a `DeploymentHandle` | \
{fig("ray_handle", ",.0f")} | {ratio("ray_handle_unbatched")} |"""
        if "batched_uvloop" in raw:
            ray_rows += f"""
| `@batched(max_size=64, max_wait=0.005)` on uvloop | \
{fig("batched_uvloop", ",.0f")} | {ratio("batched_uvloop_unbatched")} |"""
        ray_text = f"""

The peer, Ray Serve's `@serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)` on
the same model and one batch at a time (its default `max_concurrent_batches=1`): Ray
2.60's decorator runs only inside a Serve replica (its queue reads
`serve.get_replica_context()`, which raises outside one), so it runs in one replica of
a local Ray (`num_cpus=2`, no dashboard, no HTTP proxy; started in
{ray["startup_s"]:.1f} s, in a process of its own so that no Ray thread runs in the one
measuring kerna, and up during every B1 run). Its most favourable configuration, the
one to compare with kerna's in-process `@batched`: the 64 callers are tasks in the
replica's own event loop (no RPC, no serialization per ask; a plain call of the
decorated method, where kerna's callers make an ask, through a mailbox). kerna's
`@batched` over it: **{ratio("batched_ray_replica")}** on asyncio's loop{uvloop_text}.
Called from outside the replica through a
`DeploymentHandle` (an actor call per ask, the way Serve is called), kerna's `@batched`
over it: {ratio("batched_ray_handle")}."""
    else:
        ray_rows = ""
        ray_text = f"""

The peer, Ray Serve's `@serve.batch`, was not measured in this run: {ray["missing"]}."""
    return f"""# kerna.plugins benchmarks

- Command: `make bench-plugins` (= `.venv-ray/bin/python -m benchmarks.plugins_bench
  --write`; the method is in the module docstring of benchmarks/plugins_bench.py)
- Date: {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}; took {took:.0f} s; load
  average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min; the
  machine's 2 cores are shared with other work)
- kerna commit: {commit} ({tree}); Python
  {platform.python_version()}, asyncio default loop, {platform.platform()}
- Every figure is the median of {runs} interleaved runs (min to max); a ratio is the
  median of the per-run ratios. Default `Kernel()` settings.

## B1 `@batched` vs unbatched: 64 concurrent callers, a model of 2 ms + 0.1 ms per item

| variant | asks/s | ratio |
|---|---|---|
| unbatched (`@handler`, one model call per ask) | {fig("unbatched", ",.0f")} | 1.00x |
| `@batched(max_size=64, max_wait=0.005)` | {fig("batched", ",.0f")} | {ratio("batching")} |\
{ray_rows}

Target >= 10x: **{"PASS" if batching >= 10 else "MISS"}** ({batching:.1f}x). The bound is
the model: unbatched, each ask costs 2.1 ms of model time (at most 476 asks/s); a full
batch of 64 costs 8.4 ms (at most 7,619 asks/s, 16x). The selector loop waits in whole
milliseconds (epoll), so each simulated call takes up to 1 ms longer than asked: 2.1 ms
becomes about 3 ms and 8.4 ms about 9 ms, which costs the unbatched side more (hence
above 16x).{ray_text}

## B2 the cache hit path vs a plain dict lookup

| variant | p50 µs per ask | ratio |
|---|---|---|
| `@handler` returning `self.table[msg.text]` | {fig("plain", ".2f")} | 1.00x |
| `@handler @cached(...)` on a hit | {fig("cached", ".2f")} | {ratio("hit")} |

Target <= 3x: **{"PASS" if hit <= 3 else "MISS"}** ({hit:.2f}x), on the ask a caller
makes. The hit alone, called in a loop inside a handler (no target; what the hit adds to
an ask): {fig("cached_bare", ".3f")} µs against {fig("plain_bare", ".3f")} µs for the dict
lookup ({ratio("bare")}): msgpack-encoding the message, its BLAKE2b digest and
cachetools' `TTLCache` lookup (Python code: its timer, its LRU order), which a `key=`
function shortens.
"""


if __name__ == "__main__":
    main()
