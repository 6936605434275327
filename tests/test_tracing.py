"""kerna.plugins.Tracing: one OpenTelemetry trace through asks, tells, events, timers,
deferred replies and across nodes (the SDK's in-memory exporter), errors on spans, and
nothing at all without it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from kerna import Agent, Kernel, Message, PendingReply, RemoteError, Request, handler
from kerna.plugins import TRACEPARENT, Tracing

pytestmark = pytest.mark.anyio


class Done(Message):
    n: int


class Hop(Request[Done]):
    n: int


class Note(Message):
    text: str


class Boom(Request[Done]):
    pass


class Release(Message):
    pass


class Tick(Message):
    pass


class Start(Message):
    pass


class Hub:
    """What the agents of one test saw (reset by the fixture)."""

    notes: list[tuple[str, str]] = []  # (agent key, traceparent)
    arrived = asyncio.Event()
    expected = 1
    pending: list[PendingReply] = []


def note(key: str, agent: Agent) -> None:
    Hub.notes.append((key, agent.context.headers.get(TRACEPARENT, "")))
    if len(Hub.notes) >= Hub.expected:
        Hub.arrived.set()


class C(Agent):
    @handler
    async def hop(self, msg: Hop) -> Done:
        return Done(msg.n + 1)

    @handler
    async def noted(self, msg: Note) -> None:
        note(self.id.key, self)

    @handler
    async def boom(self, msg: Boom) -> Done:
        raise ValueError("no such thing")


class B(Agent):
    @handler
    async def hop(self, msg: Hop) -> Done:
        return await self.ref(C, "c").ask(Hop(msg.n + 1))


class A(Agent):
    @handler
    async def hop(self, msg: Hop) -> Done:
        return await self.ref(B, "b").ask(Hop(msg.n + 1))

    @handler
    async def tells(self, msg: Note) -> None:
        await self.ref(C, "c").tell(Note(msg.text))

    @handler
    async def publishes(self, msg: Start) -> None:
        await self.publish("news", Note("hello"))


class Slow(Agent):
    @handler
    async def hop(self, msg: Hop) -> PendingReply:
        pending = self.defer_reply()
        Hub.pending.append(pending)
        Hub.arrived.set()
        return pending

    @handler
    async def release(self, msg: Release) -> None:
        Hub.pending.pop().reply(Done(7))


class Ticking(Agent):
    @handler
    async def start(self, msg: Start) -> None:
        self.schedule(0.001, Tick())

    @handler
    async def tick(self, msg: Tick) -> None:
        note("tick", self)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    Hub.notes, Hub.arrived, Hub.expected, Hub.pending = [], asyncio.Event(), 1, []
    return InMemorySpanExporter()


def tracing(exporter: InMemorySpanExporter) -> Tracing:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider)


def named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def one(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    found = named(spans, name)
    assert len(found) == 1, f"{name}: {[s.name for s in spans]}"
    return found[0]


def is_child(child: ReadableSpan, parent: ReadableSpan) -> bool:
    assert child.parent is not None
    assert parent.context is not None
    assert child.context is not None
    return (
        child.parent.span_id == parent.context.span_id
        and child.context.trace_id == parent.context.trace_id
    )


async def wait_for(ev: asyncio.Event) -> None:
    async with asyncio.timeout(5):
        await ev.wait()


async def test_an_ask_chain_is_one_trace_each_send_the_parent_of_its_handling(
    exporter: InMemorySpanExporter,
) -> None:
    async with Kernel(middleware=[tracing(exporter)]) as kernel:
        for t in (A, B, C):
            kernel.register(t)
        assert await kernel.ref(A, "a").ask(Hop(0)) == Done(3)
    spans = exporter.get_finished_spans()
    sends, handles = named(spans, "send Hop"), named(spans, "handle Hop")
    assert len(sends) == len(handles) == 3
    by_agent = {h.attributes["kerna.agent.id"]: h for h in handles if h.attributes}
    root = next(s for s in sends if s.parent is None)  # the ask from outside any agent
    assert root.kind is SpanKind.CLIENT
    assert root.attributes is not None
    assert "kerna.agent.id" not in root.attributes
    assert is_child(by_agent["A/a"], root)
    for handling, agent in ((by_agent["A/a"], "A/a"), (by_agent["B/b"], "B/b")):
        send = next(s for s in sends if s.attributes and s.attributes["kerna.agent.id"] == agent)
        assert is_child(send, handling)  # the handler's ask: a child of its handling
        below = by_agent["B/b" if agent == "A/a" else "C/c"]
        assert is_child(below, send)
        assert below.kind is SpanKind.SERVER
    # one conversation: one correlation id, the root message's id
    assert {s.attributes["kerna.correlation_id"] for s in spans if s.attributes} == {
        root.attributes["kerna.message.id"]
    }


async def test_a_tell_and_an_event_fan_out_continue_the_trace_of_the_handler_that_sent_them(
    exporter: InMemorySpanExporter,
) -> None:
    async with Kernel(middleware=[tracing(exporter)]) as kernel:
        kernel.register(A)
        kernel.register(C)
        kernel.subscribe("news", C, key=lambda e: "s1")
        kernel.subscribe("news", C, key=lambda e: "s2")
        await kernel.ref(A, "a").tell(Note("x"))
        await wait_for(Hub.arrived)
        Hub.arrived.clear()
        Hub.expected = 3
        await kernel.ref(A, "a").tell(Start())
        await wait_for(Hub.arrived)
        await kernel.wait_idle()
    spans = exporter.get_finished_spans()
    handled = [s for s in named(spans, "handle Note") if s.attributes]
    told = next(s for s in handled if s.attributes and s.attributes["kerna.agent.id"] == "C/c")
    relayed = next(
        s
        for s in named(spans, "send Note")
        if s.attributes and s.attributes["kerna.message.kind"] == "tell"
        and s.attributes.get("kerna.agent.id") == "A/a"
    )  # fmt: skip
    assert relayed.kind is SpanKind.PRODUCER
    assert told.kind is SpanKind.CONSUMER
    assert is_child(told, relayed)
    sent_by = next(s for s in handled if s.attributes and s.attributes["kerna.agent.id"] == "A/a")
    assert is_child(relayed, sent_by)
    published = next(
        s for s in named(spans, "send Note")
        if s.attributes and s.attributes["kerna.message.kind"] == "event"
    )  # fmt: skip
    assert published.attributes is not None
    assert published.attributes["kerna.topic"] == "news"
    assert is_child(published, one(spans, "handle Start"))
    fan_out = [s for s in handled if s.attributes and s.attributes["kerna.message.kind"] == "event"]
    assert len(fan_out) == 2
    assert all(is_child(s, published) for s in fan_out)
    # what the subscribers saw in their headers is the publish span
    assert published.context is not None
    assert all(f"{published.context.span_id:016x}" in tp for key, tp in Hub.notes[1:])


async def test_a_timer_tick_continues_the_trace_of_the_handler_that_started_it(
    exporter: InMemorySpanExporter,
) -> None:
    async with Kernel(middleware=[tracing(exporter)]) as kernel:
        kernel.register(Ticking)
        await kernel.ref(Ticking, "t").tell(Start())
        await wait_for(Hub.arrived)
        await kernel.wait_idle()
    spans = exporter.get_finished_spans()
    start, tick = one(spans, "send Start"), one(spans, "handle Tick")
    assert is_child(tick, start)  # the tick carries the started-by message's traceparent
    assert tick.attributes is not None
    assert start.attributes is not None
    assert tick.attributes["kerna.agent.id"] == "Ticking/t"


async def test_a_deferred_reply_ends_the_asks_span_when_another_handler_sends_it(
    exporter: InMemorySpanExporter,
) -> None:
    async with Kernel(middleware=[tracing(exporter)]) as kernel:
        kernel.register(Slow)
        asked = asyncio.ensure_future(kernel.ref(Slow, "s").ask(Hop(0), timeout=5))
        await wait_for(Hub.arrived)
        await kernel.ref(Slow, "s").tell(Release())
        async with asyncio.timeout(5):
            assert await asked == Done(7)
    spans = exporter.get_finished_spans()
    send, handling = one(spans, "send Hop"), one(spans, "handle Hop")
    assert is_child(handling, send)
    assert handling.attributes is not None
    assert handling.attributes["kerna.reply.deferred"]
    release = one(spans, "handle Release")
    assert send.end_time is not None
    assert release.start_time is not None
    assert send.end_time >= release.start_time  # the ask's span waited for the reply
    assert send.status.status_code is not StatusCode.ERROR


async def test_a_handler_failure_is_recorded_on_its_span_and_on_the_askers(
    exporter: InMemorySpanExporter,
) -> None:
    async with Kernel(middleware=[tracing(exporter)]) as kernel:
        kernel.register(C)
        with pytest.raises(RemoteError, match="no such thing"):
            await kernel.ref(C, "c").ask(Boom())
    spans = exporter.get_finished_spans()
    for name, error in (("handle Boom", "ValueError"), ("send Boom", "RemoteError")):
        span = one(spans, name)
        assert span.status.status_code is StatusCode.ERROR
        types = [e.attributes["exception.type"] for e in span.events if e.attributes]
        assert [t.rpartition(".")[2] for t in types if isinstance(t, str)] == [error]


async def test_an_ask_to_another_node_continues_the_trace_there(
    exporter: InMemorySpanExporter,
) -> None:
    async with (
        Kernel(transport="inproc://", stop_grace=0.1, middleware=[tracing(exporter)]) as a,
        Kernel(transport="inproc://", stop_grace=0.1, middleware=[tracing(exporter)]) as b,
    ):
        b.register(C)
        assert b.address is not None
        assert await a.ref("C", "c", node=b.address).ask(Hop(1), timeout=5) == Done(2)
    spans = exporter.get_finished_spans()
    assert is_child(one(spans, "handle Hop"), one(spans, "send Hop"))


def test_without_tracing_nothing_imports_opentelemetry_and_no_span_is_made() -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys
        from kerna import Agent, Kernel, Message, Request, handler
        from kerna.plugins import Resilience  # the plug-ins, without Tracing

        class Done(Message):
            n: int

        class Hop(Request[Done]):
            n: int

        class Far(Agent):
            @handler
            async def hop(self, msg: Hop) -> Done:
                return Done(msg.n + 1)

        class Near(Agent):
            @handler
            async def hop(self, msg: Hop) -> Done:
                await self.publish("news", Done(0))
                return await self.ref(Far, "f").ask(Hop(msg.n + 1))

        async def main():
            async with Kernel() as kernel:
                kernel.register(Near)
                kernel.register(Far)
                assert await kernel.ref(Near, "n").ask(Hop(0)) == Done(2)

        asyncio.run(main())
        assert not [m for m in sys.modules if m.startswith("opentelemetry")], "imported"
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)  # even with a global provider: no spans
        asyncio.run(main())
        assert exporter.get_finished_spans() == (), exporter.get_finished_spans()
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


async def test_a_message_without_a_traceparent_starts_a_trace_of_its_own(
    exporter: InMemorySpanExporter,
) -> None:
    async with (
        Kernel(transport="inproc://", stop_grace=0.1) as untraced,
        Kernel(transport="inproc://", stop_grace=0.1, middleware=[tracing(exporter)]) as b,
    ):
        b.register(C)
        assert b.address is not None
        for n in (1, 2):
            await untraced.ref("C", "c", node=b.address).ask(Hop(n), timeout=5)
    handled = named(exporter.get_finished_spans(), "handle Hop")
    assert len(handled) == 2
    assert [s.parent for s in handled] == [None, None]
    assert len({s.context.trace_id for s in handled if s.context}) == 2
