"""Idle deactivation: per type, by due time, spread over loop callbacks."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from kerna import Agent, AskTimeout, Kernel, Message, handler
from kerna._idle import SLICE

from .agents import Ping, Pong

pytestmark = pytest.mark.anyio


class Quick(Agent):
    """Records when on_stop ran (loop time) per key."""

    stopped: dict[str, float]
    all_stopped: asyncio.Event
    expected = 0

    @handler
    async def ping(self, msg: Ping) -> Pong:
        return Pong(n=msg.n)

    async def on_stop(self) -> None:
        Quick.stopped[self.id.key] = asyncio.get_running_loop().time()
        if len(Quick.stopped) >= Quick.expected:
            Quick.all_stopped.set()


class Plain(Agent):
    @handler
    async def ping(self, msg: Ping) -> Pong:
        return Pong(n=msg.n)


@pytest.fixture(autouse=True)
def _reset() -> None:
    Quick.stopped, Quick.all_stopped, Quick.expected = {}, asyncio.Event(), 0


async def test_idle_timeouts_apply_per_type_and_never_early() -> None:
    async with Kernel() as kernel:
        kernel.register(Quick, idle_timeout=0.2)
        kernel.register(Plain, name="Lasting", idle_timeout=300)
        for i in range(2000):
            await kernel.ref("Lasting", str(i)).tell(Ping(n=i))
        Quick.expected = 3
        loop = asyncio.get_running_loop()
        last = {}
        for key in ("a", "b", "c"):
            await kernel.ref(Quick, key).ask(Ping(n=0))
            last[key] = loop.time()
        async with asyncio.timeout(5):
            await Quick.all_stopped.wait()
        for key, stopped in Quick.stopped.items():
            assert stopped - last[key] >= 0.2  # never before its idle timeout
        stats = kernel.stats().types
        assert stats["Quick"].active == 0
        assert stats["Lasting"].active == 2000  # another type's timeout is its own


async def test_an_agent_kept_busy_is_collected_only_once_idle() -> None:
    async with Kernel() as kernel:
        kernel.register(Quick, idle_timeout=0.2)
        Quick.expected = 1
        ref = kernel.ref(Quick, "busy")
        loop = asyncio.get_running_loop()
        end = loop.time() + 0.6  # three idle timeouts of activity
        while True:
            await ref.ask(Ping(n=0))
            last = loop.time()
            if last >= end:
                break
            await asyncio.sleep(0.05)  # pacing the traffic, not waiting for a result
        assert Quick.stopped == {}  # busy throughout: never collected
        async with asyncio.timeout(5):
            await Quick.all_stopped.wait()
        assert Quick.stopped["busy"] - last >= 0.2


async def test_agents_falling_due_together_are_collected_over_several_callbacks() -> None:
    async with Kernel() as kernel:
        kernel.register(Plain, idle_timeout=1.0)  # activating them all takes far less
        n = 5000
        loop = asyncio.get_running_loop()
        first = loop.time()  # none of them is due before first + 1.0
        for i in range(n):
            await kernel.ref(Plain, str(i)).tell(Ping(n=i))
        await kernel.ref(Plain, "0").ask(Ping(n=0))
        seen: list[int] = []
        gone = asyncio.Event()

        def sample() -> None:  # runs between any two other callbacks of the loop
            active = kernel.stats().types["Plain"].active
            seen.append(active)
            if active == 0:
                gone.set()
            else:
                loop.call_soon(sample)

        loop.call_at(first + 0.9, sample)
        async with asyncio.timeout(5):
            await gone.wait()
        assert seen[0] > 2 * SLICE  # most were still to be collected when sampling began
        drops = [before - after for before, after in itertools.pairwise(seen)]
        assert max(drops) <= SLICE, max(drops)  # never more than a slice per callback


class Late(Message):
    pass


class Asker(Agent):
    outcome: asyncio.Future[str]

    @handler
    async def late(self, msg: Late) -> None:
        await asyncio.sleep(0.05)  # outlives the deadline of the message it handles
        try:
            await self.ref(Plain, "never").ask(Ping(n=0))
        except Exception as exc:
            Asker.outcome.set_result(type(exc).__name__)


async def test_an_ask_refused_by_its_own_checks_leaves_no_activation_behind() -> None:
    Asker.outcome = asyncio.get_running_loop().create_future()
    async with Kernel() as kernel:
        kernel.register(Asker)
        kernel.register(Plain, idle_timeout=0.1)
        with pytest.raises(AskTimeout):
            await kernel.ref(Asker, "a").ask(Late(), timeout=0.01)
        assert await asyncio.wait_for(Asker.outcome, 5) == "AskTimeout"
        # no activation that no worker would ever bucket for the idle collector
        assert kernel.stats().types["Plain"].activations == 0
