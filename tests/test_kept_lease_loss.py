"""A kept lease that cannot be refreshed counts as lost before the store can expire it.

``KeptLease`` used to learn of a loss only from a keepalive answered "lease not found";
cut off from its store (every keepalive failing with ``Unavailable``) it believed it
held the lease while the store expired it and a successor took what it held. Now it
gives up at 90% of the TTL after the last successful refresh was sent, and tells its
owner (``on_lost``; the kernel's ``Persistence.on_lease_lost``).

Faults are injected around a real ``memory://`` store (tests/faulty.py); the last test
freezes a real etcd.
"""

from __future__ import annotations

import asyncio

import pytest

from kerna import ActivationFailed, AgentId, Kernel, Unavailable
from kerna._persistence import Persistence, StateSpec
from kerna.state import KeptLease, connect
from kerna.state._locks import LOSS_MARGIN
from kerna.state._memory import MemoryBackend
from kerna.testing import EtcdMember

from .agents import Count, Counter, Inc, Read
from .faulty import FaultyBackend

pytestmark = pytest.mark.anyio


async def test_a_lease_whose_keepalives_fail_is_lost_before_the_store_expires_it(
    faulty: FaultyBackend,
) -> None:
    loop = asyncio.get_running_loop()
    inner = faulty.inner
    assert isinstance(inner, MemoryBackend)
    seen: list[tuple[float, float, float]] = []  # (when, our deadline, the store's deadline)
    ttl = 0.6
    lease = KeptLease(faulty, ttl)

    def lost() -> None:
        store_deadline = inner._store.leases[lease.id].deadline  # monotonic, as the loop's  # noqa: SLF001 - the test inspects the lease internals
        seen.append((loop.time(), lease.deadline, store_deadline))

    lease.on_lost = lost
    await lease.grant()
    try:
        await inner.put("held", b"x", lease=lease.id)
        async with asyncio.timeout(5):
            await faulty.keepalive_ok.wait()  # one refresh went through
        faulty.keepalive_down = True  # from now on, no keepalive reaches the store
        cut_off = loop.time()
        async with asyncio.timeout(5):
            await lease.lost.wait()
        assert len(seen) == 1
        when, deadline, store_deadline = seen[0]
        # the last refresh that went through was sent before the cut-off: the deadline
        # is at most 90% of a TTL after it, and the loss is not declared before it
        assert deadline <= cut_off + (1 - LOSS_MARGIN) * ttl
        assert when >= deadline - 1e-3
        # the holder's deadline comes a margin before the store's can
        assert store_deadline - deadline >= LOSS_MARGIN * ttl - 1e-6
    finally:
        await lease.revoke()
    assert await inner.get("held") is None


async def test_a_lease_the_store_no_longer_knows_is_lost_and_the_owner_told_once(
    faulty: FaultyBackend,
) -> None:
    calls: list[int] = []
    lease = KeptLease(faulty, 0.3, on_lost=lambda: calls.append(lease.id))
    await lease.grant()
    try:
        await faulty.inner.lease_revoke(lease.id)  # behind its back
        async with asyncio.timeout(5):
            await lease.lost.wait()
        lease.mark_lost("again")  # idempotent
        assert calls == [lease.id]
    finally:
        await lease.revoke()


async def test_a_lease_whose_backend_was_closed_is_lost_at_the_next_refresh() -> None:
    backend = await connect("memory://")
    lease = KeptLease(backend, 0.6)
    await lease.grant()
    task = lease._task  # noqa: SLF001 - the test inspects the lease internals
    await backend.aclose()
    async with asyncio.timeout(5):
        await lease.lost.wait()
    assert asyncio.get_running_loop().time() < lease.deadline  # not the local expiry
    assert task is not None
    assert task.done()
    assert task.exception() is None  # ended, not crashed


async def test_a_refresh_that_goes_through_again_keeps_the_lease(faulty: FaultyBackend) -> None:
    loop = asyncio.get_running_loop()
    ttl = 0.9
    async with KeptLease(faulty, ttl) as lease:
        first = lease.deadline
        faulty.keepalive_down = True
        async with asyncio.timeout(5):
            await faulty.keepalive_refused.wait()  # one refresh failed
        faulty.keepalive_down = False
        faulty.keepalive_ok.clear()
        async with asyncio.timeout(5):
            await faulty.keepalive_ok.wait()  # the next one went through
        assert not lease.lost.is_set()
        assert lease.deadline > first
        assert lease.deadline > loop.time()


async def test_the_kernel_learns_of_each_lost_lease_and_claims_anew_under_a_new_one(
    faulty: FaultyBackend,
) -> None:
    async with Kernel(state=faulty, lease_ttl=0.6) as kernel:
        kernel.register(Counter)
        store = kernel._store()  # noqa: SLF001 - the test inspects the lease internals
        losses: list[int] = []
        lost = asyncio.Event()

        def on_lost() -> None:
            losses.append(1)
            lost.set()

        store.on_lease_lost(on_lost)
        await kernel.ref(Counter, "a").ask(Inc(), timeout=5)
        first = store.lease
        assert first
        faulty.keepalive_down = True
        async with asyncio.timeout(5):
            await lost.wait()
        assert losses == [1]
        assert store.lease == 0
        faulty.keepalive_down = False
        # a new activation claims under a new lease ...
        assert await kernel.ref(Counter, "b").ask(Inc(), timeout=5) == 1
        second = store.lease
        assert second not in (0, first)
        # ... whose loss is reported too
        lost.clear()
        faulty.keepalive_down = True
        async with asyncio.timeout(5):
            await lost.wait()
        assert losses == [1, 1]
        faulty.keepalive_down = False


async def test_a_kernel_cut_off_from_its_store_stops_serving_before_another_takes_over() -> None:
    name = "memory://kept-lease-cut-off"
    faulty = FaultyBackend(await connect(name))
    store = await connect(name)
    try:
        async with (
            Kernel(state=faulty, lease_ttl=0.6, max_restarts=0) as old,
            Kernel(state=store, lease_ttl=0.6) as new,
        ):
            old.register(Counter, name="Counter")
            new.register(Counter, name="Counter")
            lost = asyncio.Event()
            old._store().on_lease_lost(lost.set)  # called after the kernel's own  # noqa: SLF001 - the test inspects the lease internals
            assert await old.ref("Counter", "c").ask(Inc(), timeout=5) == 1
            faulty.keepalive_down = True  # old can no longer keep its lease alive
            async with asyncio.timeout(5):
                await lost.wait()
            # old gave its activation up (releasing the claim): new takes over and writes
            assert await new.ref("Counter", "c").ask(Inc(), timeout=5) == 2
            # old does not answer from its stale state (1): new holds the agent
            with pytest.raises(ActivationFailed) as info:
                await old.ref("Counter", "c").ask(Read(), timeout=5)
            assert info.value.type_name == "kerna.OwnedElsewhere"
            faulty.keepalive_down = False
    finally:
        await faulty.aclose()
        await store.aclose()


async def test_a_lease_on_a_frozen_etcd_is_lost_within_its_ttl(etcd_server: EtcdMember) -> None:
    backend = await connect(etcd_server.url, timeout=5.0, probe_timeout=0.3)
    loop = asyncio.get_running_loop()
    try:
        async with KeptLease(backend, 1) as lease:
            etcd_server.pause()
            frozen = loop.time()
            try:
                async with asyncio.timeout(3):  # a keepalive retries for 5 s: not it
                    await lease.lost.wait()
                assert lease.deadline <= frozen + (1 - LOSS_MARGIN) * 1
            finally:
                etcd_server.resume()
    finally:
        etcd_server.ensure_running()
        await backend.aclose()


async def test_claims_without_a_lease_share_one_grant_and_fail_once_one_begun_after_them_fails(
    faulty: FaultyBackend,
) -> None:
    spec = StateSpec(Count, Count, None)
    store = Persistence(faulty, owned=False, prefix="kerna/", lease_ttl=30)
    try:
        await store.activate(AgentId("Counter", "a"), spec)
        (await store.claims.kept_lease()).mark_lost("the test")
        faulty.grant_down = True
        faulty.grant_gate = gate = asyncio.Event()  # the grant hangs on the store
        grants = faulty.grants
        waiting = [
            asyncio.ensure_future(store.activate(AgentId("Counter", f"w{i}"), spec))
            for i in range(5)
        ]
        gate.set()  # the first asks for a lease, the others join its attempt
        results = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 5)
        assert all(isinstance(r, Unavailable) for r in results), results
        assert faulty.grants == grants + 1  # one attempt, shared: none waited on another
        # A later claim starts an attempt of its own (the store may be back) and fails
        # once that one failed: the store is still unreachable.
        gate.clear()
        faulty.grant_asked.clear()
        late = asyncio.ensure_future(store.activate(AgentId("Counter", "late"), spec))
        await asyncio.wait_for(faulty.grant_asked.wait(), 5)
        assert not late.done()  # it waits for the attempt, held on its way
        gate.set()
        with pytest.raises(Unavailable, match="no lease to claim under"):
            await asyncio.wait_for(late, 5)
        assert faulty.grants == grants + 2
        faulty.grant_down = False
        await asyncio.wait_for(store.claims.kept_lease(), 5)  # the store answers again
        claimed = await asyncio.wait_for(store.activate(AgentId("Counter", "late"), spec), 5)
        assert claimed.token
    finally:
        await store.close()


async def test_a_claim_waits_for_a_new_lease_no_longer_than_its_callers_deadline(
    faulty: FaultyBackend,
) -> None:
    spec = StateSpec(Count, Count, None)
    store = Persistence(faulty, owned=False, prefix="kerna/", lease_ttl=30)
    loop = asyncio.get_running_loop()
    try:
        await store.activate(AgentId("Counter", "a"), spec)
        (await store.claims.kept_lease()).mark_lost("the test")
        faulty.grant_gate = gate = asyncio.Event()  # the grant hangs on its way
        deadline = loop.time() + 0.2
        with pytest.raises(Unavailable, match="before the caller's deadline"):
            await asyncio.wait_for(
                store.activate(AgentId("Counter", "b"), spec, deadline=deadline), 5
            )
        assert loop.time() >= deadline
        gate.set()  # the grant goes through: the next claim has its lease
        claimed = await asyncio.wait_for(store.activate(AgentId("Counter", "b"), spec), 5)
        assert claimed.token
    finally:
        await store.close()
