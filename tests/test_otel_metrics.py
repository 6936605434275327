"""``kerna.plugins.Metrics``: the kernel's metrics through an OpenTelemetry
``MeterProvider`` (the SDK's ``InMemoryMetricReader``): the names ``/metrics`` uses,
read from the kernel's own counters at collection time."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from kerna import Agent, Kernel, Request, UsageError, handler
from kerna._timing import BOUNDS
from kerna.plugins import Metrics

from .test_breaker_metrics import Down, Lookup, resilience
from .test_node_metrics import Crash, Embed, Embedder, Model, Square

pytestmark = pytest.mark.anyio


class Ping(Request[int]):
    n: int


class Echo(Agent):
    @handler
    async def ping(self, msg: Ping) -> int:
        return msg.n


Points = dict[str, dict[frozenset[tuple[str, Any]], Any]]


def points(reader: InMemoryMetricReader) -> Points:
    """Each metric's data points by their attributes: a number, or for a histogram
    its (count, bucket counts)."""
    data = reader.get_metrics_data()
    assert data is not None
    found: Points = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                by_attributes = found.setdefault(metric.name, {})
                for point in metric.data.data_points:
                    key = frozenset((point.attributes or {}).items())
                    value = getattr(point, "value", None)
                    if value is None:
                        value = (point.count, tuple(point.bucket_counts))
                    by_attributes[key] = value
    return found


def at(found: Points, name: str, **attributes: str) -> Any:
    return found[name][frozenset(attributes.items())]


@pytest.fixture
async def metered() -> AsyncIterator[tuple[Kernel, InMemoryMetricReader]]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        async with Kernel(timing=1, middleware=[Metrics(provider), resilience()]) as kernel:
            for cls in (Echo, Model, Embedder, Down):
                kernel.register(cls)
            yield kernel, reader
    finally:
        provider.shutdown()


async def traffic(kernel: Kernel) -> None:
    for n in range(3):
        assert await kernel.ref(Echo, "e").ask(Ping(n=n)) == n
    model = kernel.ref(Model, "m")
    assert [await model.ask(Square(n=3)) for _ in range(3)] == [9, 9, 9]
    await model.tell(Crash())
    embedder = kernel.ref(Embedder, "b")
    assert await asyncio.gather(*(embedder.ask(Embed(n=n)) for n in range(5))) == list(range(5))
    down = kernel.ref(Down, "d")
    assert [await down.ask(Lookup()), await down.ask(Lookup())] == ["stale", "stale"]
    await kernel.wait_idle(5)


async def test_the_readers_data_has_the_kernels_metrics_after_some_traffic(
    metered: tuple[Kernel, InMemoryMetricReader],
) -> None:
    kernel, reader = metered
    await traffic(kernel)
    found = points(reader)
    assert at(found, "kerna_messages_handled", type="Echo") == 3
    assert at(found, "kerna_messages_failed", type="Model") == 1
    assert at(found, "kerna_activations", type="Echo") == 1
    assert at(found, "kerna_deactivations", type="Echo") == 0
    assert at(found, "kerna_queue_depth", type="Echo") == 0
    assert at(found, "kerna_pending_work", type="Echo") == 0
    assert at(found, "kerna_agents_active", type="Echo") == 1
    count, buckets = at(found, "kerna_handling_seconds", type="Echo")
    assert (count, sum(buckets)) == (3, 3)
    assert len(buckets) == len(BOUNDS) + 1  # the kernel's bounds, as /metrics has them
    assert at(found, "kerna_mailbox_wait_seconds", type="Echo")[0] == 3
    assert at(found, "kerna_dead_letters_recorded", reason="handler_failed") == 1
    assert at(found, "kerna_cache_hits", type="Model", handler="square") == 2
    assert at(found, "kerna_cache_misses", type="Model", handler="square") == 1
    assert at(found, "kerna_cache_coalesced", type="Model", handler="square") == 0
    assert at(found, "kerna_batch_items", type="Embedder", handler="embed") == 5
    batches = at(found, "kerna_batch_batches", type="Embedder", handler="embed")
    assert 1 <= batches <= 5
    assert at(found, "kerna_breaker_state", target="Down") == 2  # open
    assert at(found, "kerna_breaker_state", target="search") == 0  # closed
    assert at(found, "kerna_breaker_openings", target="Down") == 1
    assert at(found, "kerna_retries", target="Down") == 1
    assert at(found, "kerna_fallbacks", target="Down") == 2
    # a later collection reads the counters anew
    assert await kernel.ref(Echo, "e").ask(Ping(n=9)) == 9
    later = points(reader)
    assert at(later, "kerna_messages_handled", type="Echo") == 4
    assert at(later, "kerna_handling_seconds", type="Echo")[0] == 4


async def test_a_collection_from_another_thread_reads_the_kernel_on_its_loop(
    metered: tuple[Kernel, InMemoryMetricReader],
) -> None:
    kernel, reader = metered
    await traffic(kernel)
    # a PeriodicExportingMetricReader collects in a thread of its own
    async with asyncio.timeout(10):
        found = await asyncio.to_thread(points, reader)
    assert at(found, "kerna_messages_handled", type="Echo") == 3
    assert at(found, "kerna_breaker_state", target="Down") == 2


async def test_a_collection_has_every_message_timed_before_it_in_its_histograms(
    metered: tuple[Kernel, InMemoryMetricReader],
) -> None:
    kernel, reader = metered
    echo = kernel.ref(Echo, "e")
    for n in range(300):  # more than a batch of kept values (timing=1: every one timed)
        assert await echo.ask(Ping(n=n)) == n
    await kernel.wait_idle(5)
    async with asyncio.timeout(10):  # a collection in a thread of its own
        found = await asyncio.to_thread(points, reader)
    assert at(found, "kerna_handling_seconds", type="Echo")[0] == 300
    assert at(found, "kerna_mailbox_wait_seconds", type="Echo")[0] == 300
    assert await echo.ask(Ping(n=1)) == 1
    assert at(points(reader), "kerna_handling_seconds", type="Echo")[0] == 301


async def test_without_timing_there_are_no_histograms_and_a_metrics_serves_one_kernel() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics = Metrics(provider)
    try:
        async with Kernel(middleware=[metrics]) as kernel:
            kernel.register(Echo)
            assert await kernel.ref(Echo, "e").ask(Ping(n=1)) == 1
            found = points(reader)
            assert at(found, "kerna_messages_handled", type="Echo") == 1
            assert not found.get("kerna_handling_seconds")
            assert "kerna_breaker_state" not in found  # no Resilience
            with pytest.raises(UsageError, match="one kernel"):
                Kernel(middleware=[metrics])
    finally:
        provider.shutdown()


def test_a_watcher_with_only_attach_joins_a_kernels_chain_but_not_a_types() -> None:
    from kerna.plugins import middleware

    with pytest.raises(TypeError, match="is not a middleware"):
        middleware(Metrics(MeterProvider()))
    with pytest.raises(TypeError, match="or an 'attach\\(kernel\\)' method"):
        Kernel(middleware=[object()])
    Kernel(middleware=[Metrics(MeterProvider())])  # accepted


async def test_a_collection_in_a_thread_the_loop_waits_for_gives_up_instead_of_deadlocking(
    metered: tuple[Kernel, InMemoryMetricReader], monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel, reader = metered
    await traffic(kernel)
    monkeypatch.setattr("kerna.plugins._otel_metrics._LOOP_WAIT", 0.2)
    found: Points = {}
    collector = threading.Thread(target=lambda: found.update(points(reader)))
    started = time.monotonic()
    collector.start()
    collector.join(10)  # the loop blocks on the thread, as a shutdown() made on it would
    assert not collector.is_alive()
    assert time.monotonic() - started < 3  # one wait of 0.2 s, not one per instrument
    assert not found.get("kerna_messages_handled")  # that collection gave up, once
    monkeypatch.setattr("kerna.plugins._otel_metrics._SNAPSHOT_KEPT", 0.0)
    async with asyncio.timeout(10):
        again = await asyncio.to_thread(points, reader)  # the loop answers again
    assert at(again, "kerna_messages_handled", type="Echo") == 3


GLOBAL_PROVIDERS = """
import asyncio
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from kerna import Agent, Kernel, Message, handler

reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
spans = InMemorySpanExporter()
tracing = TracerProvider()
tracing.add_span_processor(SimpleSpanProcessor(spans))
trace.set_tracer_provider(tracing)

class Hello(Message):
    n: int

class Greeter(Agent):
    @handler
    async def hello(self, msg: Hello) -> int:
        return msg.n

async def main() -> None:
    async with Kernel(plugins=["otel-tracing", "otel-metrics"]) as kernel:
        kernel.register(Greeter)
        assert await kernel.ref(Greeter, "g").ask(Hello(n=7)) == 7
        names = {m.name for r in reader.get_metrics_data().resource_metrics
                 for s in r.scope_metrics for m in s.metrics}
        print(sorted(n for n in names if n.startswith("kerna_messages_handled")))
        tracing.force_flush()  # Tracing hands its spans over in batches
        print(len(spans.get_finished_spans()) >= 2)

asyncio.run(main())
"""


def test_a_node_turns_otel_on_by_name_through_the_global_providers(tmp_path: Path) -> None:
    """``[node] plugins = ["otel-tracing", "otel-metrics"]`` (here ``Kernel(plugins=...)``,
    what the daemon passes): the built-in entry points build ``Tracing()`` and
    ``Metrics()`` on the process's global providers."""
    script = tmp_path / "global_otel.py"
    script.write_text(GLOBAL_PROVIDERS)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["['kerna_messages_handled']", "True"], done.stdout
