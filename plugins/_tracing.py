"""OpenTelemetry tracing as middleware: a span per send and per handling.

``Tracing`` (the ``otel`` extra: ``pip install 'kerna[otel]'``) starts a span around
every ``tell``, ``ask`` and ``publish`` (in the sender's task, a child of whatever span
is current there: the handling span inside a handler, the caller's own outside any
agent) and writes its W3C ``traceparent`` (and ``tracestate``) into the message's
headers, which travel with it, across nodes too. Around every handling it starts a
span whose parent is the ``traceparent`` the message carries; the handler's own sends
are then its children. So one trace follows a conversation through asks, tells, events,
timers (a tick carries the headers of the message whose handler started the timer:
its handling continues that trace) and deferred replies (the ask's send span lasts
until the reply, whichever handler sends it).

OpenTelemetry is imported when a ``Tracing`` is made, never by ``import kerna.plugins``:
a kernel without it has no spans and pays nothing (an empty chain is the plain path).

With the OpenTelemetry SDK's tracer (``opentelemetry.sdk.trace.TracerProvider``, the
usual case) the spans are recorded by kerna and handed to the provider's span
processors in batches (``kerna.plugins._spans``: about a tenth of the SDK's own cost
per span on the hot path; ``flush()``, and a kernel's stop, hand over what is left);
with any other implementation of the API, through its tracer, span by span.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from kerna import MessageContext, PendingReply

from ._middleware import Middleware, SendNext

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, SpanKind, Tracer, TracerProvider

    from kerna import Kernel

    from ._spans import Pipeline

__all__ = ["TRACEPARENT", "Tracing"]

TRACEPARENT = "traceparent"  # the W3C Trace Context header in a message's headers
TRACESTATE = "tracestate"

_SCOPE = "kerna"


class Tracing(Middleware):
    """OpenTelemetry spans around sends and handling, the trace carried in headers.

    Span names are ``"send <MessageType>"`` and ``"handle <MessageType>"``; kinds CLIENT
    and SERVER for an ask, PRODUCER and CONSUMER for a tell or an event. Attributes:
    ``kerna.message.kind``, ``kerna.message.type``, ``kerna.message.id``,
    ``kerna.correlation_id`` and ``kerna.causation_id``; ``kerna.agent.id`` (the agent
    that handles, or that sends; absent for a send from outside any agent),
    ``kerna.target`` on sends (an agent id or a topic) and ``kerna.topic`` for events.
    A handler's failure, or a send's (an ``AskTimeout``, a ``RemoteError``, an open
    breaker), is recorded on its span (an exception event, status ERROR) and raised
    on unchanged. A message without a ``traceparent`` (from a kernel without
    ``Tracing``) starts a trace of its own.

    The handling span is the current span (``opentelemetry.trace.get_current_span()``)
    while the handler runs: the handler's own spans are its children, and what it sets
    on it (attributes, events, status) is exported with it. A send's span is the
    parent of the message's handling (its ``traceparent``) but is not made current.
    The provider's sampler decides as it would for the SDK's own spans; a sampled-out
    span is not recorded, and its trace's next hops (other nodes too) know it.

    Put it first in ``Kernel(middleware=[...])``: its send span then covers every
    attempt that ``Resilience`` (after it) makes, its handling span the whole chain.

    Args:
        tracer_provider: where the spans go; the global one
            (``opentelemetry.trace.set_tracer_provider``) when None.

    Raises:
        ImportError: OpenTelemetry is not installed (``pip install 'kerna[otel]'``).
    """

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        try:
            from opentelemetry import context, trace
            from opentelemetry.context import Context
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )
        except ImportError as exc:  # name the extra, not only the module
            raise ImportError(
                f"kerna.plugins.Tracing needs OpenTelemetry: pip install 'kerna[otel]' ({exc})"
            ) from exc
        self._trace = trace
        self._provider = tracer_provider
        self._propagator = TraceContextTextMapPropagator()
        self._root = Context
        self._with_span = trace.set_span_in_context
        self._attach, self._detach = context.attach, context.detach
        self._error = trace.StatusCode.ERROR
        kinds = trace.SpanKind
        self._send_kinds: dict[str, SpanKind] = {
            "ask": kinds.CLIENT, "tell": kinds.PRODUCER, "event": kinds.PRODUCER,
        }  # fmt: skip
        self._handle_kinds: dict[str, SpanKind] = {
            "ask": kinds.SERVER, "tell": kinds.CONSUMER, "event": kinds.CONSUMER,
        }  # fmt: skip
        self._send_names: dict[type, str] = {}  # span names by message type
        self._handle_names: dict[type, str] = {}
        self._global_provider = trace.get_tracer_provider
        self._context = Context
        # The tracer, and kerna's pipeline when it is the SDK's (see _resolve).
        self._for: object = None
        self._tracer: Tracer = trace.get_tracer(_SCOPE, tracer_provider=tracer_provider)
        self._pipeline: Pipeline | None = None
        self._pipelines: list[Pipeline] = []
        if tracer_provider is not None:
            self._resolve(tracer_provider)

    def __repr__(self) -> str:
        return f"<Tracing tracer={self._tracer!r}>"

    def flush(self) -> None:
        """Hand every span ended so far to the provider's span processors (they are
        otherwise handed over in batches, at the latest 50 ms after they end, and when
        a kernel using this ``Tracing`` stops). The provider's ``force_flush()`` does
        this too (``Tracing`` adds a processor of its own to the provider for it), and
        then exports what a ``BatchSpanProcessor`` holds."""
        for pipeline in self._pipelines:
            pipeline.flush()

    def stopped(self, kernel: Kernel) -> None:
        """The kernel stopped: its last spans go to the processors."""
        self.flush()

    def _resolve(self, provider: TracerProvider) -> Pipeline | None:
        """kerna's pipeline for ``provider``'s tracer if that is the SDK's, else None
        (then the tracer itself makes the spans)."""
        if provider is not self._for:
            self._for = provider
            tracer = self._trace.get_tracer(_SCOPE, tracer_provider=provider)
            self._tracer, self._pipeline = tracer, None
            try:
                from opentelemetry.sdk.trace import Tracer as SdkTracer
            except ImportError:  # the API without the SDK
                return None
            if type(tracer) is SdkTracer:
                from . import _spans

                pipeline = self._pipeline = _spans.Pipeline(tracer, _SCOPE)
                self._pipelines.append(pipeline)
                add = getattr(provider, "add_span_processor", None)
                if add is not None:  # provider.force_flush() then reaches kerna's spans
                    add(_spans.Flusher(pipeline))
        return self._pipeline

    def _name(self, is_send: bool, message: object) -> str:
        names = self._send_names if is_send else self._handle_names
        found = names.get(type(message))
        if found is None:
            verb = "send" if is_send else "handle"
            found = names[type(message)] = f"{verb} {type(message).__qualname__}"
        return found

    # -- the chain's hooks ---------------------------------------------------------------

    async def send(self, ctx: MessageContext, call_next: SendNext) -> Any:
        provider = self._provider
        pipeline = (
            self._pipeline if provider is not None else self._resolve(self._global_provider())
        )
        if pipeline is None:
            return await self._send_through_tracer(ctx, call_next)
        span = pipeline.send_span(ctx)
        headers = span.headers()
        sent, traceparent = pipeline.sent, headers[TRACEPARENT]
        sent[traceparent] = span  # its handling here finds it without parsing
        try:
            return await call_next(headers=headers)
        except Exception as exc:
            span.failed(exc)
            raise
        finally:
            del sent[traceparent]
            span.finish()

    async def handle(self, ctx: MessageContext, call_next: Callable[[], Awaitable[Any]]) -> Any:
        provider = self._provider
        pipeline = (
            self._pipeline if provider is not None else self._resolve(self._global_provider())
        )
        if pipeline is None:
            return await self._handle_through_tracer(ctx, call_next)
        span = pipeline.handle_span(ctx)
        token = self._attach(self._context({pipeline.span_key: span}))  # its span current
        try:
            result = await call_next()
            if isinstance(result, PendingReply):
                span.deferred = True  # the send span waits for the reply
            return result
        except Exception as exc:
            span.failed(exc)
            raise
        finally:
            self._detach(token)
            span.finish()

    # -- through a tracer that is not the SDK's --------------------------------------------

    async def _send_through_tracer(self, ctx: MessageContext, call_next: SendNext) -> Any:
        span = self._tracer.start_span(
            self._name(True, ctx.message), kind=self._send_kinds[ctx.kind]
        )
        if span.is_recording():  # a sampled-out span costs no attributes
            span.set_attributes(_attributes(ctx, ctx.sender))
            span.set_attribute("kerna.target", str(ctx.target))
        current = self._with_span(span)
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, current)  # this span: the receiver's parent
        return await self._run(span, current, lambda: call_next(headers=carrier))

    async def _handle_through_tracer(
        self, ctx: MessageContext, call_next: Callable[[], Awaitable[Any]]
    ) -> Any:
        headers = ctx.headers
        parent = self._propagator.extract(headers) if TRACEPARENT in headers else self._root()
        span = self._tracer.start_span(
            self._name(False, ctx.message), context=parent, kind=self._handle_kinds[ctx.kind]
        )
        if span.is_recording():
            span.set_attributes(_attributes(ctx, ctx.target if ctx.kind != "event" else None))

        async def handling() -> Any:
            result = await call_next()
            if isinstance(result, PendingReply) and span.is_recording():
                span.set_attribute("kerna.reply.deferred", True)  # the send span waits
            return result

        return await self._run(span, self._with_span(span, parent), handling)

    async def _run(self, span: Span, current: Context, work: Callable[[], Awaitable[Any]]) -> Any:
        """``work()`` with ``span`` current, ended after; a failure recorded on it
        (``Exception``s only: a cancellation is not an error, as in ``use_span``)."""
        token = self._attach(current)
        try:
            return await work()
        except Exception as exc:
            if span.is_recording():
                span.record_exception(exc)
                span.set_status(self._error, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self._detach(token)
            span.end()


def _attributes(ctx: MessageContext, agent: object) -> dict[str, str | int]:
    found: dict[str, str | int] = {
        "kerna.message.kind": ctx.kind,
        "kerna.message.type": type(ctx.message).__qualname__,
        "kerna.message.id": ctx.message_id,
        "kerna.correlation_id": ctx.correlation_id,
        "kerna.causation_id": ctx.causation_id,
    }
    if agent is not None:
        found["kerna.agent.id"] = str(agent)
    topic = ctx.topic
    if topic is not None:
        found["kerna.topic"] = topic
    return found
