"""``/metrics``: the kernel's counters in the Prometheus text format.

Read from ``Kernel.stats()`` at scrape time by a custom collector on the node's own
``CollectorRegistry`` (so two nodes in one process never share series). Per agent type:
counters, the autoscaling gauges (``kerna_queue_depth``, ``kerna_in_flight``,
``kerna_pending_work``) and, from ``Kernel.timings()`` (a node's kernel times its
handlers), the histograms ``kerna_mailbox_wait_seconds`` and
``kerna_handling_seconds``. Dead letters by reason come from the dead-letter store's
counters. ``@cached`` and ``@batched`` handlers of the registered types (found through
``kerna.plugins.cache_stats``/``batch_stats``) export their hits, misses, coalesced
calls, batches and items, labelled ``type`` and ``handler``; the plugins count batch
items and the largest batch, not a distribution, so the mean batch size is
``rate(items) / rate(batches)``. The targets of a ``kerna.plugins.Resilience`` in the
kernel's chain (``resilience_stats``), labelled ``target``: ``kerna_breaker_state`` (0
closed, 1 half-open, 2 open), ``kerna_breaker_openings`` (and rejected, half-openings,
closings), ``kerna_retries``, ``kerna_fallbacks`` (and fallback failures, calls,
attempts). The tcp transport counts frames and bytes both ways,
socket writes, errors and connections (``Kernel.transport_stats``); the counters a
transport keeps are exported. A node in a cluster lists the live members as it sees them:
``kerna_members`` (how many) and ``kerna_cluster_member`` (one series per member,
labelled with its id, address and version).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.registry import Collector

from kerna import Histogram, Kernel, __version__
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

__all__ = ["KernelCollector", "node_registry", "resilience_of"]

_TRANSPORT: dict[str, tuple[str, str, str]] = {
    "frames_written": ("kerna_transport_frames_written", "Frames written", "counter"),
    "bytes_written": ("kerna_transport_bytes_written", "Frame bytes written", "counter"),
    "frames_read": ("kerna_transport_frames_read", "Frames read", "counter"),
    "bytes_read": ("kerna_transport_bytes_read", "Frame bytes read", "counter"),
    "errors": (
        "kerna_transport_errors",
        "Connections refused or closed for cause, frame batches dropped",
        "counter",
    ),
    "writes": ("kerna_transport_writes", "Socket writes of frames", "counter"),
    "superseded": (
        "kerna_transport_frames_superseded",
        "Frames dropped: left on a connection its peer had replaced by a newer one",
        "counter",
    ),
    "connections": ("kerna_transport_connections", "Open connections", "gauge"),
}


class KernelCollector(Collector):
    """Yields the kernel's metrics at each scrape.

    Args:
        kernel: the node's kernel.
        node_id: the ``node`` label of ``kerna_node_info``.
        cluster: its ``cluster`` label.
        loop_lag: returns the latest measured event-loop lag in seconds.
    """

    def __init__(
        self, kernel: Kernel, node_id: str, cluster: str, loop_lag: Callable[[], float]
    ) -> None:
        self.kernel = kernel
        self.node_id = node_id
        self.cluster = cluster
        self.loop_lag = loop_lag

    def collect(self) -> Iterator[Any]:
        info = InfoMetricFamily("kerna_node", "This node")
        info.add_metric([], {"node": self.node_id, "cluster": self.cluster, "version": __version__})
        yield info
        stats = self.kernel.stats()
        yield from _labelled(PER_TYPE, ["type"], [([t], s) for t, s in sorted(stats.types.items())])
        yield CounterMetricFamily(
            "kerna_dead_letters_all",
            "Dead letters of the node, unknown agent types included",
            value=stats.dead_letters,
        )
        yield GaugeMetricFamily(
            "kerna_handlers_running", "Handlers running now", value=stats.running
        )
        lag = GaugeMetricFamily(
            "kerna_loop_lag_seconds", "Largest event-loop lag over the last 5 s"
        )
        lag.add_metric([], self.loop_lag())
        yield lag
        yield from self._timings()
        yield from self._dead_letters()
        yield from plugin_metrics(self.kernel)
        yield from resilience_metrics(self.kernel)
        if self.kernel.cluster is not None:
            members = self.kernel.members()
            yield GaugeMetricFamily("kerna_members", "Live cluster members", value=len(members))
            listed = GaugeMetricFamily(
                "kerna_cluster_member",
                "1 per live member of the cluster, as this node's watch sees it",
                labels=["node", "address", "version"],
            )
            for member in members:
                listed.add_metric([member.id, member.address, member.version], 1)
            yield listed
        delivery = self.kernel.delivery_stats()
        yield CounterMetricFamily(
            "kerna_delivery_gaps",
            "Deliveries other nodes sent here that never arrived (lost connections)",
            value=delivery.gaps,
        )
        yield CounterMetricFamily(
            "kerna_delivery_out_of_order",
            "Deliveries that came out of their sender's order (always 0 unless a bug)",
            value=delivery.out_of_order,
        )
        yield CounterMetricFamily(
            "kerna_handoff_unordered",
            "Messages held after a hand-off and sent on without the order guarantee",
            value=delivery.unordered,
        )
        for key, value in sorted(self.kernel.transport_stats().items()):
            known = _TRANSPORT.get(key)
            if known is None:
                continue
            name, text, kind = known
            if kind == "gauge":
                yield GaugeMetricFamily(name, text, value=value)
            else:
                yield CounterMetricFamily(name, text, value=value)

    def _timings(self) -> Iterator[Any]:
        timings = sorted(self.kernel.timings().items())
        for field, name, text, _ in TIMINGS:
            family = HistogramMetricFamily(name, text, labels=["type"])
            for type_name, timing in timings:
                histogram: Histogram = getattr(timing, field)
                family.add_metric(
                    [type_name], buckets=cumulative(histogram), sum_value=histogram.sum
                )
            yield family

    def _dead_letters(self) -> Iterator[Any]:
        stats = self.kernel.dead_letter_stats()
        by_reason = CounterMetricFamily(
            "kerna_dead_letters_recorded",
            "Dead letters recorded in the node's store, by reason (expired asks included)",
            labels=["reason"],
        )
        for reason, count in sorted(stats.recorded.items()):
            by_reason.add_metric([reason], count)
        yield by_reason
        yield GaugeMetricFamily(
            "kerna_dead_letters_kept", "Dead letters kept for replay now", value=stats.kept
        )
        yield CounterMetricFamily(
            "kerna_dead_letters_evicted",
            "Dead letters pushed out of the full store",
            value=stats.evicted,
        )


def cumulative(histogram: Histogram) -> list[tuple[str, float]]:
    """Prometheus' cumulative ``le`` buckets of a ``Histogram`` snapshot."""
    buckets: list[tuple[str, float]] = []
    seen = 0
    for bound, count in zip(histogram.bounds, histogram.counts, strict=False):
        seen += count
        buckets.append((repr(bound), seen))
    buckets.append(("+Inf", histogram.count))
    return buckets


def _labelled(
    rows: tuple[Row, ...], labels: list[str], values: list[tuple[list[str], Any]]
) -> Iterator[Any]:
    """One family per row: each ``(label values, stats)`` of ``values`` a sample."""
    for field, name, text, kind in rows:
        family: Any = (
            GaugeMetricFamily(name, text, labels=labels)
            if kind == "gauge"
            else CounterMetricFamily(name, text, labels=labels)
        )
        for label_values, stats in values:
            family.add_metric(label_values, getattr(stats, field))
        yield family


def plugin_metrics(kernel: Kernel) -> Iterator[Any]:
    """The counters of every ``@cached`` and ``@batched`` handler of the kernel's
    registered types (none when ``kerna.plugins`` does not import)."""
    for rows, table in zip(handler_stats(kernel), (CACHE, BATCH), strict=True):
        if rows:
            yield from _labelled(table, ["type", "handler"], [([t, h], s) for t, h, s in rows])


def resilience_of(kernel: Kernel) -> dict[str, Any]:
    """``/admin/status``'s ``resilience``: each target's ``TargetStats`` as JSON
    values, by name (``kerna top`` shows them)."""
    return {name: msgspec.to_builtins(stats) for name, stats in target_stats(kernel).items()}


def resilience_metrics(kernel: Kernel) -> Iterator[Any]:
    """The targets of the kernel's ``kerna.plugins.Resilience`` (none without one),
    labelled ``target``: ``kerna_breaker_state`` (0 closed, 1 half-open, 2 open), the
    breaker's openings and rejections, and the calls, attempts, retries and fallbacks."""
    targets = target_stats(kernel)
    if not targets:
        return
    yield from _labelled(TARGET, ["target"], [([t], s) for t, s in targets.items()])
    breakers = [([t], s.breaker) for t, s in targets.items() if s.breaker is not None]
    if not breakers:
        return
    state = GaugeMetricFamily(*BREAKER_STATE, labels=["target"])
    for label_values, breaker in breakers:
        state.add_metric(label_values, BREAKER_STATES[breaker.state])
    yield state
    yield from _labelled(BREAKER, ["target"], breakers)


def node_registry(collector: KernelCollector) -> CollectorRegistry:
    """A registry of the node's own, holding ``collector`` only."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
