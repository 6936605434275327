"""``Tracing``'s span pipeline for the OpenTelemetry SDK: cheap records on the hot path,
the SDK's own ``ReadableSpan``s at its processors, in batches.

The SDK's ``Tracer.start_span`` and ``Span.end`` cost about 9 to 13 µs a span (bounded
attribute maps with their locks, the sampler's context objects, a processor call per
start and end); an in-process ask costs about 5 µs in all. So when the tracer is the
SDK's (``opentelemetry.sdk.trace.Tracer``), ``Tracing`` makes no SDK object per message:

- ``KernaSpan`` records a span as plain fields (ids, times, the ``MessageContext`` its
  attributes come from). It is an ``opentelemetry.trace.Span``: made current around a
  handler, a handler's own spans are its children, and ``set_attribute``, ``add_event``,
  ``set_status``, ``record_exception`` on it land on the exported span.
- The handling span is made current on the ``ContextVar`` OpenTelemetry's default
  runtime context keeps the current ``Context`` in (``runtime_var``: what its
  ``attach``/``detach`` set and reset, without their two calls each; through those
  functions for any other runtime context).
- Ids come from the tracer's ``id_generator``, timestamps from ``time.time_ns()`` (as
  the SDK's), the ``traceparent`` is formatted and read here (``parse_traceparent``: the
  W3C format the SDK's propagator reads, falling back to that propagator for anything
  but the common ``00`` form).
- The provider's sampler is honoured: asked for each span as the SDK asks it, except
  where its answer is known without asking: the SDK's ``ParentBased`` with its default
  delegates (what ``TracerProvider()`` uses: a child follows its parent's sampled flag;
  a root is sampled as its root sampler says: ``ALWAYS_ON``, ``ALWAYS_OFF`` and
  ``TraceIdRatioBased`` are decided here by their own rule, any other is asked),
  ``ALWAYS_ON`` and ``ALWAYS_OFF``. A span sampled out is never buffered; its ids still
  travel, so the next hops (other nodes too) know the trace is sampled out.
- A handling whose message was sent here and is still in flight (an ask, always) finds
  its parent by the ``traceparent`` string itself (``Pipeline.sent``), without parsing.
- Ended spans are buffered and handed to the tracer's span processor (the provider's:
  ``on_end`` with a ``ReadableSpan``, what ``BatchSpanProcessor`` and
  ``SimpleSpanProcessor`` export) in batches: ``BATCH`` spans at a time, or
  ``FLUSH_AFTER`` seconds after the first one ended, from the event loop but outside
  any handler or sender; and on ``Tracing.flush()``, the provider's ``force_flush()``
  and ``shutdown()`` (``Flusher``, a processor ``Tracing`` adds to the provider), when a
  kernel using it stops, and at interpreter exit.

What differs from spans the SDK makes itself: processors get ``on_end`` only (their
``on_start`` is not called: ``SimpleSpanProcessor`` and ``BatchSpanProcessor`` do
nothing there), the provider's ``SpanLimits`` are not applied to the few attributes
kerna sets, and the SDK's internal self-metrics do not count these spans.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import logging
import os
import random
import re
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace as api
from opentelemetry.context import Context as OtelContext
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, sampling
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from kerna import PendingReply

from ._tracing import SpanNames

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import Tracer
    from opentelemetry.util import types

    from kerna import MessageContext

__all__ = [
    "BATCH",
    "FLUSH_AFTER",
    "Flusher",
    "KernaSpan",
    "Pipeline",
    "foreign_parent",
    "parse_traceparent",
]

log = logging.getLogger("kerna.plugins.tracing")

BATCH = 256  # spans handed to the processor at once (about half a millisecond's work)
FLUSH_AFTER = 0.05  # seconds an ended span waits at most (unless the loop is blocked)

TRACEPARENT, TRACESTATE = "traceparent", "tracestate"
_getrandbits = random.getrandbits
_new_span = object.__new__
_time_ns = time.time_ns
_attach, _detach = otel_context.attach, otel_context.detach
_COMMON = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")  # version 00, no more
_NO_TRACE, _NO_SPAN = "0" * 32, "0" * 16
_FLAGS = [TraceFlags(i) for i in range(256)]
_FLAG_OF = {f"{i:02x}": i for i in range(256)}
_DASH = [f"-{i:02x}" for i in range(256)]  # a traceparent's end: its flags
_PROPAGATOR = TraceContextTextMapPropagator()
_DEFAULT_DELEGATES = (
    ",remoteParentSampled:AlwaysOnSampler,remoteParentNotSampled:AlwaysOffSampler"
    ",localParentSampled:AlwaysOnSampler,localParentNotSampled:AlwaysOffSampler}"
)
_ASK, _FOLLOW, _ON, _OFF = range(4)  # how a sampler's decision is reached

Parent = tuple[str, int, int, bool, str]  # trace hex, span id, flags, remote, tracestate
Decided = tuple[bool, int, str, "types.Attributes"]  # recording, flags, tracestate, attrs


def parse_traceparent(traceparent: str, tracestate: str | None) -> Parent | None:
    """The parent a message's W3C ``traceparent`` names (None: none, or invalid), as
    ``TraceContextTextMapPropagator.extract`` reads it."""
    if _COMMON.fullmatch(traceparent) is not None:
        trace, span = traceparent[3:35], traceparent[36:52]
        if trace == _NO_TRACE or span == _NO_SPAN:
            return None
        state = _normal_state(tracestate) if tracestate else ""
        return trace, int(span, 16), _FLAG_OF[traceparent[53:]], True, state
    carrier = {TRACEPARENT: traceparent}
    if tracestate:
        carrier[TRACESTATE] = tracestate
    found = api.get_current_span(_PROPAGATOR.extract(carrier)).get_span_context()
    return _foreign(found)


def foreign_parent(span: api.Span) -> Parent | None:
    """The parent a span that is not kerna's makes (None: it is not a valid one)."""
    return _foreign(span.get_span_context())


def _foreign(found: SpanContext) -> Parent | None:
    if not found.is_valid:
        return None
    state = found.trace_state.to_header() if found.trace_state else ""
    return f"{found.trace_id:032x}", found.span_id, int(found.trace_flags), found.is_remote, state


_states: dict[str, str] = {}


def _normal_state(header: str) -> str:
    """A ``tracestate`` header as the SDK passes it on (parsed and written again)."""
    found = _states.get(header)
    if found is None:
        if len(_states) > 1024:
            _states.clear()
        found = _states[header] = TraceState.from_header([header]).to_header()
    return found


def runtime_var() -> contextvars.ContextVar[Context] | None:
    """The ``ContextVar`` OpenTelemetry's default runtime context keeps the current
    ``Context`` in (what its ``get_current``, ``attach`` and ``detach`` read, set and
    reset), found through the token ``attach`` returns; None when ``OTEL_PYTHON_CONTEXT``
    names another runtime context (then its functions are called)."""
    if os.environ.get("OTEL_PYTHON_CONTEXT", "contextvars_context") not in (
        "",
        "contextvars_context",
    ):
        return None
    current = otel_context.get_current()
    token = otel_context.attach(current)
    try:
        var = getattr(token, "var", None)
        if isinstance(var, contextvars.ContextVar) and var.get() is current:
            return var
        return None
    finally:
        otel_context.detach(token)


_NO_STATE = TraceState()  # immutable: shared (SpanContext makes one per None otherwise)


def _trace_state(header: str) -> TraceState:
    return TraceState.from_header([header]) if header else _NO_STATE


def sampling_mode(sampler: sampling.Sampler) -> tuple[int, bool | None]:
    """How ``sampler`` decides, and whether a root is sampled (None: ask it); see the
    module docstring. Anything but the SDK's own known samplers is asked every time."""
    description = sampler.get_description()
    if type(sampler) is sampling.ParentBased and description.endswith(_DEFAULT_DELEGATES):
        root = description[len("ParentBased{root:") : -len(_DEFAULT_DELEGATES)]
        return _FOLLOW, _STATIC.get(root)
    if type(sampler) is sampling.StaticSampler:
        return (_ON, True) if description == "AlwaysOnSampler" else (_OFF, False)
    return _ASK, None


_STATIC = {"AlwaysOnSampler": True, "AlwaysOffSampler": False}
_RATIO = re.compile(
    r"ParentBased\{root:TraceIdRatioBased\{([0-9.e+-]+)\}" + re.escape(_DEFAULT_DELEGATES)
)
_RATIO_LIMIT = sampling.TraceIdRatioBased.TRACE_ID_LIMIT
_SEND_KINDS = {"ask": SpanKind.CLIENT, "tell": SpanKind.PRODUCER, "event": SpanKind.PRODUCER}
_HANDLE_KINDS = {"ask": SpanKind.SERVER, "tell": SpanKind.CONSUMER, "event": SpanKind.CONSUMER}
_ROOT_CONTEXT = OtelContext()  # what the SDK's sampler is given for a root handling


def _sampler_context(parent: Parent) -> Context:
    """What the SDK passes a sampler for a handling span: the extracted parent."""
    carrier = {TRACEPARENT: f"00-{parent[0]}-{parent[1]:016x}-{parent[2]:02x}"}
    if parent[4]:
        carrier[TRACESTATE] = parent[4]
    return _PROPAGATOR.extract(carrier)


def _followed(flags: int, state: str) -> Decided:
    """The decision for a child whose parent has ``flags`` and tracestate ``state``
    under ``ParentBased`` with its default delegates: it follows the parent's sampled
    flag (and keeps its random-trace-id flag)."""
    return bool(flags & 1), flags & 0x03, state, None


class KernaSpan(api.Span):
    """One span of ``Tracing``'s: its fields, made a ``ReadableSpan`` once ended."""

    # What most spans never set is a class default: fewer stores on the hot path.
    attributes: dict[str, Any] | None = None  # set by the handler's own code
    events: list[Event] | None = None
    links: list[api.Link] | None = None
    status: Status | None = None
    deferred = False  # a handler that deferred its reply
    end_time = 0
    traceparent = ""  # what headers() wrote (a send's span)
    token: contextvars.Token[Context] | None = None  # its context attached (a handling)
    sampler_attributes: types.Attributes = None
    # Its parent: a span of this pipeline (a send's: the handling span current where it
    # was sent; a handling's: its message's send span, in flight here), or as read.
    parent: KernaSpan | Parent | None = None

    name: str | None = None  # update_name's; else "send T" / "handle T" (span_name)

    def __init__(
        self,
        pipeline: Pipeline,
        ctx: MessageContext,
        is_send: bool,
        trace: str,
        span_id: int,
        decided: tuple[bool, int, str, types.Attributes],
        parent: KernaSpan | Parent | None,
    ) -> None:
        # Its name and kind follow from ctx and is_send: found when exported (readable),
        # not per message.
        self.pipeline = pipeline
        self.ctx = ctx
        self.is_send = is_send
        self.trace = trace  # the trace id, 32 hex digits
        # The SDK's RandomIdGenerator draws 64 random bits until they are not 0: so here.
        self.span_id = span_id or pipeline.ids.generate_span_id()
        # recording, flags, tracestate header ("" when empty), the sampler's attributes
        self.recording, self.flags, self.state, attributes = decided
        if attributes is not None:
            self.sampler_attributes = attributes
        if parent is not None:
            self.parent = parent
        self.start_time = _time_ns()

    def headers(self) -> dict[str, str]:
        """What a message sent under this span carries: its ``traceparent``, and its
        ``tracestate`` when there is one."""
        found = self.traceparent
        if not found:
            found = self.traceparent = (  # (to_bytes().hex() is about twice as fast as format())
                "00-" + self.trace + "-" + self.span_id.to_bytes(8, "big").hex() + _DASH[self.flags]
            )
        if self.state:
            return {TRACEPARENT: found, TRACESTATE: self.state}
        return {TRACEPARENT: found}

    def as_parent(self, remote: bool = False) -> Parent:
        """Its ids, as the parent of a span (``remote``: known from a message's
        ``traceparent``)."""
        return self.trace, self.span_id, self.flags, remote, self.state

    def failed(self, error: Exception) -> None:
        """Record ``error`` as the SDK's ``record_exception`` and ``set_status`` do."""
        if self.recording:
            self.record_exception(error)
            self.status = Status(StatusCode.ERROR, f"{type(error).__name__}: {error}")

    def finish(self) -> None:
        """The span ended (kerna's hooks end their spans here)."""
        if self.end_time == 0:
            self.end_time = time.time_ns()
            if self.recording:  # Pipeline.ended, inline: the hot path
                pipeline = self.pipeline
                buffer = pipeline.buffer
                buffer.append(self)
                if pipeline.timer is None or len(buffer) >= BATCH:  # (no timer: the first)
                    pipeline.first_or_full()

    # -- opentelemetry.trace.Span, for the handler's own code ------------------------------

    def end(self, end_time: int | None = None) -> None:
        if self.end_time == 0:
            self.end_time = time.time_ns() if end_time is None else end_time
            if self.recording:
                self.pipeline.ended(self)

    def get_span_context(self) -> SpanContext:
        return SpanContext(
            int(self.trace, 16), self.span_id, False, _FLAGS[self.flags], _trace_state(self.state)
        )

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        if self.recording and self.end_time == 0:
            if self.attributes is None:
                self.attributes = {}
            self.attributes.update(attributes)

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        self.set_attributes({key: value})

    def add_event(
        self, name: str, attributes: types.Attributes = None, timestamp: int | None = None
    ) -> None:
        if self.recording and self.end_time == 0:
            if self.events is None:
                self.events = []
            self.events.append(Event(name, attributes, timestamp or time.time_ns()))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if self.recording and self.end_time == 0 and context.is_valid:
            if self.links is None:
                self.links = []
            self.links.append(api.Link(context, attributes))

    def update_name(self, name: str) -> None:
        if self.recording and self.end_time == 0:
            self.name = name

    def is_recording(self) -> bool:
        return self.recording and self.end_time == 0

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self.recording and self.end_time == 0:
            self.status = status if isinstance(status, Status) else Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        module, qualname = type(exception).__module__, type(exception).__qualname__
        found: dict[str, Any] = {
            "exception.type": f"{module}.{qualname}" if module != "builtins" else qualname,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            found.update(attributes)
        self.add_event("exception", found, timestamp)

    def span_name(self) -> str:
        """Its name: ``"send <MessageType>"`` or ``"handle <MessageType>"``, unless the
        handler's code renamed it."""
        return self.name or self.pipeline.span_name(self.is_send, self.ctx.message)

    def readable(self, pipeline: Pipeline) -> ReadableSpan:
        """The SDK's ``ReadableSpan`` of this ended span."""
        trace_id = int(self.trace, 16)
        own = self.parent
        # A span of this pipeline as a parent: a send's was current (local), a
        # handling's came in its message (remote, as the SDK's propagator reads it).
        parent = own.as_parent(not self.is_send) if isinstance(own, KernaSpan) else own
        parent_context = None
        if parent is not None:
            parent_context = SpanContext(
                trace_id, parent[1], parent[3], _FLAGS[parent[2]], _trace_state(parent[4])
            )
        attributes = kerna_attributes(self)
        if self.sampler_attributes:
            attributes = {**self.sampler_attributes, **attributes}
        if self.attributes:
            attributes.update(self.attributes)
        return ReadableSpan(
            self.span_name(),
            SpanContext(
                trace_id, self.span_id, False, _FLAGS[self.flags], _trace_state(self.state)
            ),
            parent_context,
            pipeline.resource,
            attributes,
            self.events or (),
            self.links or (),
            (_SEND_KINDS if self.is_send else _HANDLE_KINDS)[self.ctx.kind],
            pipeline.info,
            self.status or _UNSET,
            self.start_time,
            self.end_time,
            pipeline.scope,
        )


_UNSET = Status(StatusCode.UNSET)


def kerna_attributes(span: KernaSpan) -> dict[str, Any]:
    """The attributes kerna sets (see ``Tracing``)."""
    ctx = span.ctx
    kind = ctx.kind
    found: dict[str, Any] = {
        "kerna.message.kind": kind,
        "kerna.message.type": type(ctx.message).__qualname__,
        "kerna.message.id": ctx.message_id,
        "kerna.correlation_id": ctx.correlation_id,
        "kerna.causation_id": ctx.causation_id,
    }
    if span.is_send:
        sender = ctx.sender
        if sender is not None:
            found["kerna.agent.id"] = str(sender)
    elif kind != "event":
        found["kerna.agent.id"] = str(ctx.target)
    if kind == "event":
        topic = ctx.topic
        if topic is not None:
            found["kerna.topic"] = topic
    if span.is_send:
        found["kerna.target"] = str(ctx.target)
    if span.deferred:
        found["kerna.reply.deferred"] = True  # the send span waits for the reply
    return found


_pipelines: weakref.WeakSet[Pipeline] = weakref.WeakSet()


class Flusher(SpanProcessor):
    """Added to the provider by ``Tracing``: its ``force_flush()`` (what a user calls to
    see every ended span) hands kerna's buffered spans to the other processors first,
    then flushes them again; ``shutdown()`` hands them over too."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = weakref.ref(pipeline)
        self.flushing = False

    def shutdown(self) -> None:
        pipeline = self.pipeline()
        if pipeline is not None:
            pipeline.flush()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        pipeline = self.pipeline()
        if self.flushing or pipeline is None or not pipeline.buffer:
            return True  # (the second pass below reaches this processor too)
        self.flushing = True
        try:
            pipeline.flush()
            return bool(pipeline.processor.force_flush(timeout_millis))
        finally:
            self.flushing = False


@atexit.register
def _flush_all() -> None:  # before the provider's own atexit shutdown (registered earlier)
    for pipeline in list(_pipelines):
        pipeline.flush()


class Pipeline:
    """The SDK tracer's sampler, ids and span processor; the ended spans not yet handed
    to the processor."""

    def __init__(self, tracer: Tracer, scope_name: str) -> None:
        self.tracer = tracer
        self.sampler = tracer.sampler
        self.mode, self.root_on = sampling_mode(tracer.sampler)
        self.asks_always = self.mode == _ASK  # the sampler sees every span's parent
        self.ids = tracer.id_generator
        is_random = getattr(self.ids, "is_trace_id_random", None)
        self.random_flag = 0x02 if is_random is not None and is_random() else 0  # W3C level 2
        # A root's decision when it is known without asking the sampler.
        self.root: Decided | None = None
        if self.root_on is not None:
            self.root = (self.root_on, int(self.root_on) | self.random_flag, "", None)
        self.bound: int | None = None  # ParentBased(TraceIdRatioBased(r))'s root, known
        ratio = _RATIO.fullmatch(tracer.sampler.get_description())
        if self.mode == _FOLLOW and self.root is None and ratio is not None:
            self.bound = sampling.TraceIdRatioBased(float(ratio[1])).bound
        # A child's decision under ParentBased's defaults, by its parent's flags (no
        # tracestate): what _followed makes, made once.
        self.followed: list[Decided] = [_followed(flags, "") for flags in range(256)]
        self.sampled: Decided = (True, 1 | self.random_flag, "", None)
        self.unsampled: Decided = (False, self.random_flag, "", None)
        self.fast_ids = type(self.ids) is RandomIdGenerator
        # The current Context: read, set and reset straight on OpenTelemetry's own
        # ContextVar when it keeps it in one (its functions only wrap these calls).
        var = runtime_var()
        self.get_current: Callable[[], Context] = otel_context.get_current
        self.attach: Callable[[Context], contextvars.Token[Context]] = _attach
        self.reset: Callable[[contextvars.Token[Context]], object] = _detach
        if var is not None:
            self.get_current, self.attach, self.reset = var.get, var.set, var.reset
        # The usual cases' conditions, once: ids drawn here, and a root's decision
        # known (that decision) or ParentBased's default delegates.
        self.fast_root: Decided | None = self.root if self.fast_ids else None
        # ParentBased(TraceIdRatioBased(r))'s root: decided inline on the drawn bits
        self.fast_bound: int | None = self.bound if self.fast_ids else None
        self.fast_follow = self.fast_ids and self.mode == _FOLLOW
        # The key OpenTelemetry keeps the current span under (its own API finds it).
        self.span_key = next(iter(api.set_span_in_context(api.INVALID_SPAN, OtelContext())))
        # The sends in flight by their traceparent: what a handling here parses least.
        self.sent: dict[str | None, KernaSpan] = {}
        self.span_name = SpanNames()  # ``"send T"`` / ``"handle T"``, by message type
        self.processor = tracer.span_processor
        self.resource = tracer.resource
        self.info = tracer.instrumentation_info
        self.scope = InstrumentationScope(scope_name, "", None, None)  # as get_tracer's
        self.buffer: deque[KernaSpan] = deque()
        self.timer: asyncio.TimerHandle | None = None
        self.soon = False
        _pipelines.add(self)

    def child(self, parent: Parent) -> Decided | None:
        """The sampler's decision for a child of ``parent`` when it is known without
        asking (None: ask it, ``decide``)."""
        mode = self.mode
        flags = parent[2]
        if mode == _FOLLOW:
            sampled = flags & 1
            return bool(sampled), sampled | (flags & 0x02), parent[4], None
        if mode == _ON:
            return True, 1 | (flags & 0x02), parent[4], None
        if mode == _OFF:
            return False, flags & 0x02, parent[4], None
        return None

    def decide(
        self, parent: Parent | None, trace: str, name: str, kind: SpanKind, context: Context | None
    ) -> Decided:
        """Ask the sampler: recording, the span's flags, its tracestate and the
        sampler's attributes. ``context`` is what the SDK would pass the sampler (None:
        the current one)."""
        random_bit = self.random_flag if parent is None else parent[2] & 0x02
        result = self.sampler.should_sample(context, int(trace, 16), name, kind, None, ())
        decision = result.decision
        state = result.trace_state.to_header() if result.trace_state else ""
        sampled = 1 if decision is sampling.Decision.RECORD_AND_SAMPLE else 0
        recording = decision is not sampling.Decision.DROP
        return recording, sampled | random_bit, state, result.attributes

    def new_root(
        self, ctx: MessageContext, is_send: bool, context: Context | None
    ) -> tuple[str, Decided]:
        """A new trace's id (as 32 hex digits) and the sampler's decision for its root."""
        trace_id = (self.fast_ids and _getrandbits(128)) or self.ids.generate_trace_id()
        trace = trace_id.to_bytes(16, "big").hex()
        if self.root is not None:
            return trace, self.root
        bound = self.bound
        if bound is not None:  # TraceIdRatioBased's own test, on the same bits
            return trace, self.sampled if trace_id & _RATIO_LIMIT < bound else self.unsampled
        return trace, self.decide(None, trace, *self.name_kind(ctx, is_send), context)

    def name_kind(self, ctx: MessageContext, is_send: bool) -> tuple[str, SpanKind]:
        """A span's name and kind (what a sampler is asked with)."""
        kind = (_SEND_KINDS if is_send else _HANDLE_KINDS)[ctx.kind]
        return self.span_name(is_send, ctx.message), kind

    # -- Tracing's hooks, when its provider is the SDK's (bound to them: kerna._chain's
    # SyncHooks call these). The usual cases inline: a root send or one from a handler
    # under the SDK's default sampler, a handling of a message sent here.

    def before_send(self, ctx: MessageContext) -> tuple[KernaSpan, dict[str, str]]:
        """A send's span, and the headers that carry it (see ``send_span``)."""
        current = self.get_current().get(self.span_key)
        root = self.fast_root
        bound = self.fast_bound
        if current is None and (root is not None or bound is not None):  # new_root inline
            trace_id = _getrandbits(128) or self.ids.generate_trace_id()
            if root is None:  # TraceIdRatioBased's own test, on the same bits
                assert bound is not None
                root = self.sampled if trace_id & _RATIO_LIMIT < bound else self.unsampled
            span = _new_span(KernaSpan)  # (KernaSpan.__init__, inline: the hot path)
            span.pipeline = self
            span.ctx = ctx
            span.is_send = True
            span.trace = trace_id.to_bytes(16, "big").hex()
            span.span_id = _getrandbits(64) or self.ids.generate_span_id()
            span.recording, span.flags, span.state, attributes = root
            if attributes is not None:
                span.sampler_attributes = attributes
            span.start_time = _time_ns()
        elif type(current) is KernaSpan and self.fast_follow:  # from a handler
            flags, state = current.flags, current.state
            decided = self.followed[flags] if not state else _followed(flags, state)
            span = KernaSpan(self, ctx, True, current.trace, _getrandbits(64), decided, current)
        else:
            span = self.send_span(ctx)
        # (to_bytes().hex() is about twice as fast as format(); one string built)
        traceparent = span.traceparent = (
            f"00-{span.trace}-{span.span_id.to_bytes(8, 'big').hex()}{_DASH[span.flags]}"
        )
        self.sent[traceparent] = span  # its handling here finds it unparsed
        if span.state:
            return span, {TRACEPARENT: traceparent, TRACESTATE: span.state}
        return span, {TRACEPARENT: traceparent}

    def after_send(
        self, ctx: MessageContext, span: KernaSpan, result: Any, error: BaseException | None
    ) -> None:
        """The send's span ended, a failure recorded (not a cancellation)."""
        if error is not None and isinstance(error, Exception):
            span.failed(error)
        del self.sent[span.traceparent]
        if span.end_time == 0:  # (span.finish, inline)
            span.end_time = _time_ns()
            if span.recording:
                buffer = self.buffer
                buffer.append(span)
                if self.timer is None or len(buffer) >= BATCH:  # (no timer: the first)
                    self.first_or_full()

    def before_handle(self, ctx: MessageContext) -> KernaSpan:
        """A handling's span (see ``handle_span``), made the current span."""
        sender = self.sent.get(ctx.header(TRACEPARENT))  # (None: no such key)
        if (
            sender is not None
            and self.fast_follow
            and (ctx.header(TRACESTATE) or "") == sender.state
        ):  # sent from here and still in flight: its parent is that span
            flags, state = sender.flags, sender.state
            span = _new_span(KernaSpan)  # (KernaSpan.__init__, inline: the hot path)
            span.pipeline = self
            span.ctx = ctx
            span.is_send = False
            span.trace = sender.trace
            span.span_id = _getrandbits(64) or self.ids.generate_span_id()
            span.recording, span.flags, span.state, _ = (  # (no sampler attributes)
                self.followed[flags] if not state else _followed(flags, state)
            )
            span.parent = sender
            span.start_time = _time_ns()
        else:
            span = self.handle_span(ctx)
        span.token = self.attach(OtelContext({self.span_key: span}))
        return span

    def after_handle(
        self, ctx: MessageContext, span: KernaSpan, result: Any, error: BaseException | None
    ) -> None:
        """The handling's span ended (its context detached), a failure recorded (not a
        cancellation), a deferred reply marked."""
        token = span.token
        assert token is not None  # (set by before_handle)
        try:
            self.reset(token)
        except Exception:  # as opentelemetry.context.detach: logged, never raised
            log.exception("Failed to detach context")
        if error is not None:
            if isinstance(error, Exception):
                span.failed(error)
        elif isinstance(result, PendingReply):
            span.deferred = True  # the send span waits for the reply
        if span.end_time == 0:  # (span.finish, inline)
            span.end_time = _time_ns()
            if span.recording:
                buffer = self.buffer
                buffer.append(span)
                if self.timer is None or len(buffer) >= BATCH:  # (no timer: the first)
                    self.first_or_full()

    def new_span_id(self) -> int:
        """A span id: the id generator's (64 random bits for the SDK's own, drawn here;
        0, never valid, makes the KernaSpan ask the generator)."""
        return _getrandbits(64) if self.fast_ids else self.ids.generate_span_id()

    def send_span(self, ctx: MessageContext) -> KernaSpan:
        """The span of a send, a child of the current span (the handling span inside a
        handler, the caller's own outside any agent)."""
        current = self.get_current().get(self.span_key)
        if type(current) is KernaSpan:
            flags, state = current.flags, current.state
            if self.mode == _FOLLOW:  # the SDK's default: a child follows its parent
                decided = self.followed[flags] if not state else _followed(flags, state)
                span_id = self.new_span_id()
                return KernaSpan(self, ctx, True, current.trace, span_id, decided, current)
            parent: Parent | None = current.as_parent()
        else:  # the caller's own span (outside any agent), if any
            parent = None  # (None is the usual case: an ABC's isinstance is slow)
            if current is not None and isinstance(current, api.Span):
                parent = foreign_parent(current)
        if parent is None:
            root = self.root
            if root is not None and self.fast_ids:  # the usual case, new_root inline
                trace_id = _getrandbits(128) or self.ids.generate_trace_id()
                trace = trace_id.to_bytes(16, "big").hex()
                return KernaSpan(self, ctx, True, trace, self.new_span_id(), root, None)
            trace, decided = self.new_root(ctx, True, None)
            return KernaSpan(self, ctx, True, trace, self.new_span_id(), decided, None)
        trace, flags = parent[0], parent[2]
        if self.mode == _FOLLOW:
            decided = _followed(flags, parent[4])
        else:
            decided = self.child(parent) or self.decide(
                parent, trace, *self.name_kind(ctx, True), None
            )
        return KernaSpan(self, ctx, True, trace, self.new_span_id(), decided, parent)

    def handle_span(self, ctx: MessageContext) -> KernaSpan:
        """The span of a handling, a child of what the message carries (never of the
        worker task's own context; a trace of its own when it carries nothing)."""
        traceparent = ctx.header(TRACEPARENT)
        parent = None
        if traceparent is not None:
            sender = self.sent.get(traceparent)  # sent from here, still in flight
            state = ctx.header(TRACESTATE)
            if sender is not None and (state or "") == sender.state:
                if self.mode == _FOLLOW:  # the usual case: its parent is that span
                    flags, state = sender.flags, sender.state
                    decided = self.followed[flags] if not state else _followed(flags, state)
                    span_id = self.new_span_id()
                    return KernaSpan(self, ctx, False, sender.trace, span_id, decided, sender)
                parent = sender.as_parent(True)
            else:
                parent = parse_traceparent(traceparent, state)
        if parent is None:
            trace, decided = self.new_root(ctx, False, _ROOT_CONTEXT)
        elif self.asks_always:  # the sampler sees the parent context the SDK passes it
            trace = parent[0]
            name, kind = self.name_kind(ctx, False)
            decided = self.decide(parent, trace, name, kind, _sampler_context(parent))
        elif self.mode == _FOLLOW:  # the SDK's default: a child follows its parent
            trace = parent[0]
            decided = _followed(parent[2], parent[4])
        else:
            trace = parent[0]
            decided = self.child(parent) or self.decide(
                parent, trace, *self.name_kind(ctx, False), None
            )
        return KernaSpan(self, ctx, False, trace, self.new_span_id(), decided, parent)

    def ended(self, span: KernaSpan) -> None:
        """``span`` ended: buffer it."""
        buffer = self.buffer
        buffer.append(span)
        if self.timer is None or len(buffer) >= BATCH:  # (no timer: the first)
            self.first_or_full()

    def first_or_full(self) -> None:
        """The first span of a batch ended (flush within ``FLUSH_AFTER``), or the batch
        is full (flush soon, once)."""
        full = len(self.buffer) >= BATCH
        if not full or not self.soon:
            self._schedule(full)

    def _schedule(self, now: bool) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # ended outside the event loop (the handler's own thread)
            self.flush()
            return
        if now:
            self.soon = True
            loop.call_soon(self.flush)  # never inside the handler or the sender
        else:
            self.timer = loop.call_later(FLUSH_AFTER, self.flush)

    def flush(self) -> None:
        """Hand every ended span to the processor (the SDK's ``ReadableSpan``s)."""
        timer, self.timer, self.soon = self.timer, None, False
        if timer is not None:
            timer.cancel()
        # popleft, not a swap of lists: a span another thread's loop ends meanwhile (one
        # Tracing shared by kernels in two threads) is appended, never lost.
        buffer, on_end = self.buffer, self.processor.on_end
        while buffer:
            span = buffer.popleft()
            try:
                on_end(span.readable(self))
            except Exception:  # one processor's failure loses no other span
                log.exception("a span processor failed on a span of %s", span.span_name())
