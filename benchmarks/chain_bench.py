"""Benchmark of the full middleware chain against an empty one on W2 (ISSUE10 section 6).

``.venv/bin/python -m benchmarks.chain_bench [--runs 5] [--asks 20000] [--write]`` (the
``.venv`` of ``make test`` has OpenTelemetry and pybreaker). ``--write`` writes
benchmarks/RESULTS-chain.md and results-chain.json.

W2 sequential: one caller outside any agent asks an echo agent and waits for each
reply; the figures are the p50 µs per ask (the target's measure) and the CPU µs per
ask (the run's process time over its asks: it includes the spans' hand-over to the
exporter, which runs between asks, and not the time other work took the CPU). Empty
chain: ``Kernel()``. Full chain:
``Kernel(middleware=[Tracing(provider), resilience], timing=16)``: an SDK
``TracerProvider`` (its default sampler: every trace) whose ``SimpleSpanProcessor``
hands every ended span to an exporter that drops it (two spans per ask are made,
filled, ended and exported; the run checks the exporter got every one), ``Resilience``
with a policy on the target: a 1 s timeout per attempt, a retry policy (3 retries on
``ConnectionError``, the message ``@idempotent``) and a breaker (5 failures), and the
kernel's metrics: mailbox wait and handling histograms for one message in 16 (what
``kerna node`` exports on ``/metrics`` by default), also through OpenTelemetry
(``kerna.plugins.Metrics`` on an SDK ``MeterProvider``, its reader read once at the
end). The target never fails, so what is
measured is the cost of the machinery on every call. Target: full <= 2x empty (p50).
The other rows take the chain apart (each part alone, and a middleware that does
nothing: the chain's own mechanism), vary it (1% of traces sampled; the SDK's
``BatchSpanProcessor``), and replace one part of the full chain by a stand-in whose
hooks do nothing (the full chain's row minus that one is the part's own work there);
each part's hooks are also timed apart, in a loop of their own (``hooks_apart_us``).

Runs interleave the variants (alternating which goes first), each on a fresh event
loop; figures are medians with min to max, the ratio the median of per-run ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from kerna import Agent, Kernel, Message, MessageContext, Request, handler
from kerna.plugins import (
    Breaker,
    Metrics,
    Policy,
    Resilience,
    Retry,
    SendNext,
    Tracing,
    idempotent,
)

HERE = Path(__file__).resolve().parent


class Pong(Message):
    n: int


@idempotent
class Ping(Request[Pong]):
    n: int


class Echo(Agent):
    @handler
    async def ping(self, msg: Ping) -> Pong:
        return Pong(msg.n)


class Dropping(SpanExporter):
    """The no-op exporter: every span is exported to nowhere."""

    def __init__(self) -> None:
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += len(spans)
        return SpanExportResult.SUCCESS


VARIANTS = (
    "empty", "full", "sampled", "batched", "tracing", "resilience", "metrics", "hooks", "sync",
    "tracing+resilience", "full-stand-in-tracing", "full-stand-in-resilience",
)  # fmt: skip
LABELS = {
    "full": "the full chain: `Tracing` (SDK, no-op exporter) + `Resilience` (timeout, "
    "retry, breaker) + metrics (`timing=16` and `Metrics`, OpenTelemetry)",
    "sampled": "the full chain, 1% of traces sampled (`ParentBased(TraceIdRatioBased(0.01))`)",
    "batched": "the full chain, the SDK's `BatchSpanProcessor` (its queue raised to 65,536 "
    "spans) instead of `SimpleSpanProcessor`",
    "tracing": "`Tracing` alone",
    "resilience": "`Resilience` alone",
    "metrics": "metrics alone (`Kernel(timing=16)` and `Metrics`)",
    "hooks": "a middleware whose `send` and `handle` only call `call_next()`",
    "sync": "a middleware whose synchronous `before_*`/`after_*` hooks do nothing",
    "tracing+resilience": "`Tracing` + `Resilience` (the full chain without the metrics)",
    "full-stand-in-tracing": "the full chain, a stand-in for `Tracing` (its four hooks, "
    "doing nothing but add one header)",
    "full-stand-in-resilience": "the full chain, a stand-in for `Resilience` (its hooks, "
    "doing nothing but set a 1 s timeout)",
}
STAND_IN_T, STAND_IN_R = "full-stand-in-tracing", "full-stand-in-resilience"
TRACED = ("full", "tracing", "sampled", "batched", "tracing+resilience", STAND_IN_R)
TIMED = ("full", "sampled", "batched", "metrics", STAND_IN_T, STAND_IN_R)
RESILIENT = ("full", "resilience", "sampled", "batched", "tracing+resilience", STAND_IN_T)


class Passing:
    """The chain's own cost: a send and a handle hook that do nothing else."""

    async def send(self, ctx: MessageContext, call_next: SendNext) -> Any:
        return await call_next()

    async def handle(self, ctx: MessageContext, call_next: Callable[[], Awaitable[Any]]) -> Any:
        return await call_next()


class Inline:
    """The chain's own cost for synchronous hooks: before and after that do nothing."""

    def before_send(self, ctx: MessageContext) -> tuple[None, None]:
        return None, None

    def after_send(self, ctx: MessageContext, state: None, result: Any, error: object) -> None:
        pass

    def before_handle(self, ctx: MessageContext) -> None:
        return None

    def after_handle(self, ctx: MessageContext, state: None, result: Any, error: object) -> None:
        pass


class TracingStandIn:
    """Where ``Tracing`` sits, its four synchronous hooks doing nothing but add one
    header: the full chain less ``Tracing``'s own work."""

    def before_send(self, ctx: MessageContext) -> tuple[None, dict[str, str]]:
        return None, {"traceparent": "-"}

    def after_send(self, ctx: MessageContext, state: None, result: Any, error: object) -> None:
        pass

    def before_handle(self, ctx: MessageContext) -> None:
        return None

    def after_handle(self, ctx: MessageContext, state: None, result: Any, error: object) -> None:
        pass


class ResilienceStandIn:
    """Where ``Resilience`` sits, its hooks doing nothing but bound the attempt by 1 s:
    the full chain less ``Resilience``'s own work."""

    def before_send(self, ctx: MessageContext) -> tuple[None, None, float]:
        return None, None, 1.0

    def after_send(self, ctx: MessageContext, state: None, result: Any, error: object) -> None:
        pass

    async def send_failed(
        self, ctx: MessageContext, state: None, error: Exception, call_next: SendNext
    ) -> Any:
        raise error


def chain(
    variant: str, exporter: Dropping
) -> tuple[list[object], TracerProvider, InMemoryMetricReader | None]:
    sampler = ParentBased(TraceIdRatioBased(0.01)) if variant == "sampled" else None
    provider = TracerProvider(sampler=sampler, shutdown_on_exit=False)
    if variant == "hooks":
        return [Passing()], provider, None
    if variant == "sync":
        return [Inline()], provider, None
    if variant == "batched":
        # Its default queue (2,048 spans) overflows at this rate, dropping spans: its
        # export thread gets the GIL too rarely while the loop runs flat out.
        provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=1 << 16))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    policy = Policy(
        timeout=1.0,
        retry=Retry(on=(ConnectionError,), max_retries=3, interval=0.01),
        breaker=Breaker(failures=5, reset_timeout=30),
    )
    tracing = [Tracing(provider)] if variant in TRACED else []
    resilience = Resilience(policies={"echo": policy}, targets={Echo: "echo"})
    # The kernel's metrics through OpenTelemetry too (kerna.plugins.Metrics): its
    # histograms take the timed messages (timing=16); a reader that is read at the end.
    reader = InMemoryMetricReader() if variant in TIMED else None
    metrics = []
    if reader is not None:
        metrics = [Metrics(MeterProvider(metric_readers=[reader], shutdown_on_exit=False))]
    chain: list[object] = [*tracing, *([resilience] if variant in RESILIENT else []), *metrics]
    if variant == STAND_IN_T:
        chain = [TracingStandIn(), *chain]
    elif variant == STAND_IN_R:
        chain = [chain[0], ResilienceStandIn(), *chain[1:]]
    return chain, provider, reader


async def w2(variant: str, asks: int) -> tuple[float, float]:
    """The p50 µs per ask, and the CPU µs per ask (the run's process time over its
    asks: it includes the spans' batched hand-over to the exporter, which runs on the
    loop between asks, and leaves out the time other processes took the CPU)."""
    exporter = Dropping()
    timing = 16 if variant in TIMED else 0  # kerna node's default: one message in 16
    middleware, provider, reader = chain(variant, exporter)
    async with Kernel(middleware=middleware, timing=timing) as kernel:
        kernel.register(Echo)
        ref = kernel.ref(Echo, "e")
        for i in range(1000):  # warm up
            await ref.ask(Ping(i))
        clock = time.perf_counter
        samples = []
        began = time.process_time()  # CPU time: what other work on the machine takes out
        for i in range(asks):
            start = clock()
            await ref.ask(Ping(i))
            samples.append(clock() - start)
        took = time.process_time() - began
    provider.shutdown()  # a BatchSpanProcessor exports what it holds
    if variant in ("full", "tracing", "batched", "tracing+resilience", STAND_IN_R):  # 2 an ask
        assert exporter.exported == 2 * (asks + 1000), exporter.exported
    if timing:
        assert sum(t.handling.count for t in kernel.timings().values()) > asks // 20
    if reader is not None:  # Metrics' histograms took the timed messages
        data = reader.get_metrics_data()
        assert data is not None
        assert data.resource_metrics, "no metrics"
    return statistics.median(samples) * 1e6, took / asks * 1e6


def bare_span_us(sampled: bool, spans: int = 20_000) -> float:
    """µs per SDK span started and ended outside kerna (the provider of the benchmark)."""
    sampler = ParentBased(TraceIdRatioBased(0.01)) if sampled else None
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(Dropping()))
    tracer = provider.get_tracer("bench")
    attributes = {"kerna.message.id": 1, "kerna.message.kind": "ask"}
    start = time.perf_counter()
    for _ in range(spans):
        tracer.start_span("x", attributes=attributes).end()
    return (time.perf_counter() - start) / spans * 1e6


async def hooks_apart_us(rounds: int = 20_000) -> tuple[float, float]:
    """µs for ``Tracing``'s four hooks (a send's span and its handling's, the handling
    finding its parent in flight) and for ``Resilience``'s two (a call to its target),
    each called in a loop of their own outside any ask (as ``timeit`` would: their own
    code, warm, without the rest of an ask around it)."""
    import msgspec

    from kerna._envelope import ASK, Envelope  # (the view of one message, made here)

    middleware, _, _ = chain("full", Dropping())
    tracing: Any = middleware[0]
    resilience: Any = middleware[1]
    async with Kernel(middleware=middleware, timing=16) as kernel:
        kernel.register(Echo)
        ref = kernel.ref(Echo, "e")
        await ref.ask(Ping(0))  # the breaker made
        loop = asyncio.get_running_loop()
        env = Envelope(1, ASK, ref.id, Ping(0), None, 1, 0, loop.time() + 30, (), None, None)
        send = MessageContext(env, loop)
        clock = time.perf_counter
        took = 0.0
        for _ in range(rounds // 128):  # the spans handed over between batches, untimed
            start = clock()
            for _ in range(128):
                span, headers = tracing.before_send(send)
                handle = MessageContext(msgspec.structs.replace(env, headers=headers), loop)
                state = tracing.before_handle(handle)
                tracing.after_handle(handle, state, None, None)
                tracing.after_send(send, span, None, None)
            took += clock() - start
            tracing.flush()
        traced = took / (rounds // 128 * 128) * 1e6
        start = clock()
        for _ in range(rounds):
            state, _, _ = resilience.before_send(send)
            resilience.after_send(send, state, None, None)
        resilient = (clock() - start) / rounds * 1e6
    return traced, resilient


def run_loop(coro: Any) -> Any:
    with asyncio.Runner() as runner:
        return runner.run(coro)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--asks", type=int, default=20_000)
    parser.add_argument("--write", action="store_true", help="write RESULTS-chain.md")
    args = parser.parse_args()
    started = time.time()
    raw: dict[str, list[float]] = {v: [] for v in VARIANTS}
    means: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for run in range(args.runs):
        for name in VARIANTS if run % 2 == 0 else VARIANTS[::-1]:
            p50, mean = run_loop(w2(name, args.asks))
            raw[name].append(p50)
            means[name].append(mean)
        print(f"run {run + 1}: " + ", ".join(f"{v} {raw[v][-1]:.1f} µs" for v in VARIANTS))
        traced, resilient = run_loop(hooks_apart_us())
        raw.setdefault("tracing_hooks", []).append(traced)
        raw.setdefault("resilience_hooks", []).append(resilient)
        raw.setdefault("span", []).append(bare_span_us(False))
        raw.setdefault("span_sampled", []).append(bare_span_us(True))
    ratios = {v: [f / e for f, e in zip(raw[v], raw["empty"], strict=True)] for v in VARIANTS[1:]}
    mean_ratios = {
        v: [f / e for f, e in zip(means[v], means["empty"], strict=True)] for v in VARIANTS[1:]
    }
    load = os.getloadavg()
    report = render(raw, ratios, means, mean_ratios, load, time.time() - started, args)
    print(report)
    if args.write:
        (HERE / "RESULTS-chain.md").write_text(report)
        (HERE / "results-chain.json").write_text(
            json.dumps(
                {
                    "p50": raw,
                    "ratios": ratios,
                    "cpu_us_per_ask": means,
                    "cpu_ratios": mean_ratios,
                    "load": load,
                },
                indent=1,
            )
            + "\n"
        )


def render(
    raw: dict[str, list[float]],
    ratios: dict[str, list[float]],
    means: dict[str, list[float]],
    mean_ratios: dict[str, list[float]],
    load: tuple[float, float, float],
    took: float,
    args: argparse.Namespace,
) -> str:
    def fig(values: list[float], fmt: str, unit: str = "") -> str:
        lo, mid, hi = min(values), statistics.median(values), max(values)
        return f"{mid:{fmt}}{unit} ({lo:{fmt}}{unit} to {hi:{fmt}}{unit})"

    def med(values: list[float]) -> float:
        return statistics.median(values)

    ratio, sampled = med(ratios["full"]), med(ratios["sampled"])
    rows = [
        f"| empty (`Kernel()`) | {fig(raw['empty'], '.2f')} | 1.00x | "
        f"{fig(means['empty'], '.2f')} | 1.00x |"
    ] + [
        f"| {LABELS[v]} | {fig(raw[v], '.2f')} | {fig(ratios[v], '.2f', 'x')} | "
        f"{fig(means[v], '.2f')} | {med(mean_ratios[v]):.2f}x |"
        for v in VARIANTS[1:]
    ]
    empty = med(raw["empty"])
    extra = {v: med(raw[v]) - empty for v in VARIANTS[1:]}
    own_t = extra["full"] - extra[STAND_IN_T]  # Tracing's own work in the full chain
    own_r = extra["full"] - extra[STAND_IN_R]
    # The spans' export: what Tracing adds to the CPU time beyond what it adds to the p50.
    export = (med(means["tracing"]) - med(raw["tracing"])) - (med(means["empty"]) - empty)
    parts = [
        "| part | extra µs per ask (p50) |",
        "|---|---|",
        f"| a send and a handle hook that only call `call_next()` | {extra['hooks']:.2f} |",
        f"| the same as synchronous hooks that do nothing | {extra['sync']:.2f} |",
        f"| `Tracing` (two spans, the `traceparent`, the current span) | {extra['tracing']:.2f} |",
        f"| `Resilience` (timeout, retry policy, breaker) | {extra['resilience']:.2f} |",
        f"| metrics (`timing=16`, `Metrics`) | {extra['metrics']:.2f} |",
        f"| `Tracing` + `Resilience` | {extra['tracing+resilience']:.2f} |",
        f"| the full chain | {extra['full']:.2f} |",
        f"| `Tracing`'s own work in the full chain (full minus its stand-in) | {own_t:.2f} |",
        f"| `Resilience`'s own work in the full chain | {own_r:.2f} |",
    ]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        cwd=HERE,
    ).stdout.splitlines()
    outputs = ("RESULTS-chain.md", "results-chain.json")  # this report's own files
    tree = "with local changes" if [d for d in dirty if not d.endswith(outputs)] else "clean"
    return f"""# The middleware chain's cost on W2

- Command: `.venv/bin/python -m benchmarks.chain_bench --write` (runs {args.runs}, asks
  {args.asks:,} per run; the method is in the module docstring of
  benchmarks/chain_bench.py)
- Date: {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}; took {took:.0f} s; load
  average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min). The
  machine's 2 cores were shared with other engineers' work while it ran: figures
  move by 10-20% from run to run; the ratios, taken within a run, less.
- kerna commit: {commit} ({tree} working tree); Python {platform.python_version()},
  asyncio default loop, {platform.platform()}

## W2 sequential ask: the full chain vs an empty chain

| chain | p50 µs per ask | p50 ratio | CPU µs per ask | CPU ratio |
|---|---|---|---|---|
{chr(10).join(rows)}

Target <= 2x (p50, every trace recorded and every span exported): \
**{"PASS" if ratio <= 2 else "MISS"}** ({ratio:.2f}x). With 1% of traces sampled:
{sampled:.2f}x. The CPU time counts what the p50 leaves out: ended spans are handed to
the provider's span processor (and so to the exporter) in batches of 256, from the event
loop between asks (kerna.plugins._spans). What `Tracing` alone adds to the CPU time
beyond what it adds to the p50 is {export:.1f} µs an ask, about {export / 2:.1f} µs a
span, most of it the SDK's own
`ReadableSpan` and `SimpleSpanProcessor.on_end` (which attaches and detaches a context
per span). With `BatchSpanProcessor`'s default queue of 2,048 spans, a run of this
benchmark (16:11 UTC) dropped 5,121 of 42,000 spans ("Queue full, dropping Span"): its
export thread gets the GIL too rarely while the loop runs flat out, so that row raises
the queue; in production, size it for the span rate.

## Where the time goes

Each ask of the full chain makes two spans (its send and its handling), carries a
`traceparent`, passes `Tracing`'s synchronous send and handle hooks and `Resilience`'s
synchronous send hooks (its retries and fallback in `send_failed`, awaited only when an
attempt fails); one message in 16 is timed (also into OpenTelemetry histograms). Extra
p50 µs over the empty chain ({empty:.2f} µs):

{chr(10).join(parts)}

Profiled with cProfile (call counts), each piece timed apart (in a loop of its own, warm:
the `timeit` way) and, in the full chain itself, each part replaced by a stand-in that
does nothing (the last two rows above):

- the chain's own path: an ask whose send links are all synchronous, as here, runs
  every `before_send`, its first attempt and every `after_send` in `AgentRef.ask`'s own
  coroutine (`kerna._sends.enter_sends`/`exit_sends`; a failure goes out link by link,
  `unwind`, and a link's `send_failed` makes its retries through `ask_sync`), and a type
  whose one handle link is synchronous has its hooks called by the worker itself
  (`AgentType.around`): no coroutine or closure of the chain's per ask. What is left:
  a `MessageContext` per send and per handling, the headers merged into one copy of
  the envelope, the hooks' calls. With hooks that do nothing: {extra["sync"]:.1f} µs for
  one synchronous middleware, {extra["hooks"]:.1f} µs for one with coroutine hooks.
- `Tracing`'s own work: {own_t:.1f} µs in the full chain (the full chain minus its
  stand-in's row); its four hooks timed apart: {fig(raw["tracing_hooks"], ".2f")} µs.
  With the SDK's provider given, the chain's hooks are its pipeline's own methods
  (`kerna.plugins._spans.Pipeline`: no call of `Tracing`'s between). Per span a
  `KernaSpan` record (ids from `random.getrandbits`, as the SDK's `RandomIdGenerator`
  draws them, `time.time_ns()` twice, the sampler's decision inline for the SDK's
  default), the `traceparent` written once (send), the handling's parent the in-flight
  send span itself (found by the `traceparent` string, nothing parsed), the handling
  span made current (an OpenTelemetry `Context` set and reset on the `ContextVar`
  OpenTelemetry's default runtime context keeps it in) so that the handler's own spans
  are its children; the usual spans' fields set in the hooks (no constructor call). No
  SDK object is made on the hot path: the SDK's own `start_span` + `end` costs
  {fig(raw["span"], ".2f")} µs a span on this provider
  ({fig(raw["span_sampled"], ".2f")} µs sampled out). Sampling out (the 1% row) saves
  nothing at the p50: a sampled-out span is still made (its ids travel on), only not
  exported.
- `Resilience`'s own work: {own_r:.1f} µs in the full chain; its two hooks timed apart:
  {fig(raw["resilience_hooks"], ".2f")} µs (the target's policy found by its type name, a
  closed breaker's admission and outcome read from one flag, the attempt's timeout as
  `before_send`'s third element; a failure, an open breaker or a bulkhead go to
  `send_failed`: retries, waits and the fallback, as before).
- the metrics (one message in 16 timed): {extra["full"] - extra["tracing+resilience"]:.1f} µs
  in the full chain, {extra["metrics"]:.1f} µs alone. `Metrics` keeps a timed message's
  values and records them into its OpenTelemetry histograms at the next collection (or
  256 at a time, from the loop): recorded by the worker between messages, as before,
  the SDK's recording cost the full chain about 0.6 µs of its p50 (measured by hand,
  18:33 UTC: the full chain 9-10% over `Tracing` + `Resilience` with it, 3-6% with the
  values only kept), more than its share of one message in 16: the whole distribution
  moved, not only the timed asks. What is left (3-6% by hand) is more than
  `timing=16` alone (1-2% by hand): not explained further.

Inside a running ask each part costs {own_t / med(raw["tracing_hooks"]):.1f}x
(`Tracing`) and {own_r / med(raw["resilience_hooks"]):.1f}x (`Resilience`) what it costs
timed apart: the same code, run between the event loop's, the kernel's and the SDK's,
whose working set does not stay in the CPU's caches (and whose call sites the
interpreter specializes less): measured, not proven (the metrics above fit it too).
Counted, not timed (valgrind's instruction counts per ask, 1,000 against 9,000 asks,
20:00-21:30 UTC): the full chain 120.0k instructions an ask, the empty one 62.6k
(1.91x), 60 Python calls an ask; on CPython 3.11 here a Python call costs about 650
instructions, a class with a Python `__init__` about 1,000 to make.

Against the previous run of this file (19:03 UTC, commit 00359d7: empty 5.04 µs, full
11.60 µs, 2.25x; 131.7k instructions an ask, 73 Python calls): `Tracing` sets and resets
the current `Context` on OpenTelemetry's `ContextVar` (found through the token `attach`
returns; any other runtime context goes through OpenTelemetry's functions), its usual
spans built in the hooks; `Resilience` gives a call whose breaker is healthy and that
has no bulkhead a prebuilt answer and one counter (its stats add it in); `AgentRef.ask`
runs an all-synchronous chain's send hooks in its own frame; `MessageContext`'s fields
are read by C getters; a middleware that declares `fresh_headers = True` (Tracing with
the SDK's provider) has its headers taken without a check and a copy. The run before
that (16:46 UTC, commit 6516d2f) was 2.83x.

What bounds the rest: an empty ask is {empty:.1f} µs, so 2x leaves {empty:.1f} µs for
two spans, their ids, timestamps and context, the `traceparent` through the envelope, a
breaker, a timeout and a retry policy, and the metrics; `Tracing`'s own work alone is
{own_t:.1f} µs of it here. The 57k instructions the full chain still adds are the six
hooks' calls, about 25 objects an ask (two spans, two contexts, the envelope's copy, the
OpenTelemetry `Context` and its token, the ids and the `traceparent`) and two
`ctx.header()` reads in `before_handle`. What would still cut it changes what the chain
does, so it was not done: not making the handling span current unless the handler asks
for it, writing the `traceparent` only when a message leaves the process (a handler
reads it in its headers, and its own tells and events carry it on), one span per ask
instead of two. Spans recorded outside Python would. The 1% sampled row still makes its
root spans through the general constructor (not inlined), so it is no cheaper at the
p50.
"""


if __name__ == "__main__":
    main()
