"""An activation that fails because the store is unreachable does not stick: its
queued messages fail with ActivationFailed, and the next message, once the store is
back, activates the agent again (a failing on_start still sticks: retrying it would
only loop)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import pytest

from kerna import ActivationFailed, Agent, Kernel, Request, handler
from kerna.state._memory import MemoryBackend

from .faulty import FaultyBackend

pytestmark = pytest.mark.anyio


class Tally(msgspec.Struct, frozen=True):
    n: int = 0


class Add(Request[int]):
    n: int


class Adder(Agent, state=Tally):
    @handler
    async def add(self, msg: Add) -> int:
        await self.save(Tally(self.state.n + msg.n))
        return self.state.n


class Broken(Agent):
    starts = 0

    async def on_start(self) -> None:
        Broken.starts += 1
        raise RuntimeError("on_start is broken")

    @handler
    async def add(self, msg: Add) -> int:
        return msg.n


@pytest.fixture
async def store() -> AsyncIterator[FaultyBackend]:
    backend = FaultyBackend(MemoryBackend())
    try:
        yield backend
    finally:
        await backend.aclose()


async def test_an_activation_failed_on_an_unreachable_store_is_retried_by_the_next_message(
    store: FaultyBackend,
) -> None:
    async with Kernel(state=store, restart_backoff=0.001, stop_grace=0.1) as kernel:
        kernel.register(Adder, max_restarts=1)
        ref = kernel.ref(Adder, "a")
        store.plan("down", "down")  # both tries of the activation's claim
        with pytest.raises(ActivationFailed, match="Unavailable"):
            await ref.ask(Add(n=1), timeout=5)
        # the store is back: the next message activates it again, nothing stuck
        assert await ref.ask(Add(n=2), timeout=5) == 2


async def test_an_on_start_that_keeps_failing_still_sticks() -> None:
    Broken.starts = 0
    async with Kernel(restart_backoff=0.001, stop_grace=0.1) as kernel:
        kernel.register(Broken, max_restarts=1)
        ref = kernel.ref(Broken, "b")
        for _ in range(3):
            with pytest.raises(ActivationFailed, match="broken"):
                await ref.ask(Add(n=1), timeout=5)
        assert Broken.starts == 2  # one activation, tried twice; later asks get its failure
