"""The kernel's metrics, named once for every exporter: a node's Prometheus
``/metrics`` (``kerna.node._metrics``) and OpenTelemetry (``kerna.plugins.Metrics``).

Each table row is (field of the stats struct, metric name, help, kind); the readers
below collect the rows' sources (the ``@cached``/``@batched`` handlers of the
registered types, a ``Resilience``'s targets) without importing ``kerna.plugins``
unless it is installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._kernel import Kernel

__all__ = [
    "BATCH",
    "BREAKER",
    "BREAKER_STATE",
    "BREAKER_STATES",
    "CACHE",
    "PER_TYPE",
    "TARGET",
    "TIMINGS",
    "Row",
    "handler_stats",
    "target_stats",
]

Row = tuple[str, str, str, str]

# TypeStats (``Kernel.stats().types``), label ``type``
PER_TYPE: tuple[Row, ...] = (
    ("active", "kerna_agents_active", "Activations alive now", "gauge"),
    ("queued", "kerna_queue_depth", "Messages waiting in mailboxes now", "gauge"),
    ("handled", "kerna_messages_handled", "Messages whose handler returned", "counter"),
    ("failed", "kerna_messages_failed", "Messages whose handler raised", "counter"),
    (
        "dead_letters",
        "kerna_dead_letters",
        "Accepted messages that never reached a handler",
        "counter",
    ),
    ("rejected", "kerna_messages_rejected", "Sends refused before a mailbox took them", "counter"),
    ("expired", "kerna_messages_expired", "Asks whose asker had given up", "counter"),
    ("dropped", "kerna_messages_dropped", "Messages pushed out by drop_oldest", "counter"),
    ("in_flight", "kerna_in_flight", "Handlers running now", "gauge"),
    (
        "pending",
        "kerna_pending_work",
        "Queued messages plus handlers running now: the autoscaling signal",
        "gauge",
    ),
    ("activations", "kerna_activations", "Activations created", "counter"),
    ("deactivations", "kerna_deactivations", "Activations that left", "counter"),
    ("restarts", "kerna_restarts", "on_start retries", "counter"),
)

# TypeTimings (``Kernel.timings()``, with ``Kernel(timing=N)``): histograms, label ``type``
TIMINGS: tuple[Row, ...] = (
    ("wait", "kerna_mailbox_wait_seconds", "Time from mailbox to handler start", "histogram"),
    ("handling", "kerna_handling_seconds", "Time handlers took", "histogram"),
)

# CacheStats and BatchStats of a handler, labels ``type`` and ``handler``
CACHE: tuple[Row, ...] = (
    ("hits", "kerna_cache_hits", "@cached calls answered from the cache", "counter"),
    ("misses", "kerna_cache_misses", "@cached calls that started a computation", "counter"),
    ("coalesced", "kerna_cache_coalesced", "@cached calls that joined one running", "counter"),
    ("size", "kerna_cache_size", "@cached answers held now", "gauge"),
)
BATCH: tuple[Row, ...] = (
    ("batches", "kerna_batch_batches", "@batched handler calls", "counter"),
    ("items", "kerna_batch_items", "Messages passed to @batched handler calls", "counter"),
    ("largest", "kerna_batch_largest", "The largest batch so far", "gauge"),
    ("failed", "kerna_batch_failed", "Batches whose handler failed", "counter"),
)

# TargetStats of a ``Resilience`` target, label ``target``
TARGET: tuple[Row, ...] = (
    (
        "calls",
        "kerna_resilience_calls",
        "Calls made to the target (each once, whatever its attempts)",
        "counter",
    ),
    ("attempts", "kerna_resilience_attempts", "Attempts made (retries included)", "counter"),
    ("retries", "kerna_retries", "Retries made", "counter"),
    ("fallbacks", "kerna_fallbacks", "Calls answered by the target's fallback", "counter"),
    ("fallback_failures", "kerna_fallback_failures", "Fallbacks that raised", "counter"),
)
# BreakerStats of a target with a breaker, label ``target``; its state is the gauge
# ``kerna_breaker_state`` (``BREAKER_STATES``)
BREAKER: tuple[Row, ...] = (
    ("opened", "kerna_breaker_openings", "Times the breaker opened", "counter"),
    ("rejected", "kerna_breaker_rejected", "Calls failed fast with CircuitOpen", "counter"),
    ("half_opened", "kerna_breaker_half_openings", "Times the breaker went half-open", "counter"),
    ("closed", "kerna_breaker_closings", "Times the breaker closed again", "counter"),
)
BREAKER_STATE = ("kerna_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open")
BREAKER_STATES = {"closed": 0, "half-open": 1, "open": 2}
"""``kerna_breaker_state``'s values."""


def handler_stats(kernel: Kernel) -> tuple[list[tuple[str, str, Any]], list[tuple[str, str, Any]]]:
    """The ``(type name, handler name, stats)`` of every ``@cached`` handler and of
    every ``@batched`` one of the kernel's registered types (none when
    ``kerna.plugins`` does not import)."""
    cached: list[tuple[str, str, Any]] = []
    batched: list[tuple[str, str, Any]] = []
    try:
        from kerna.plugins import batch_stats, cache_stats
    except ImportError:  # the plugins extra is not installed: no such handler exists
        return cached, batched
    for type_name, cls in sorted(kernel.agent_classes().items()):
        for attr in sorted(dir(cls)):
            fn = getattr(cls, attr, None)
            if not callable(fn):
                continue
            for stats_of, found in ((cache_stats, cached), (batch_stats, batched)):
                try:
                    found.append((type_name, attr, stats_of(kernel, fn)))
                except TypeError:  # not a handler of that kind
                    continue
    return cached, batched


def target_stats(kernel: Kernel) -> dict[str, Any]:
    """``kerna.plugins.resilience_stats(kernel)``: the ``TargetStats`` of the kernel's
    ``Resilience`` by target name (none without it, or without ``kerna.plugins``)."""
    try:
        from kerna.plugins import resilience_stats
    except ImportError:  # the plugins extra is not installed: no Resilience exists
        return {}
    return resilience_stats(kernel)
