"""Locks, leader election and kept leases, on every backend."""

from __future__ import annotations

import asyncio

import pytest

from kerna.state import Election, KeptLease, Lock, StateBackend

pytestmark = pytest.mark.anyio


async def test_lock_is_mutually_exclusive(
    backend: StateBackend, request: pytest.FixtureRequest
) -> None:
    name = f"excl-{request.node.name}"
    inside = 0
    peak = 0
    order: list[int] = []

    async def worker(i: int) -> None:
        nonlocal inside, peak
        async with Lock(backend, name, ttl=5) as lock:
            assert lock.token > 0
            inside += 1
            peak = max(peak, inside)
            order.append(i)
            await asyncio.sleep(0.01)
            inside -= 1

    await asyncio.wait_for(asyncio.gather(*(worker(i) for i in range(4))), 30)
    assert peak == 1
    assert sorted(order) == [0, 1, 2, 3]


async def test_lock_tokens_increase_and_timeout(
    backend: StateBackend, request: pytest.FixtureRequest
) -> None:
    name = f"tok-{request.node.name}"
    first = Lock(backend, name, ttl=5)
    await first.acquire(timeout=5)
    second = Lock(backend, name, ttl=5)
    assert not await second.try_acquire()
    with pytest.raises(TimeoutError):
        await second.acquire(timeout=0.05)
    token = first.token
    await first.release()
    await second.acquire(timeout=5)
    assert second.token > token
    await second.release()
    await second.release()  # idempotent


async def test_a_crashed_holders_lock_frees_when_its_lease_expires(
    backend: StateBackend, request: pytest.FixtureRequest
) -> None:
    name = f"crash-{request.node.name}"
    lease = await backend.lease_grant(1)  # a holder that will never refresh
    from kerna.state._layout import escape

    await backend.create(f"kerna/lock/{escape(name)}", b"dead", lease=lease)
    waiter = Lock(backend, name, ttl=5)
    await waiter.acquire(timeout=15)
    assert waiter.token > 0
    await waiter.release()


async def test_election(backend: StateBackend, request: pytest.FixtureRequest) -> None:
    name = f"elect-{request.node.name}"
    a = Election(backend, name, "node-a", ttl=5)
    b = Election(backend, name, "node-b", ttl=5)
    seen: list[str | None] = []
    changed = asyncio.Event()

    async def observe() -> None:
        async for leader in a.observe():
            seen.append(leader)
            if leader == "node-b":
                changed.set()
                return

    observer = asyncio.ensure_future(observe())
    await a.campaign(timeout=5)
    assert a.is_leader
    assert await b.leader() == "node-a"
    campaign_b = asyncio.ensure_future(b.campaign(timeout=10))
    await asyncio.sleep(0.05)
    assert not campaign_b.done()
    await a.resign()
    await campaign_b
    assert b.is_leader
    assert b.token > 0
    await asyncio.wait_for(changed.wait(), 10)
    await asyncio.wait_for(observer, 5)
    assert seen[-1] == "node-b"
    assert "node-a" in seen
    await b.resign()
    assert await a.leader() is None


async def test_kept_lease_refreshes(backend: StateBackend) -> None:
    async with KeptLease(backend, 1) as lease:
        await backend.put("kept/key", b"x", lease=lease.id)
        await asyncio.sleep(1.5)  # longer than the TTL: only the refreshes keep it
        assert await backend.get("kept/key") is not None
        assert not lease.lost.is_set()
    assert await backend.get("kept/key") is None  # revoked on exit
    with pytest.raises(ValueError, match="ttl"):
        KeptLease(backend, 0)
