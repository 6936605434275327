"""The kernel's metrics through the OpenTelemetry metrics API, as middleware.

``Metrics`` (the ``otel`` extra) joins a kernel's chain like ``Tracing``::

    kernel = Kernel(timing=16, middleware=[Tracing(), Metrics(), resilience])

and registers, on its ``attach``, instruments under the meter ``kerna`` with the names,
labels and meaning of a node's Prometheus ``/metrics`` (``kerna._metric_tables``, one
table for both exporters): per agent type (attribute ``type``) the gauges
``kerna_agents_active``, ``kerna_queue_depth``, ``kerna_in_flight``,
``kerna_pending_work`` and the counters ``kerna_messages_handled``, ``_failed``,
``_rejected``, ``_expired``, ``_dropped``, ``kerna_dead_letters``,
``kerna_activations``, ``kerna_deactivations``, ``kerna_restarts``; dead letters by
``reason`` (``kerna_dead_letters_recorded``, ``_kept``, ``_evicted``,
``kerna_dead_letters_all``) and ``kerna_handlers_running``; per ``@cached`` and
``@batched`` handler (``type``, ``handler``) the cache's hits, misses, coalesced calls
and size and the batches, items, failures and largest batch; per ``Resilience`` target
(``target``) ``kerna_breaker_state`` (0 closed, 1 half-open, 2 open), its openings,
rejections, half-openings and closings, and the calls, attempts, retries, fallbacks and
fallback failures.

These are observable instruments: their callbacks read the kernel's own counters
(``Kernel.stats()``, ``dead_letter_stats()``, ``cache_stats``, ``resilience_stats``)
when the reader collects, so a message costs nothing more. A collection in another
thread (a ``PeriodicExportingMetricReader``'s) reads them all at once on the kernel's
loop, waiting for it 5 s at most (a loop that does not answer, or a
``MeterProvider.shutdown()`` made on it while the kernel runs, gets that collection
empty). The histograms ``kerna_mailbox_wait_seconds`` and
``kerna_handling_seconds`` (unit ``s``, the kernel's bucket bounds) need
``Kernel(timing=N)``: the kernel's timed messages, one in ``N`` (``Kernel.watch_timings``),
are recorded at the next collection (before it reads the histograms: a collection has
every value timed before it) or, without one, 256 at a time, from the loop: the SDK's
recording stays off the messages' own path. They carry no exemplar's trace context
(they are timed outside any handling span); without timing there are none.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import time
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from kerna import Kernel, UsageError, __version__
from kerna._metric_tables import (
    BATCH,
    BREAKER,
    BREAKER_STATE,
    BREAKER_STATES,
    CACHE,
    PER_TYPE,
    TARGET,
    TIMINGS,
    Row,
    handler_stats,
    target_stats,
)
from kerna._timing import BOUNDS

from ._middleware import Middleware

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Histogram, MeterProvider, Observation

__all__ = ["Metrics"]

Read = Callable[[Kernel], Iterable[tuple[dict[str, str], float]]]

_SNAPSHOT_KEPT = 0.5  # seconds a snapshot serves a collection's other callbacks
_LOOP_WAIT = 5.0  # seconds a collection in another thread waits for the kernel's loop at most
_RECORD_BATCH = 256  # timed values kept at most before they are recorded


class Metrics(Middleware):
    """The kernel's metrics as OpenTelemetry instruments (see the module docstring).

    It adds nothing to the chain's handling or sends (no ``handle``, no ``send``): it
    only registers instruments when it joins a kernel. One ``Metrics`` serves one
    kernel.

    Args:
        meter_provider: where the instruments live; the global one
            (``opentelemetry.metrics.set_meter_provider``) when None.

    Raises:
        ImportError: OpenTelemetry is not installed (``pip install 'kerna[otel]'``).
    """

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        try:
            from opentelemetry import metrics
        except ImportError as exc:  # name the extra, not only the module
            raise ImportError(
                f"kerna.plugins.Metrics needs OpenTelemetry: pip install 'kerna[otel]' ({exc})"
            ) from exc
        self._meter = metrics.get_meter("kerna", __version__, meter_provider=meter_provider)
        self._observation = metrics.Observation
        self._kernel: weakref.ref[Kernel] | None = None
        self._reads: dict[str, Read] = {}  # instrument name -> how to read it
        self._kept: tuple[float, dict[str, list[Any]]] | None = None  # (when, snapshot)
        self._histograms: dict[str, Histogram] = {}
        self._attributes: dict[str, dict[str, str]] = {}  # type name -> {"type": name}
        # Timed values not recorded yet (kind, type name, seconds): see _timed.
        self._pending: collections.deque[tuple[str, str, float]] = collections.deque()
        self._soon = False

    def __repr__(self) -> str:
        return f"<Metrics meter={self._meter!r}>"

    def attach(self, kernel: Kernel) -> None:
        """Register the instruments for ``kernel`` (``Kernel(middleware=)`` and ``use``
        call it).

        Raises:
            UsageError: it already serves another kernel.
        """
        if self._kernel is not None:
            if self._kernel() is kernel:
                return
            raise UsageError("a Metrics serves one kernel: make one per kernel")
        # Weakly: the meter provider keeps the callbacks, which must not keep the kernel.
        self._kernel = weakref.ref(kernel)
        self._per_type()
        self._dead_letters()
        self._handlers()
        self._targets()
        if kernel.timing:
            for field, name, text, _ in TIMINGS:
                self._histograms[field] = self._meter.create_histogram(
                    name, unit="s", description=text, explicit_bucket_boundaries_advisory=BOUNDS
                )
            kernel.watch_timings(self._timed)

    # -- the instruments ------------------------------------------------------------------

    def _per_type(self) -> None:
        for field, name, text, kind in PER_TYPE:
            self._observe(name, text, kind, functools.partial(_per_type, field))
        self._observe(
            "kerna_handlers_running",
            "Handlers running now",
            "gauge",
            lambda k: [({}, k.stats().running)],
        )

    def _dead_letters(self) -> None:
        self._observe(
            "kerna_dead_letters_all",
            "Dead letters of the kernel, unknown agent types included",
            "counter",
            lambda k: [({}, k.stats().dead_letters)],
        )
        self._observe(
            "kerna_dead_letters_recorded",
            "Dead letters recorded in the kernel's store, by reason (expired asks included)",
            "counter",
            lambda k: (({"reason": r}, n) for r, n in k.dead_letter_stats().recorded.items()),
        )
        self._observe(
            "kerna_dead_letters_kept",
            "Dead letters kept for replay now",
            "gauge",
            lambda k: [({}, k.dead_letter_stats().kept)],
        )
        self._observe(
            "kerna_dead_letters_evicted",
            "Dead letters pushed out of the full store",
            "counter",
            lambda k: [({}, k.dead_letter_stats().evicted)],
        )

    def _handlers(self) -> None:
        for which, table in ((0, CACHE), (1, BATCH)):
            for field, name, text, kind in table:
                self._observe(name, text, kind, functools.partial(_per_handler, which, field))

    def _targets(self) -> None:
        self._labelled_targets(TARGET, lambda stats: stats)
        self._observe(
            *BREAKER_STATE,
            "gauge",
            lambda k: (
                ({"target": t}, BREAKER_STATES[s.breaker.state])
                for t, s in target_stats(k).items()
                if s.breaker is not None
            ),
        )
        self._labelled_targets(BREAKER, lambda stats: stats.breaker)

    def _labelled_targets(self, table: tuple[Row, ...], part: Callable[[Any], Any]) -> None:
        for field, name, text, kind in table:
            self._observe(name, text, kind, functools.partial(_per_target, part, field))

    def _observe(self, name: str, text: str, kind: str, read: Read) -> None:
        self._reads[name] = read

        def callback(options: CallbackOptions) -> list[Observation]:
            # A collection runs these before it reads the histograms: the timed values
            # still pending are in it.
            self._record()
            return self._read(name, options.timeout_millis / 1000)

        create = (
            self._meter.create_observable_gauge
            if kind == "gauge"
            else self._meter.create_observable_counter
        )
        create(name, callbacks=[callback], description=text)

    def _read(self, name: str, timeout: float) -> list[Observation]:
        """The observations of the instrument ``name``, read on the kernel's loop."""
        kernel = None if self._kernel is None else self._kernel()
        if kernel is None:
            return []  # the kernel is gone: nothing to report
        make = self._observation
        if not kernel.running:  # nothing changes under a stopped kernel
            return [make(value, attributes) for attributes, value in self._reads[name](kernel)]
        loop = kernel.loop
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is loop:
            return [make(value, attributes) for attributes, value in self._reads[name](kernel)]
        return [
            make(value, attributes) for attributes, value in self._snapshot(kernel, timeout)[name]
        ]

    def _snapshot(self, kernel: Kernel, timeout: float) -> dict[str, list[Any]]:
        """Every instrument's values, read in one call on the kernel's loop (the
        kernel's dicts change only there) for a collection in another thread: taken by
        the first callback of a collection, reused by the others (a collection's
        callbacks run within ``_SNAPSHOT_KEPT`` of each other)."""
        now = time.monotonic()
        kept = self._kept
        if kept is not None and now - kept[0] < _SNAPSHOT_KEPT:
            return kept[1]
        reads = self._reads
        done: concurrent.futures.Future[dict[str, list[Any]]] = concurrent.futures.Future()

        def on_loop() -> None:
            try:
                done.set_result({name: list(read(kernel)) for name, read in reads.items()})
            except Exception as exc:
                done.set_exception(exc)

        snapshot: dict[str, list[Any]] = collections.defaultdict(list)  # nothing, if not read
        try:
            kernel.loop.call_soon_threadsafe(on_loop)
            snapshot.update(done.result(min(timeout, _LOOP_WAIT)))
        except RuntimeError:  # the loop closed meanwhile
            pass
        except TimeoutError:
            # The loop does not answer (busy, or blocked waiting for this thread: a
            # MeterProvider.shutdown() on it): this collection reports nothing, and
            # its other callbacks do not wait again.
            pass
        self._kept = (time.monotonic(), snapshot)
        return snapshot

    def _timed(self, type_name: str, kind: str, seconds: float) -> None:
        """A timed message's value (in the worker, between two messages): kept, and
        recorded into its histogram at the next collection, or with the others once
        ``_RECORD_BATCH`` are kept (soon after, from the loop): the SDK's recording, a
        few µs each, stays off the message's own path."""
        pending = self._pending
        pending.append((kind, type_name, seconds))
        if len(pending) >= _RECORD_BATCH and not self._soon:
            self._soon = True
            asyncio.get_running_loop().call_soon(self._record)

    def _record(self) -> None:
        """Record the kept values (on the loop, or in a collection's thread)."""
        self._soon = False
        pending, histograms, known = self._pending, self._histograms, self._attributes
        while True:
            try:
                kind, type_name, seconds = pending.popleft()
            except IndexError:  # (another thread may take the last one first)
                return
            attributes = known.get(type_name)
            if attributes is None:
                attributes = known[type_name] = {"type": type_name}
            histograms[kind].record(seconds, attributes)


def _per_type(field: str, kernel: Kernel) -> Iterable[tuple[dict[str, str], float]]:
    return (({"type": t}, getattr(s, field)) for t, s in kernel.stats().types.items())


def _per_handler(which: int, field: str, kernel: Kernel) -> Iterable[tuple[dict[str, str], float]]:
    rows = handler_stats(kernel)[which]
    return (({"type": t, "handler": h}, getattr(s, field)) for t, h, s in rows)


def _per_target(
    part: Callable[[Any], Any], field: str, kernel: Kernel
) -> Iterable[tuple[dict[str, str], float]]:
    for target, stats in target_stats(kernel).items():
        found = part(stats)
        if found is not None:
            yield {"target": target}, getattr(found, field)
