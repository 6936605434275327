"""A node's /metrics: mailbox wait and handling histograms (``Kernel(timing=1)``,
exact on a virtual clock), activations and deactivations, dead letters by reason, and
the ``@cached``/``@batched`` counters of the registered types."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from kerna import Agent, Kernel, Message, Request, UsageError, handler
from kerna.node import NodeHttp, load_config
from kerna.plugins import batched, cached
from kerna.testing import VirtualClock

from .test_node_daemon import call

pytestmark = pytest.mark.anyio


class Work(Request[int]):
    seconds: float


class Slow(Agent):
    @handler
    async def work(self, msg: Work) -> int:
        await asyncio.sleep(msg.seconds)
        return 1


class Crash(Message):
    pass


class Square(Request[int]):
    n: int


class Model(Agent):
    @handler
    @cached(ttl=60, maxsize=10)
    async def square(self, msg: Square) -> int:
        return msg.n * msg.n

    @handler
    async def crash(self, msg: Crash) -> None:
        raise RuntimeError("crash")


class Embed(Request[int]):
    n: int


class Embedder(Agent):
    @batched(max_size=8, max_wait=0.01)
    async def embed(self, batch: list[Embed]) -> list[int]:
        return [m.n for m in batch]


def test_wait_and_handling_times_land_in_their_buckets_on_a_virtual_clock() -> None:
    async def scenario() -> dict:
        async with Kernel(timing=1) as kernel:
            kernel.register(Slow)
            ref = kernel.ref(Slow, "s")
            # three asks queued at once on one agent: they wait 0, 0.03 and 0.06 s
            replies = await asyncio.gather(*(ref.ask(Work(seconds=0.03)) for _ in range(3)))
            assert replies == [1, 1, 1]
            return kernel.timings()

    timings = VirtualClock().run(scenario)
    slow = timings["Slow"]
    bounds = slow.wait.bounds
    assert slow.wait.count == slow.handling.count == 3
    assert slow.handling.counts[bounds.index(0.05)] == 3  # 0.03 s each
    assert slow.handling.sum == pytest.approx(0.09)
    assert slow.wait.counts[bounds.index(0.0001)] == 1  # the first did not wait
    assert slow.wait.counts[bounds.index(0.05)] == 1
    assert slow.wait.counts[bounds.index(0.1)] == 1
    assert slow.wait.sum == pytest.approx(0.09)
    assert slow.handling.quantile(0.5) == 0.05
    assert slow.wait.quantile(0.99) == 0.1


async def test_timing_one_message_in_n_times_the_messages_whose_id_it_divides() -> None:
    async with Kernel(timing=4) as kernel:
        kernel.register(Slow)
        for _ in range(40):
            assert await kernel.ref(Slow, "s").ask(Work(seconds=0)) == 1
        [(name, timing)] = kernel.timings().items()
        assert name == "Slow"
        assert timing.wait.count == timing.handling.count == 10  # ids count up: 1 in 4
        assert kernel.stats().types["Slow"].handled == 40


async def test_a_kernel_without_timing_keeps_no_histograms() -> None:
    async with Kernel() as kernel:
        kernel.register(Slow)
        assert await kernel.ref(Slow, "s").ask(Work(seconds=0)) == 1
        assert kernel.timings() == {}
    with pytest.raises(TypeError, match="timing"):
        Kernel(timing=True)
    with pytest.raises(ValueError, match="timing"):
        Kernel(timing=-1)


@pytest.fixture
async def scraped() -> AsyncIterator[tuple[Kernel, str]]:
    env = {"KERNA_CLUSTER": "c", "KERNA_NODE_ID": "a", "KERNA_HTTP_LISTEN": "127.0.0.1:0"}
    async with Kernel(timing=1, idle_timeout=60) as kernel:
        for cls in (Slow, Model, Embedder):
            kernel.register(cls)
        http = NodeHttp(kernel, load_config(None, env))
        host, port = await http.start()
        try:
            yield kernel, f"http://{host}:{port}/metrics"
        finally:
            await http.close()


async def test_metrics_export_histograms_lifecycle_dead_letters_and_plugin_counters(
    scraped: tuple[Kernel, str],
) -> None:
    kernel, url = scraped
    for _ in range(3):
        assert await kernel.ref(Slow, "s").ask(Work(seconds=0)) == 1
    model = kernel.ref(Model, "m")
    assert [await model.ask(Square(n=3)) for _ in range(3)] == [9, 9, 9]
    await model.tell(Crash())
    assert await asyncio.gather(*(kernel.ref(Embedder, "e").ask(Embed(n=n)) for n in range(5)))
    await kernel.wait_idle(5)
    await kernel.ref(Slow, "s").deactivate()
    lines = set((await call(url))[1].splitlines())
    assert "# TYPE kerna_handling_seconds histogram" in lines
    assert "# TYPE kerna_mailbox_wait_seconds histogram" in lines
    assert 'kerna_handling_seconds_count{type="Slow"} 3.0' in lines
    assert 'kerna_handling_seconds_bucket{le="+Inf",type="Slow"} 3.0' in lines
    assert 'kerna_mailbox_wait_seconds_count{type="Slow"} 3.0' in lines
    assert 'kerna_activations_total{type="Slow"} 1.0' in lines
    assert 'kerna_deactivations_total{type="Slow"} 1.0' in lines
    assert 'kerna_agents_active{type="Slow"} 0.0' in lines
    assert 'kerna_dead_letters_recorded_total{reason="handler_failed"} 1.0' in lines
    assert "kerna_dead_letters_kept 1.0" in lines
    assert 'kerna_cache_hits_total{handler="square",type="Model"} 2.0' in lines
    assert 'kerna_cache_misses_total{handler="square",type="Model"} 1.0' in lines
    assert 'kerna_cache_coalesced_total{handler="square",type="Model"} 0.0' in lines
    assert 'kerna_batch_items_total{handler="embed",type="Embedder"} 5.0' in lines
    assert any(line.startswith('kerna_batch_batches_total{handler="embed"') for line in lines)


async def test_timing_watchers_see_each_timed_observation_and_a_raising_one_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[tuple[str, str, float]] = []
    broken: list[str] = []

    def breaks(type_name: str, kind: str, seconds: float) -> None:
        broken.append(kind)
        raise RuntimeError("watcher bug")

    async with Kernel(timing=2) as kernel:
        kernel.watch_timings(lambda *observed: seen.append(observed))  # before register
        kernel.register(Slow)
        kernel.watch_timings(breaks)  # after
        for _ in range(10):
            assert await kernel.ref(Slow, "s").ask(Work(seconds=0)) == 1
        timing = kernel.timings()["Slow"]
    assert timing.wait.count == timing.handling.count == 5  # one in 2
    assert [kind for _, kind, _ in seen] == ["wait", "handling"] * 5
    assert {name for name, _, _ in seen} == {"Slow"}
    assert all(seconds >= 0 for _, _, seconds in seen)
    assert broken == ["wait", "handling"]  # each of its two watches dropped at its first raise
    assert "timing watcher" in caplog.text


async def test_watch_timings_needs_timing_and_a_callable() -> None:
    async with Kernel() as kernel:
        with pytest.raises(UsageError, match="Kernel\\(timing=N\\)"):
            kernel.watch_timings(lambda *observed: None)
    async with Kernel(timing=1) as kernel:
        with pytest.raises(TypeError, match="callable"):
            kernel.watch_timings("histogram")  # type: ignore[arg-type]


def test_a_blocking_kernel_watches_timings_on_its_loop_thread() -> None:
    from kerna import BlockingKernel

    seen: list[str] = []
    with BlockingKernel(timing=1) as kernel:
        kernel.watch_timings(lambda type_name, kind, seconds: seen.append(kind))
        kernel.register(Slow)
        assert kernel.ref(Slow, "s").ask(Work(seconds=0)) == 1
    assert seen == ["wait", "handling"]
