"""``/metrics``: the kernel's counters in the Prometheus text format.

Read from ``Kernel.stats()`` at scrape time by a custom collector on the node's own
``CollectorRegistry`` (so two nodes in one process never share series). No handling-
latency histogram: the kernel does not time handlers today, and a histogram measured
here (around the admin API's asks only) would misrepresent the agents' latency. The
tcp transport counts frames, socket writes and connections (``Kernel.transport_stats``);
it keeps no byte or error counters, so none are exported. A node in a cluster lists the
live members as it sees them: ``kerna_members`` (how many) and ``kerna_cluster_member``
(one series per member, labelled with its id, address and version).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from kerna import Kernel, __version__

__all__ = ["KernelCollector", "node_registry"]

# (TypeStats field, metric name, help, kind)
_PER_TYPE: tuple[tuple[str, str, str, str], ...] = (
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
_TRANSPORT: dict[str, tuple[str, str, str]] = {
    "frames_written": ("kerna_transport_frames_written", "Frames written", "counter"),
    "writes": ("kerna_transport_writes", "Socket writes of frames", "counter"),
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
        for field, name, text, kind in _PER_TYPE:
            family: Any = (
                GaugeMetricFamily(name, text, labels=["type"])
                if kind == "gauge"
                else CounterMetricFamily(name, text, labels=["type"])
            )
            for type_name, type_stats in sorted(stats.types.items()):
                family.add_metric([type_name], getattr(type_stats, field))
            yield family
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
        for key, value in sorted(self.kernel.transport_stats().items()):
            known = _TRANSPORT.get(key)
            if known is None:
                continue
            name, text, kind = known
            if kind == "gauge":
                yield GaugeMetricFamily(name, text, value=value)
            else:
                yield CounterMetricFamily(name, text, value=value)


def node_registry(collector: KernelCollector) -> CollectorRegistry:
    """A registry of the node's own, holding ``collector`` only."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
