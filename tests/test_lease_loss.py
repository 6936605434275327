"""A kernel that lost its lease stops serving the stateful agents it held.

Its claims went with the lease, so another kernel may have taken an agent over and
written it: answering from the old ``self.state`` would be a zombie read. Activations
under a lost lease fail their askers with ``Fenced`` and leave; the next message
re-activates the agent with a fresh claim (which fails while another kernel holds it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest

from kerna import ActivationFailed, Fenced, Kernel, Message, handler
from kerna.state import StateBackend, connect

from . import agents
from .agents import Inc, Read
from .conftest import assert_no_stray_tasks

pytestmark = pytest.mark.anyio

URL = "memory://lease-loss"
CLAIM = "kerna/act/Counter/c"


class Hold(Message):
    pass


class Counter(agents.Counter):
    """The shared counter, with a handler held on a gate and an on_stop to observe."""

    gate: asyncio.Event
    entered: asyncio.Event
    stopped: asyncio.Event
    stops: list[int]

    @handler
    async def hold(self, msg: Hold) -> int:
        Counter.entered.set()
        await Counter.gate.wait()
        return self.state.n

    async def on_stop(self) -> None:
        Counter.stops.append(self.state.n)
        Counter.stopped.set()


@pytest.fixture(autouse=True)
def _reset() -> None:
    Counter.gate, Counter.entered, Counter.stopped = (
        asyncio.Event(),
        asyncio.Event(),
        asyncio.Event(),
    )
    Counter.stops = []


@pytest.fixture
async def store() -> AsyncIterator[StateBackend]:
    backend = await connect(URL)
    try:
        yield backend
    finally:
        for kv in (await backend.range("kerna/")).kvs:
            await backend.delete(kv.key)
        await backend.aclose()


async def _stopped() -> None:
    async with asyncio.timeout(5):
        await Counter.stopped.wait()


async def _lose_lease(store: StateBackend) -> None:
    """Revoke the lease holding the claim, as an expiry during a partition would."""
    claim = await store.get(CLAIM)
    assert claim is not None
    await store.lease_revoke(claim.lease)


async def test_a_kernel_that_lost_its_lease_does_not_answer_from_stale_state(
    store: StateBackend,
) -> None:
    async with (
        Kernel(state=URL, lease_ttl=0.6, max_restarts=0) as old,
        Kernel(state=URL, lease_ttl=0.6) as new,
    ):
        old.register(Counter)
        new.register(Counter)
        assert await old.ref(Counter, "c").ask(Inc(), timeout=5) == 1
        await _lose_lease(store)
        assert await new.ref(Counter, "c").ask(Inc(), timeout=5) == 2  # took it over
        await _stopped()  # within the lease's detection time, the old activation left
        assert old.stats().types["Counter"].active == 0
        assert Counter.stops == [1]  # on_stop ran once, on the old activation
        with pytest.raises(ActivationFailed) as info:
            await old.ref(Counter, "c").ask(Read(), timeout=5)  # today: answers 1
        assert info.value.type_name == "kerna.OwnedElsewhere"
        assert await new.ref(Counter, "c").ask(Read(), timeout=5) == 2


async def test_messages_held_by_an_activation_under_a_lost_lease_fail_with_fenced(
    store: StateBackend,
) -> None:
    async with Kernel(state=URL, lease_ttl=0.6) as kernel:
        kernel.register(Counter)
        ref = kernel.ref(Counter, "c")
        assert await ref.ask(Inc(), timeout=5) == 1
        held = asyncio.ensure_future(ref.ask(Hold(), timeout=30))
        async with asyncio.timeout(5):
            await Counter.entered.wait()
        queued = [asyncio.ensure_future(ref.ask(Read(), timeout=30)) for _ in range(3)]
        await _lose_lease(store)
        for pending in (held, *queued):
            with pytest.raises(Fenced, match="lost its lease"):
                await asyncio.wait_for(pending, 5)
        stats = kernel.stats().types["Counter"]
        assert stats.dead_letters == 3  # the queued asks: accepted, never handled
        assert not Counter.stopped.is_set()  # on_stop waits for the running handler
        Counter.gate.set()  # the running handler ends (its reply is late), then on_stop
        await _stopped()
        assert kernel.stats().types["Counter"].late_replies == 1
        # the next message re-activates with a fresh claim (nobody else holds it)
        assert await ref.ask(Inc(), timeout=5) == 2
        claim = await store.get(CLAIM)
        assert claim is not None


class HoldThenInc(Message):
    pass


class Saver(agents.Counter):
    """Holds a handler on a gate, then writes: the write comes after the lease loss."""

    @handler
    async def hold_then_inc(self, msg: HoldThenInc) -> int:
        Counter.entered.set()
        await Counter.gate.wait()
        await self.save(agents.Count(self.state.n + 1))
        return int(self.state.n)

    async def on_stop(self) -> None:
        Counter.stopped.set()


async def test_a_handler_running_when_its_lease_is_lost_cannot_write(
    store: StateBackend,
) -> None:
    async with Kernel(state=URL, lease_ttl=0.6) as kernel:
        kernel.register(Saver, name="Counter")
        ref = kernel.ref("Counter", "c")
        assert await ref.ask(Inc(), timeout=5) == 1
        held = asyncio.ensure_future(ref.ask(HoldThenInc(), timeout=30))
        async with asyncio.timeout(5):
            await Counter.entered.wait()
        await _lose_lease(store)  # deletes the claim with the lease
        with pytest.raises(Fenced):
            await asyncio.wait_for(held, 5)  # the asker is told: not handled
        assert await store.get(CLAIM) is None
        Counter.gate.set()  # now the handler writes: it must be fenced, not applied
        await _stopped()
        stats = kernel.stats().types["Counter"]
        assert (stats.failed, stats.late_replies) == (1, 1)  # its save raised Fenced
        state = await store.get("kerna/state/Counter/c")
        assert state is not None
        assert msgspec.msgpack.decode(state.value, type=agents.Count).n == 1


class SlowStop(agents.Counter):
    """An on_stop that waits on the gate (cancellable)."""

    async def on_stop(self) -> None:
        Counter.entered.set()
        await Counter.gate.wait()


async def test_stop_cancels_the_on_stop_of_an_activation_fenced_while_idle(
    store: StateBackend,
) -> None:
    before = asyncio.all_tasks()
    kernel = Kernel(state=URL, lease_ttl=0.6, cancel_grace=0.2)
    await kernel.start()
    kernel.register(SlowStop, name="Counter")
    assert await kernel.ref("Counter", "c").ask(Inc(), timeout=5) == 1
    await _lose_lease(store)
    async with asyncio.timeout(5):
        await Counter.entered.wait()  # the fenced activation runs its on_stop
    async with asyncio.timeout(5):
        await kernel.stop(grace=0)
    assert_no_stray_tasks(before)
