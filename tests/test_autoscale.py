"""Autoscaling signals: per type queue depth, handlers in flight and pending work (in
``Kernel.stats()`` and on a node's ``/metrics``), the ``ScalingPolicy`` and the
``WorkerPool`` that scales a stateless type's local activations from pending work."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kerna import Agent, Kernel, Message, ScalingPolicy, UnknownAgent, WorkerPool, handler
from kerna.node import NodeHttp, load_config

from .test_node_daemon import call

pytestmark = pytest.mark.anyio


class Hold(Message):
    pass


class Held(Agent):
    """Every handler waits for the kernel-wide gate (given by the factory)."""

    def __init__(self, gate: asyncio.Event, started: asyncio.Queue[str]) -> None:
        self.gate = gate
        self.started = started

    @handler
    async def hold(self, msg: Hold) -> None:
        self.started.put_nowait(self.id.key)
        await self.gate.wait()


@pytest.fixture
async def held() -> AsyncIterator[tuple[Kernel, asyncio.Event, asyncio.Queue[str]]]:
    gate = asyncio.Event()
    started: asyncio.Queue[str] = asyncio.Queue()
    async with Kernel(stop_grace=0.5) as kernel:
        kernel.register(Held, factory=lambda: Held(gate, started))
        try:
            yield kernel, gate, started
        finally:
            gate.set()


async def wait_started(started: asyncio.Queue[str], count: int) -> set[str]:
    keys = set()
    async with asyncio.timeout(5):
        for _ in range(count):
            keys.add(await started.get())
    return keys


async def test_stats_count_queued_in_flight_and_pending_work_per_type(
    held: tuple[Kernel, asyncio.Event, asyncio.Queue[str]],
) -> None:
    kernel, gate, started = held
    for key in ("a", "b", "c"):
        await kernel.ref(Held, key).tell(Hold())
    await wait_started(started, 3)
    for _ in range(4):  # behind the held one
        await kernel.ref(Held, "a").tell(Hold())
    stats = kernel.stats().types["Held"]
    assert (stats.in_flight, stats.queued, stats.pending) == (3, 4, 7)
    gate.set()
    await kernel.wait_idle(5)
    stats = kernel.stats().types["Held"]
    assert (stats.in_flight, stats.queued, stats.pending, stats.handled) == (0, 0, 0, 7)


async def test_the_node_exports_queue_depth_in_flight_and_pending_work_gauges(
    held: tuple[Kernel, asyncio.Event, asyncio.Queue[str]],
) -> None:
    kernel, _, started = held
    env = {"KERNA_CLUSTER": "c", "KERNA_NODE_ID": "a", "KERNA_HTTP_LISTEN": "127.0.0.1:0"}
    http = NodeHttp(kernel, load_config(None, env))
    host, port = await http.start()
    try:
        await kernel.ref(Held, "a").tell(Hold())
        await wait_started(started, 1)
        await kernel.ref(Held, "a").tell(Hold())
        lines = set((await call(f"http://{host}:{port}/metrics"))[1].splitlines())
    finally:
        await http.close()
    assert 'kerna_queue_depth{type="Held"} 1.0' in lines
    assert 'kerna_in_flight{type="Held"} 1.0' in lines
    assert 'kerna_pending_work{type="Held"} 2.0' in lines
    assert "# TYPE kerna_pending_work gauge" in lines


def test_the_policy_wants_pending_over_target_workers_within_its_bounds() -> None:
    policy = ScalingPolicy(min_workers=2, max_workers=5, target_pending=10)
    assert [policy.desired(p) for p in (0, 10, 21, 30, 41, 1000, -3)] == [2, 2, 3, 3, 5, 5, 2]


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"min_workers": 0}, "min_workers"),
        ({"max_workers": True}, "max_workers"),
        ({"min_workers": 3, "max_workers": 2}, "max_workers"),
        ({"target_pending": 0}, "target_pending"),
        ({"scale_down_delay": float("nan")}, "scale_down_delay"),
    ],
)
def test_a_bad_policy_is_refused_naming_the_attribute(options: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        ScalingPolicy(**options)


async def test_the_pool_grows_at_once_and_shrinks_after_the_delay(
    held: tuple[Kernel, asyncio.Event, asyncio.Queue[str]],
) -> None:
    kernel, _, _ = held
    policy = ScalingPolicy(min_workers=1, max_workers=4, target_pending=5, scale_down_delay=10)
    pool = WorkerPool(kernel, Held, policy, prefix="w")
    assert pool.keys() == ["w0"]
    assert pool.rescale(pending=12, now=0.0) == 3
    assert pool.rescale(pending=100, now=1.0) == 4
    assert pool.rescale(pending=0, now=2.0) == 4  # below since 2.0
    assert pool.rescale(pending=6, now=11.0) == 4  # wants 2, not for 10 s yet
    assert pool.rescale(pending=30, now=11.5) == 4  # wants all 4 again: the window resets
    assert pool.rescale(pending=0, now=12.0) == 4
    assert pool.rescale(pending=0, now=22.0) == 1
    assert pool.keys() == ["w0"]


class WatchedPool(WorkerPool):
    """Sets ``grew`` once its rescale loop has grown it."""

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        self.grew = asyncio.Event()

    def rescale(self, pending: int | None = None, now: float | None = None) -> int:
        size = super().rescale(pending, now)
        if size > self.policy.min_workers:
            self.grew.set()
        return size


async def test_the_pool_spreads_a_backlog_over_more_activations_once_rescaled(
    held: tuple[Kernel, asyncio.Event, asyncio.Queue[str]],
) -> None:
    kernel, gate, started = held
    policy = ScalingPolicy(min_workers=1, max_workers=3, target_pending=4, scale_down_delay=0)
    pool = WatchedPool(kernel, "Held", policy, interval=0.01)
    for _ in range(8):
        await pool.tell(Hold())  # one worker: all queue on it
    assert await wait_started(started, 1) == {"worker-0"}
    assert kernel.stats().types["Held"].active == 1
    async with pool:  # rescales from the type's pending work: 8 -> 2 workers
        async with asyncio.timeout(5):
            await pool.grew.wait()
    for _ in range(4):
        await pool.tell(Hold())
    assert await wait_started(started, 1) == {"worker-1"}
    assert kernel.stats().types["Held"].active == 2
    gate.set()
    await kernel.wait_idle(5)
    assert kernel.stats().types["Held"].handled == 12
    assert pool.rescale() == 1  # nothing pending, no delay: back to the minimum


async def test_a_pool_of_an_unregistered_type_is_refused(
    held: tuple[Kernel, asyncio.Event, asyncio.Queue[str]],
) -> None:
    kernel, _, _ = held
    with pytest.raises(UnknownAgent, match="Nope"):
        WorkerPool(kernel, "Nope")
    with pytest.raises(ValueError, match="interval"):
        WorkerPool(kernel, Held, interval=0)
