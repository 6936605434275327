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

from typing import TYPE_CHECKING, Any

from kerna import MessageContext, PendingReply

from ._middleware import Middleware

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.trace import Span, SpanKind, Tracer, TracerProvider

    from kerna import Kernel

    from ._spans import Pipeline

__all__ = ["TRACEPARENT", "Tracing"]

TRACEPARENT = "traceparent"  # the W3C Trace Context header in a message's headers
TRACESTATE = "tracestate"

_SCOPE = "kerna"
_HOOKS = ("before_send", "after_send", "before_handle", "after_handle")


class SpanNames:
    """Span names by message type, cached: ``"send <Type>"`` and ``"handle <Type>"``
    (``Tracing``'s own, and its SDK pipeline's, ``kerna.plugins._spans``)."""

    __slots__ = ("_handle", "_send")

    def __init__(self) -> None:
        self._send: dict[type, str] = {}
        self._handle: dict[type, str] = {}

    def __call__(self, is_send: bool, message: object) -> str:
        names = self._send if is_send else self._handle
        found = names.get(type(message))
        if found is None:
            verb = "send" if is_send else "handle"
            found = names[type(message)] = f"{verb} {type(message).__qualname__}"
        return found


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
    Its hooks are the chain's synchronous ones (``before_send``/``after_send``,
    ``before_handle``/``after_handle``): no coroutine of its own per message.

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
        self._name = SpanNames()
        self._global_provider = trace.get_tracer_provider
        self._context = Context
        # The tracer, and kerna's pipeline when it is the SDK's (see _resolve).
        self._for: object = None
        self._tracer: Tracer = trace.get_tracer(_SCOPE, tracer_provider=tracer_provider)
        self._pipeline: Pipeline | None = None
        self._pipelines: list[Pipeline] = []
        if tracer_provider is not None:
            pipeline = self._resolve(tracer_provider)
            if pipeline is not None and all(
                getattr(type(self), name) is getattr(Tracing, name) for name in _HOOKS
            ):
                # The chain's hooks (kerna._chain.SyncHooks) are then the SDK pipeline's
                # own (no call of Tracing's per hook; a subclass that overrides one keeps
                # its own): instance attributes over the methods below, which find the
                # provider (the global one may be set later) on each message.
                vars(self).update({name: getattr(pipeline, name) for name in _HOOKS})
                # before_send's headers: a new dict of str each time, never kept
                self.fresh_headers = True

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

    def _current_pipeline(self) -> Pipeline | None:
        """kerna's pipeline for this ``Tracing``'s provider, or for the global one
        now when it was given none (None: that provider's tracer makes the spans)."""
        if self._provider is not None:
            return self._pipeline
        return self._resolve(self._global_provider())

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

    # -- the chain's hooks: synchronous, inline around the send and the handling ---------
    # (kerna._chain.SyncHooks: no coroutine of Tracing's own per message). The handling
    # span is made current in before_handle and the context detached in after_handle:
    # both run in the one coroutine around the handler, in its task and context, so the
    # detach restores exactly what was current whether the handler returned, raised or
    # was cancelled.

    def before_send(self, ctx: MessageContext) -> tuple[Any, dict[str, str]]:
        pipeline = self._current_pipeline()
        if pipeline is None:
            return self._send_through_tracer(ctx)
        return pipeline.before_send(ctx)

    def after_send(
        self, ctx: MessageContext, state: Any, result: Any, error: BaseException | None
    ) -> None:
        if type(state) is tuple:  # a span of a tracer that is not the SDK's
            self._end_through_tracer(state, result, error)
            return
        state.pipeline.after_send(ctx, state, result, error)

    def before_handle(self, ctx: MessageContext) -> Any:
        pipeline = self._current_pipeline()
        if pipeline is None:
            return self._handle_through_tracer(ctx)
        return pipeline.before_handle(ctx)

    def after_handle(
        self, ctx: MessageContext, state: Any, result: Any, error: BaseException | None
    ) -> None:
        if type(state) is tuple:  # a span of a tracer that is not the SDK's
            self._end_through_tracer(state, result, error)
            return
        state.pipeline.after_handle(ctx, state, result, error)

    # -- through a tracer that is not the SDK's --------------------------------------------

    def _send_through_tracer(self, ctx: MessageContext) -> tuple[Any, dict[str, str]]:
        span = self._tracer.start_span(
            self._name(True, ctx.message), kind=self._send_kinds[ctx.kind]
        )
        if span.is_recording():  # a sampled-out span costs no attributes
            span.set_attributes(_attributes(ctx, ctx.sender))
            span.set_attribute("kerna.target", str(ctx.target))
        current = self._with_span(span)
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, current)  # this span: the receiver's parent
        return (span, self._attach(current)), carrier

    def _handle_through_tracer(self, ctx: MessageContext) -> tuple[Span, Token[Context]]:
        headers = ctx.headers
        parent = self._propagator.extract(headers) if TRACEPARENT in headers else self._root()
        span = self._tracer.start_span(
            self._name(False, ctx.message), context=parent, kind=self._handle_kinds[ctx.kind]
        )
        if span.is_recording():
            span.set_attributes(_attributes(ctx, ctx.target if ctx.kind != "event" else None))
        return span, self._attach(self._with_span(span, parent))

    def _end_through_tracer(
        self, state: tuple[Span, Token[Context]], result: Any, error: BaseException | None
    ) -> None:
        """The span of ``state`` ended, its context detached; a failure recorded on it
        (``Exception``s only: a cancellation is not an error, as in ``use_span``)."""
        span, token = state
        self._detach(token)
        if error is None:
            if isinstance(result, PendingReply) and span.is_recording():
                span.set_attribute("kerna.reply.deferred", True)  # the send span waits
        elif isinstance(error, Exception) and span.is_recording():
            span.record_exception(error)
            span.set_status(self._error, f"{type(error).__name__}: {error}")
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
