"""kerna.plugins.Tracing's pipeline: spans recorded cheaply, handed to the provider's
processors as the SDK's own ``ReadableSpan``s (on ``flush()`` and at the kernel's stop),
the provider's sampler honoured whole traces at a time, the handler's own OpenTelemetry
spans nested in its handling, and the W3C ``traceparent`` read exactly as the SDK's
propagator reads it (the SDK's in-memory exporter throughout)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from kerna import Agent, AskTimeout, Kernel, Message, RemoteError, Request, handler
from kerna.plugins import TRACEPARENT, Tracing

pytestmark = pytest.mark.anyio


class Done(Message):
    n: int


class Hop(Request[Done]):
    n: int


class Seen:
    """The headers the last agent of a chain saw (reset per test)."""

    headers: list[dict[str, str]] = []


class Last(Agent):
    @handler
    async def hop(self, msg: Hop) -> Done:
        Seen.headers.append(dict(self.context.headers))
        return Done(msg.n + 1)


class Middle(Agent):
    @handler
    async def hop(self, msg: Hop) -> Done:
        return await self.ref(Last, "c").ask(Hop(msg.n + 1))


class First(Agent):
    @handler
    async def hop(self, msg: Hop) -> Done:
        return await self.ref(Middle, "b").ask(Hop(msg.n + 1))


class OwnSpans(Agent):
    """A handler that uses OpenTelemetry itself around an ask of its own."""

    tracer: trace.Tracer = trace.get_tracer("app")

    @handler
    async def hop(self, msg: Hop) -> Done:
        current = trace.get_current_span()  # kerna's handling span
        current.set_attribute("app.n", msg.n)
        current.add_event("app.started")
        with self.tracer.start_as_current_span("work"):
            return await self.ref(Last, "c").ask(Hop(msg.n + 1))


def provider_for(exporter: InMemorySpanExporter, sampler: Sampler | None = None) -> TracerProvider:
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def by_name(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def parent_of(child: ReadableSpan, spans: Sequence[ReadableSpan]) -> ReadableSpan:
    assert child.parent is not None, child.name
    found = [
        s for s in spans if s.context is not None and s.context.span_id == child.parent.span_id
    ]
    assert len(found) == 1, child.name
    assert found[0].context is not None
    assert child.context is not None
    assert found[0].context.trace_id == child.context.trace_id
    return found[0]


@pytest.fixture(autouse=True)
def reset() -> None:
    Seen.headers = []


async def test_ended_spans_reach_the_processors_on_flush_as_the_sdks_readable_spans() -> None:
    exporter = InMemorySpanExporter()
    provider = provider_for(exporter)
    tracing = Tracing(provider)
    async with Kernel(middleware=[tracing]) as kernel:
        kernel.register(Last)
        await kernel.ref(Last, "c").ask(Hop(0))
        tracing.flush()
        spans = exporter.get_finished_spans()
        assert sorted(s.name for s in spans) == ["handle Hop", "send Hop"]
        await kernel.ref(Last, "c").ask(Hop(1))
    assert len(exporter.get_finished_spans()) == 4  # the kernel's stop flushed the rest
    send, handling = by_name(spans, "send Hop")[0], by_name(spans, "handle Hop")[0]
    for span in (send, handling):
        assert isinstance(span, ReadableSpan)
        assert span.resource is provider.resource
        assert span.instrumentation_scope is not None
        assert span.instrumentation_scope.name == "kerna"
        assert span.start_time is not None
        assert span.end_time is not None
        assert span.start_time <= span.end_time
    assert parent_of(handling, spans) is send
    assert send.parent is None
    assert send.kind is SpanKind.CLIENT
    assert handling.kind is SpanKind.SERVER
    assert send.start_time is not None
    assert send.end_time is not None
    assert handling.start_time is not None
    assert handling.end_time is not None
    assert send.start_time <= handling.start_time <= handling.end_time <= send.end_time
    assert handling.attributes is not None
    assert handling.attributes["kerna.agent.id"] == "Last/c"
    assert handling.attributes["kerna.message.type"] == "Hop"


async def test_a_handlers_own_spans_nest_in_its_handling_and_parent_its_sends() -> None:
    exporter = InMemorySpanExporter()
    provider = provider_for(exporter)
    OwnSpans.tracer = provider.get_tracer("app")
    async with Kernel(middleware=[Tracing(provider)]) as kernel:
        kernel.register(OwnSpans)
        kernel.register(Last)
        assert await kernel.ref(OwnSpans, "o").ask(Hop(5)) == Done(7)
    spans = exporter.get_finished_spans()
    handling = next(
        s for s in by_name(spans, "handle Hop") if s.attributes and "app.n" in s.attributes
    )
    assert handling.attributes is not None
    assert handling.attributes["app.n"] == 5
    assert [e.name for e in handling.events] == ["app.started"]
    work = by_name(spans, "work")[0]
    assert parent_of(work, spans) is handling
    asked = next(s for s in by_name(spans, "send Hop") if s.parent is not None)
    assert parent_of(asked, spans) is work
    below = next(s for s in by_name(spans, "handle Hop") if s is not handling)
    assert parent_of(below, spans) is asked


async def test_a_sampled_out_trace_exports_nothing_and_says_so_to_the_next_hops() -> None:
    exporter = InMemorySpanExporter()
    async with Kernel(middleware=[Tracing(provider_for(exporter, ParentBased(ALWAYS_OFF)))]) as k:
        for t in (First, Middle, Last):
            k.register(t)
        assert await k.ref(First, "a").ask(Hop(0)) == Done(3)
    assert exporter.get_finished_spans() == ()
    (seen,) = Seen.headers
    _version, trace_id, span_id, flags = seen[TRACEPARENT].split("-")
    assert int(flags, 16) & 1 == 0  # not sampled: the hop after does not record either
    assert int(trace_id, 16) != 0
    assert int(span_id, 16) != 0


async def test_a_ratio_sampler_keeps_or_drops_each_trace_whole_as_the_sdk_decides() -> None:
    exporter = InMemorySpanExporter()
    ratio = TraceIdRatioBased(0.5)
    async with Kernel(middleware=[Tracing(provider_for(exporter, ParentBased(ratio)))]) as k:
        for t in (First, Middle, Last):
            k.register(t)
        for n in range(40):
            await k.ref(First, "a").ask(Hop(n))
    seen = {int(h[TRACEPARENT].split("-")[1], 16): h[TRACEPARENT][-2:] for h in Seen.headers}
    assert len(seen) == 40
    kept = {tid for tid, flags in seen.items() if int(flags, 16) & 1}
    for tid in seen:  # the SDK's own decision for that trace id
        assert (tid in kept) == ratio.should_sample(None, tid, "x").decision.is_sampled()
    spans = exporter.get_finished_spans()
    exported: dict[int, int] = {}
    for span in spans:
        assert span.context is not None
        exported[span.context.trace_id] = exported.get(span.context.trace_id, 0) + 1
    assert set(exported) == kept
    assert set(exported.values()) == {6}  # three sends and three handlings: whole traces
    assert 0 < len(kept) < 40  # 2**-39 odds of failing by chance


class NoHandling(Sampler):
    """Not parent-based: drops every handling span, keeps every send."""

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        if name.startswith("handle"):
            return SamplingResult(Decision.DROP)
        return SamplingResult(Decision.RECORD_AND_SAMPLE, {"sampled.by": "test"})

    def get_description(self) -> str:
        return "NoHandling"


async def test_a_sampler_that_is_not_parent_based_is_asked_for_every_span() -> None:
    exporter = InMemorySpanExporter()
    async with Kernel(middleware=[Tracing(provider_for(exporter, NoHandling()))]) as k:
        for t in (First, Middle, Last):
            k.register(t)
        assert await k.ref(First, "a").ask(Hop(0)) == Done(3)
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["send Hop"] * 3
    assert {s.context.trace_id for s in spans if s.context} == {
        int(Seen.headers[0][TRACEPARENT].split("-")[1], 16)
    }
    assert all(s.attributes and s.attributes["sampled.by"] == "test" for s in spans)


TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"


@pytest.mark.parametrize(
    "traceparent",
    [
        f"00-{TRACE}-{SPAN}-01",
        f"00-{TRACE}-{SPAN}-00",
        f"00-{TRACE}-{SPAN}-03",
        f"01-{TRACE}-{SPAN}-01-future",
        f"00-{TRACE}-{SPAN}-01-extra",
        f"00-{TRACE.upper()}-{SPAN}-01",
        f"ff-{TRACE}-{SPAN}-01",
        f"00-{'0' * 32}-{SPAN}-01",
        f"00-{TRACE}-{'0' * 16}-01",
        f"00-{TRACE}-{SPAN}-0x",
        f"00-{TRACE[:-1]}g-{SPAN}-01",
        f"00-{TRACE}-{SPAN[:-1]}-01",
        f" 00-{TRACE}-{SPAN}-01 ",
        "garbage",
        "",
    ],
)
async def test_a_traceparent_from_another_system_is_read_as_the_sdks_propagator_reads_it(
    traceparent: str,
) -> None:
    headers = {TRACEPARENT: traceparent, "tracestate": "vendor=v1"}
    expected = trace.get_current_span(TraceContextTextMapPropagator().extract(headers))
    wanted = expected.get_span_context()
    exporter = InMemorySpanExporter()
    async with (
        Kernel(transport="inproc://", stop_grace=0.1) as untraced,
        Kernel(
            transport="inproc://", stop_grace=0.1, middleware=[Tracing(provider_for(exporter))]
        ) as b,
    ):
        b.register(Middle)
        b.register(Last)
        assert b.address is not None
        far = untraced.ref("Middle", "b", node=b.address)
        assert await far.ask(Hop(0), headers=headers, timeout=5) == Done(2)
    spans = exporter.get_finished_spans()
    onward = Seen.headers[0]
    if wanted.is_valid and not wanted.trace_flags.sampled:
        assert spans == ()  # ParentBased: a sampled-out parent, nothing recorded here
        assert onward[TRACEPARENT].split("-")[1] == f"{wanted.trace_id:032x}"
        return
    handling = next(
        s
        for s in by_name(spans, "handle Hop")
        if s.attributes and s.attributes["kerna.agent.id"] == "Middle/b"
    )
    assert handling.context is not None
    if not wanted.is_valid:
        assert handling.parent is None  # a trace of its own
        assert handling.context.trace_id != int(TRACE, 16)
        return
    assert handling.parent == wanted  # ids, flags, tracestate and is_remote
    assert handling.parent.is_remote
    assert handling.context.trace_id == wanted.trace_id
    assert handling.context.trace_state == wanted.trace_state
    assert onward["tracestate"] == "vendor=v1"
    assert onward[TRACEPARENT].split("-")[1] == f"{wanted.trace_id:032x}"


class Wrapped(trace.Tracer):
    """A tracer that is not the SDK's (as another implementation of the API would be):
    Tracing goes through it, span by span."""

    def __init__(self, inner: trace.Tracer) -> None:
        self.inner = inner
        self.started = 0

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        self.started += 1
        return self.inner.start_span(*args, **kwargs)

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.start_as_current_span(*args, **kwargs)


class WrappingProvider(trace.TracerProvider):
    def __init__(self, inner: TracerProvider) -> None:
        self.tracer = Wrapped(inner.get_tracer("kerna"))

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return self.tracer


async def test_a_tracer_that_is_not_the_sdks_makes_the_spans_itself_with_the_same_links() -> None:
    exporter = InMemorySpanExporter()
    provider = WrappingProvider(provider_for(exporter))
    async with Kernel(middleware=[Tracing(provider)]) as k:
        for t in (First, Middle, Last):
            k.register(t)
        assert await k.ref(First, "a").ask(Hop(0)) == Done(3)
        assert len(exporter.get_finished_spans()) == 6  # at once: no batching here
    assert provider.tracer.started == 6
    spans = exporter.get_finished_spans()
    root = next(s for s in spans if s.parent is None)
    assert root.name == "send Hop"
    chain = [root]
    while len(chain) < 6:
        chain.append(
            next(
                s
                for s in spans
                if s.parent and s is not chain[-1] and parent_of(s, spans) is chain[-1]
            )
        )
    assert [s.name for s in chain] == ["send Hop", "handle Hop"] * 3


class Failing(SpanProcessor):
    """A processor that raises on every other span."""

    def __init__(self) -> None:
        self.seen = 0

    def on_end(self, span: ReadableSpan) -> None:
        self.seen += 1
        if self.seen % 2:
            raise RuntimeError("processor bug")


async def test_a_processor_that_raises_loses_no_other_span_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    failing = Failing()
    provider.add_span_processor(failing)  # first: it raises before the exporter's turn
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with Kernel(middleware=[Tracing(provider)]) as k:
        k.register(Last)
        for n in range(3):
            await k.ref(Last, "c").ask(Hop(n))
    assert failing.seen == 6
    assert len(exporter.get_finished_spans()) == 3  # the spans the failing one let by
    failures = [r for r in caplog.records if r.name == "kerna.plugins.tracing"]
    assert len(failures) == 3
    assert all(r.exc_info and "processor bug" in str(r.exc_info[1]) for r in failures)


def test_tracing_with_the_global_provider_set_after_it_was_made_uses_it() -> None:
    script = textwrap.dedent(
        """
        import asyncio
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )
        from kerna import Agent, AskTimeout, Kernel, Message, RemoteError, Request, handler
        from kerna.plugins import Tracing

        class Done(Message):
            n: int

        class Hop(Request[Done]):
            n: int

        class Far(Agent):
            @handler
            async def hop(self, msg: Hop) -> Done:
                return Done(msg.n + 1)

        tracing = Tracing()  # before any provider is set: the API's proxy

        async def main():
            async with Kernel(middleware=[tracing]) as kernel:
                kernel.register(Far)
                await kernel.ref(Far, "f").ask(Hop(0))

        asyncio.run(main())  # no provider yet: no spans, and no error
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        asyncio.run(main())
        names = sorted(s.name for s in exporter.get_finished_spans())
        assert names == ["handle Hop", "send Hop"], names
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


async def test_the_providers_force_flush_exports_the_spans_kerna_still_holds() -> None:
    for processor in ("simple", "batch"):
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        if processor == "simple":
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        else:
            provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=60_000))
        async with Kernel(middleware=[Tracing(provider)]) as k:
            k.register(Last)
            await k.ref(Last, "c").ask(Hop(0))
            assert provider.force_flush(5_000)  # the SDK's way to see every ended span
            assert sorted(s.name for s in exporter.get_finished_spans()) == [
                "handle Hop",
                "send Hop",
            ], processor
        provider.shutdown()


class Current(Agent):
    """Records the span current in each handling; fails, or is cancelled, on demand."""

    seen: list[int] = []
    entered: asyncio.Event = asyncio.Event()

    @handler
    async def hop(self, msg: Hop) -> Done:
        Current.seen.append(trace.get_current_span().get_span_context().span_id)
        if msg.n == 1:
            raise ValueError("handler failed")
        if msg.n == 2:  # waits past its deadline: cancelled there (cancel_at_deadline)
            Current.entered.set()
            await asyncio.Event().wait()
        return Done(msg.n)


async def test_the_handling_span_is_current_in_its_handler_only_however_the_handler_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exporter = InMemorySpanExporter()
    provider = provider_for(exporter)
    Current.seen, Current.entered = [], asyncio.Event()
    before = trace.get_current_span()
    async with Kernel(middleware=[Tracing(provider)]) as kernel:
        kernel.register(Current, cancel_at_deadline=True)
        ref = kernel.ref(Current, "c")
        with pytest.raises(RemoteError, match="handler failed"):
            await ref.ask(Hop(1))
        with pytest.raises((AskTimeout, RemoteError)):
            await ref.ask(Hop(2), timeout=0.05)
        await kernel.wait_idle()
        assert await ref.ask(Hop(3)) == Done(3)  # the same worker, after both
        assert trace.get_current_span() is before  # the caller's context is untouched
    spans = by_name(exporter.get_finished_spans(), "handle Hop")
    ids = [s.context.span_id for s in spans if s.context is not None]
    assert Current.seen == ids  # each handler saw its own span, never the one before
    assert len(set(ids)) == 3
    failed, cancelled, ok = spans
    assert failed.status.status_code is StatusCode.ERROR
    assert cancelled.status.status_code is StatusCode.UNSET  # a cancellation: no error
    assert ok.status.status_code is StatusCode.UNSET
    # each context detached where it was attached (OpenTelemetry logs a detach that is not)
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []


def test_the_current_context_is_read_where_opentelemetrys_default_runtime_keeps_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry import context as otel_context

    from kerna.plugins._spans import runtime_var

    var = runtime_var()
    assert var is not None
    token = otel_context.attach(otel_context.set_value("k", 1))
    try:  # the very ContextVar OpenTelemetry's own functions read and set
        assert var.get() is otel_context.get_current()
        assert var.get().get("k") == 1
    finally:
        otel_context.detach(token)
    assert otel_context.get_value("k") is None
    for other in ("threadlocal_context", "my_runtime"):  # another runtime context
        monkeypatch.setenv("OTEL_PYTHON_CONTEXT", other)
        assert runtime_var() is None


async def test_with_another_runtime_context_named_the_handling_span_is_still_current(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # (OpenTelemetry's runtime is chosen at its import: here its functions are called
    # instead of the ContextVar, the path another runtime context takes)
    monkeypatch.setenv("OTEL_PYTHON_CONTEXT", "my_runtime")
    exporter = InMemorySpanExporter()
    provider = provider_for(exporter)
    Current.seen, Current.entered = [], asyncio.Event()
    async with Kernel(middleware=[Tracing(provider)]) as kernel:
        kernel.register(Current)
        assert await kernel.ref(Current, "c").ask(Hop(3)) == Done(3)
        assert trace.get_current_span() is trace.INVALID_SPAN
    (span,) = by_name(exporter.get_finished_spans(), "handle Hop")
    assert span.context is not None
    assert Current.seen == [span.context.span_id]
