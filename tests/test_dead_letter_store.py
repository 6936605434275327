"""The dead-letter store: every message is handled, dead-lettered or rejected, by id.

For each way a message dies (an unknown recipient, a poison message whose handler
raises, an ask whose deadline passed while it waited, a full mailbox) the test sends
numbered messages and accounts for every number: ``sent == handled + dead_lettered +
rejected``, the three disjoint, no silent drop. Then the store's bound (oldest evicted,
counted) and replay (a replayed ask is a tell) are checked.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kerna import (
    Agent,
    AskTimeout,
    DeadLetterReason,
    Kernel,
    MailboxFull,
    Message,
    Request,
    UnknownAgent,
    handler,
)

pytestmark = pytest.mark.anyio


class Job(Message):
    n: int


class Work(Request[int]):
    n: int


class Ready(Request[bool]):
    pass


class Worker(Agent):
    """Records every job it handles; raises for the numbers in ``poison``; waits on
    ``gate`` (when set) before handling anything."""

    def __init__(self, seen: list[int], poison: set[int], gate: asyncio.Event | None) -> None:
        self.seen = seen
        self.poison = poison
        self.gate = gate

    async def _handle(self, n: int) -> int:
        if self.gate is not None:
            await self.gate.wait()
        if n in self.poison:
            raise ValueError(f"poison {n}")
        self.seen.append(n)
        return n

    @handler
    async def job(self, msg: Job) -> None:
        await self._handle(msg.n)

    @handler
    async def work(self, msg: Work) -> int:
        return await self._handle(msg.n)

    @handler
    async def ready(self, msg: Ready) -> bool:
        return True


def dead_numbers(kernel: Kernel, reason: str | None = None) -> list[int]:
    return [r.message.n for r in kernel.dead_letters(reason=reason)]


def register(
    kernel: Kernel,
    seen: list[int],
    poison: set[int] | None = None,
    gate: asyncio.Event | None = None,
    **options: Any,
) -> None:
    kernel.register(Worker, factory=lambda: Worker(seen, poison or set(), gate), **options)


def assert_accounted(sent: range, handled: list[int], dead: list[int], rejected: list[int]):
    """Every number once, in exactly one of the three."""
    assert sorted(handled + dead + rejected) == list(sent)
    assert len(set(handled) | set(dead) | set(rejected)) == len(sent)


async def test_poison_messages_are_kept_with_their_error_and_every_job_is_accounted() -> None:
    seen: list[int] = []
    async with Kernel() as kernel:
        register(kernel, seen, poison={3, 7, 11})
        for n in range(20):
            await kernel.ref(Worker, "w").tell(Job(n=n))
        await kernel.wait_idle(5)
        dead = kernel.dead_letters(reason=DeadLetterReason.HANDLER_FAILED)
        assert [r.message.n for r in dead] == [3, 7, 11]
        assert all(r.kind == "tell" and r.target == "Worker/w" for r in dead)
        assert dead[0].error == "ValueError: poison 3"
        assert dead[0].agent_type == "Worker"
        assert_accounted(range(20), seen, dead_numbers(kernel), [])
        assert kernel.stats().types["Worker"].failed == 3


async def test_an_unknown_recipient_is_rejected_locally_and_dead_lettered_on_a_peer() -> None:
    seen: list[int] = []
    async with (
        Kernel(transport="inproc://", stop_grace=0.1) as a,
        Kernel(transport="inproc://", stop_grace=0.1) as b,
    ):
        register(b, seen)
        assert b.address is not None
        rejected = []
        for n in range(10):
            if n % 2:  # here: the sender hears of it
                with pytest.raises(UnknownAgent):
                    await a.ref("Ghost", "g").tell(Job(n=n))
                rejected.append(n)
            elif n % 4:  # on the peer: the tell is accepted, the peer keeps it
                await a.ref("Ghost", "g", node=b.address).tell(Job(n=n))
            else:
                await a.ref(Worker, "w", node=b.address).tell(Job(n=n))
        # the peer handles one node's frames in order: once this ask is answered,
        # every tell before it has been delivered or dead-lettered there
        assert await a.ref(Worker, "w", node=b.address).ask(Ready(), timeout=5)
        await b.wait_idle(5)
        dead = b.dead_letters(reason=DeadLetterReason.UNKNOWN_AGENT)
        assert [r.target for r in dead] == ["Ghost/g"] * 2
        assert dead[0].message_type == Job.__struct_config__.tag
        assert_accounted(range(10), seen, dead_numbers(b), rejected)


async def test_asks_that_expire_in_the_mailbox_are_kept_as_expired() -> None:
    seen: list[int] = []
    gate = asyncio.Event()
    async with Kernel() as kernel:
        register(kernel, seen, gate=gate)
        ref = kernel.ref(Worker, "w")
        await ref.tell(Job(n=0))  # in the mailbox now, its handler held at the gate
        for n in range(1, 6):  # queued behind it: each times out
            with pytest.raises(AskTimeout):
                await ref.ask(Work(n=n), timeout=0.02)
        gate.set()
        await kernel.wait_idle(5)
        expired = kernel.dead_letters(reason=DeadLetterReason.EXPIRED)
        assert [r.message.n for r in expired] == [1, 2, 3, 4, 5]
        assert all(r.kind == "ask" for r in expired)
        assert kernel.stats().types["Worker"].expired == 5
        assert_accounted(range(6), seen, dead_numbers(kernel), [])


async def test_overflow_keeps_what_drop_oldest_pushed_out_and_reject_raises() -> None:
    seen: list[int] = []
    gate = asyncio.Event()
    async with Kernel() as kernel:
        kernel.register(
            Worker,
            factory=lambda: Worker(seen, set(), gate),
            mailbox_size=4,
            overflow="drop_oldest",
        )
        kernel.register(
            Worker,
            name="Strict",
            factory=lambda: Worker(seen, set(), gate),
            mailbox_size=4,
            overflow="reject",
        )
        rejected: list[int] = []
        for n in range(20):
            await kernel.ref(Worker, "w").tell(Job(n=n))
        for n in range(20, 40):
            try:
                await kernel.ref("Strict", "s").tell(Job(n=n))
            except MailboxFull:
                rejected.append(n)
        gate.set()
        await kernel.wait_idle(5)
        dropped = dead_numbers(kernel, DeadLetterReason.DROPPED_OLDEST)
        assert dropped
        assert rejected
        assert kernel.stats().types["Worker"].dropped == len(dropped)
        assert kernel.stats().types["Strict"].rejected == len(rejected)
        assert_accounted(range(40), seen, dead_numbers(kernel), rejected)


async def test_the_store_keeps_the_newest_and_counts_what_it_evicted() -> None:
    seen: list[int] = []
    async with Kernel(dead_letters_kept=3) as kernel:
        register(kernel, seen, poison=set(range(10)))
        for n in range(10):
            await kernel.ref(Worker, "w").tell(Job(n=n))
        await kernel.wait_idle(5)
        assert dead_numbers(kernel) == [7, 8, 9]
        stats = kernel.dead_letter_stats()
        assert (stats.kept, stats.capacity, stats.evicted) == (3, 3, 7)
        assert stats.recorded == {"handler_failed": 10}
        assert [r.message.n for r in kernel.dead_letters(limit=2)] == [8, 9]
        assert kernel.dead_letters(agent_type="Other") == []
        assert len(kernel.dead_letters(message_type=Job)) == 3


def test_a_bad_store_size_or_limit_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="dead_letters_kept"):
        Kernel(dead_letters_kept=-1)
    with pytest.raises(TypeError, match="dead_letters_kept"):
        Kernel(dead_letters_kept="10")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit"):
        Kernel().dead_letters(limit=-1)


async def test_replay_resends_the_selected_records_as_tells_and_removes_them() -> None:
    seen: list[int] = []
    poison = {1, 2}
    gate = asyncio.Event()
    gate.set()
    async with Kernel() as kernel:
        register(kernel, seen, poison=poison, gate=gate)
        ref = kernel.ref(Worker, "w")
        for n in range(4):
            await ref.tell(Job(n=n))
        await kernel.wait_idle(5)
        gate.clear()
        await ref.tell(Job(n=4))  # held at the gate: the ask behind it expires
        with pytest.raises(AskTimeout):
            await ref.ask(Work(n=5), timeout=0.02)
        gate.set()
        await kernel.wait_idle(5)
        assert dead_numbers(kernel) == [1, 2, 5]
        poison.clear()  # the fault is fixed

        only_expired = await kernel.replay_dead_letters(reason=DeadLetterReason.EXPIRED)
        [expired_seq] = only_expired.replayed
        await kernel.wait_idle(5)
        assert seen[-1] == 5  # the expired ask, handled as a tell (nobody waits)
        assert dead_numbers(kernel) == [1, 2]

        rest = await kernel.replay_dead_letters(agent_type=Worker)
        assert len(rest.replayed) == 2
        assert not rest.failed
        assert not rest.skipped
        assert expired_seq not in rest.replayed
        await kernel.wait_idle(5)
        assert sorted(seen) == [0, 1, 2, 3, 4, 5]
        assert kernel.dead_letters() == []


async def test_a_replay_that_fails_again_is_a_new_dead_letter_and_refusals_stay() -> None:
    seen: list[int] = []
    async with Kernel() as kernel:
        register(kernel, seen, poison={1})
        await kernel.ref(Worker, "w").tell(Job(n=1))
        await kernel.wait_idle(5)
        [old] = kernel.dead_letters()
        result = await kernel.replay_dead_letters()
        assert result.replayed == [old.seq]
        await kernel.wait_idle(5)
        [new] = kernel.dead_letters()
        assert new.seq > old.seq
        assert new.message == old.message
    with pytest.raises(Exception, match="stopped"):
        await kernel.replay_dead_letters()
    assert kernel.dead_letters() == [new]  # still inspectable after stop
