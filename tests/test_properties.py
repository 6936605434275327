"""Property tests: under random interleavings with bounded mailboxes, no message is lost
or duplicated and every sender's messages arrive in the order it sent them."""

from __future__ import annotations

import asyncio
from typing import ClassVar

from hypothesis import given, settings
from hypothesis import strategies as st

from kerna import Agent, Kernel, Message, handler


class Numbered(Message):
    sender: int
    seq: int
    work: int  # how many times the handler yields to the loop


class Flush(Message):
    pass


class Sink(Agent):
    seen: ClassVar[dict[str, list[tuple[int, int]]]] = {}

    @handler
    async def on(self, msg: Numbered) -> None:
        for _ in range(msg.work):
            await asyncio.sleep(0)
        Sink.seen.setdefault(self.id.key, []).append((msg.sender, msg.seq))

    @handler
    async def flush(self, msg: Flush) -> None:
        return None


plan = st.lists(  # per sender: a list of (target agent index, handler work, pause) sends
    st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)),
        min_size=1,
        max_size=30,
    ),
    min_size=1,
    max_size=6,
)


async def _run(senders: list[list[tuple[int, int, int]]], capacity: int, use_ask: bool) -> None:
    Sink.seen = {}
    async with Kernel(mailbox_size=capacity, overflow="wait") as kernel:
        kernel.register(Sink)

        async def sender(sid: int, sends: list[tuple[int, int, int]]) -> None:
            for seq, (target, work, pause) in enumerate(sends):
                ref = kernel.ref(Sink, str(target))
                msg = Numbered(sender=sid, seq=seq, work=work)
                if use_ask and seq % 3 == 0:
                    await ref.ask(msg, timeout=10)
                else:
                    await ref.tell(msg)
                for _ in range(pause):
                    await asyncio.sleep(0)

        await asyncio.gather(*(sender(i, s) for i, s in enumerate(senders)))
        for target in range(3):
            await kernel.ref(Sink, str(target)).ask(Flush(), timeout=10)
    expected: dict[str, list[tuple[int, int]]] = {}
    for sid, sends in enumerate(senders):
        for seq, (target, _, _) in enumerate(sends):
            expected.setdefault(str(target), []).append((sid, seq))
    for key, got in Sink.seen.items():
        assert sorted(got) == sorted(expected[key])  # none lost, none duplicated
        for sid in {s for s, _ in got}:
            seqs = [seq for s, seq in got if s == sid]
            assert seqs == sorted(seqs)  # per-sender order
    assert set(Sink.seen) == set(expected)


@settings(max_examples=60, deadline=None)
@given(senders=plan, capacity=st.integers(1, 4), use_ask=st.booleans())
def test_no_loss_no_duplicates_per_sender_order(
    senders: list[list[tuple[int, int, int]]], capacity: int, use_ask: bool
) -> None:
    asyncio.run(asyncio.wait_for(_run(senders, capacity, use_ask), 20))


class Drop(Agent):
    seen: ClassVar[list[int]] = []

    @handler
    async def on(self, msg: Numbered) -> None:
        for _ in range(msg.work):
            await asyncio.sleep(0)
        Drop.seen.append(msg.seq)

    @handler
    async def flush(self, msg: Flush) -> None:
        return None


@settings(max_examples=40, deadline=None)
@given(
    works=st.lists(st.integers(0, 3), min_size=1, max_size=60),
    capacity=st.integers(1, 5),
)
def test_drop_oldest_accounts_for_every_message(works: list[int], capacity: int) -> None:
    async def run() -> None:
        Drop.seen = []
        async with Kernel() as kernel:
            kernel.register(Drop, mailbox_size=capacity, overflow="drop_oldest")
            ref = kernel.ref(Drop, "d")
            for seq, work in enumerate(works):
                await ref.tell(Numbered(sender=0, seq=seq, work=work))
                if work:
                    await asyncio.sleep(0)
            await ref.ask(Flush(), timeout=10)
            stats = kernel.stats().types["Drop"]
            assert Drop.seen == sorted(Drop.seen)  # survivors keep their order
            # the Flush ask is the newest message, never dropped: every Numbered is
            # either handled or counted as dropped
            assert len(Drop.seen) + stats.dropped == len(works)
            assert stats.dead_letters == 0  # a drop is counted once, as dropped

    asyncio.run(asyncio.wait_for(run(), 20))
