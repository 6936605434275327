"""Kernel.create_task: tasks the kernel owns (what kerna.plugins' shared computations
and batches run in): not the caller's, counted as work, cancelled and awaited at stop."""

from __future__ import annotations

import asyncio

import pytest

from kerna import IdleTimeout, Kernel, KernelStopped

from .conftest import assert_no_stray_tasks

pytestmark = pytest.mark.anyio


async def test_a_kernel_task_outlives_its_caller_and_counts_as_work(kernel: Kernel) -> None:
    gate = asyncio.Event()

    async def work() -> int:
        await gate.wait()
        return 7

    async def caller() -> asyncio.Task[int]:
        return kernel.create_task(work(), name="work")

    task = await asyncio.create_task(caller())  # the caller is gone: the task runs on
    with pytest.raises(IdleTimeout, match="0 agents running; 1 kernel tasks"):
        await kernel.wait_idle(timeout=0.05)
    assert kernel.stats().running == 0  # a kernel task is not an agent
    gate.set()
    await kernel.wait_idle(timeout=5)
    assert task.result() == 7


async def test_a_raising_kernel_task_fails_neither_the_kernel_nor_its_agents(
    kernel: Kernel,
) -> None:
    async def broken() -> None:
        raise ValueError("mine")

    task = kernel.create_task(broken())
    async with asyncio.timeout(5):
        with pytest.raises(ValueError, match="mine"):
            await task
    assert kernel.running
    assert (await asyncio.wait_for(kernel.create_task(asyncio.sleep(0, "ok")), 5)) == "ok"


async def test_stop_cancels_a_kernel_task_after_the_grace_period_and_waits_for_it() -> None:
    before = asyncio.all_tasks()
    kernel = Kernel(stop_grace=0.05)
    await kernel.start()
    cleaned = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.set()

    task = kernel.create_task(forever())
    async with asyncio.timeout(10):
        await kernel.stop()
    assert task.cancelled()
    assert cleaned.is_set()
    assert_no_stray_tasks(before)


async def test_a_kernel_task_is_refused_when_the_kernel_does_not_run() -> None:
    async def never() -> None:
        raise AssertionError("must not run")

    coro = never()
    with pytest.raises(KernelStopped, match="not running"):
        Kernel().create_task(coro)
    assert coro.cr_frame is None  # closed: no "never awaited" warning either
