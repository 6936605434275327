"""Bounded mailboxes under each overflow policy."""

from __future__ import annotations

import asyncio

import pytest

from kerna import Agent, DeadLetter, Kernel, MailboxFull, Message, handler

from .agents import Ping, Pong

pytestmark = pytest.mark.anyio


class Gate(Message):
    pass


class Item(Message):
    n: int


class Gated(Agent):
    """Blocks on the first Gate until the test opens ``gate``, then records Items."""

    gate: asyncio.Event
    got: list[int]
    expect: int = 0
    done: asyncio.Event

    @handler
    async def wait(self, msg: Gate) -> None:
        await asyncio.wait_for(Gated.gate.wait(), 5)

    @handler
    async def item(self, msg: Item) -> int:
        Gated.got.append(msg.n)
        if len(Gated.got) >= Gated.expect:
            Gated.done.set()
        return msg.n


class DeadLetters(Agent):
    got: list[DeadLetter] = []

    @handler
    async def on(self, msg: DeadLetter) -> None:
        DeadLetters.got.append(msg)

    @handler
    async def flush(self, msg: Ping) -> Pong:
        return Pong(n=msg.n)


@pytest.fixture(autouse=True)
def _reset() -> None:
    Gated.gate = asyncio.Event()
    Gated.done = asyncio.Event()
    Gated.got = []
    DeadLetters.got = []


async def _blocked(kernel: Kernel, policy: str, size: int = 3) -> None:
    kernel.register(Gated, mailbox_size=size, overflow=policy)
    ref = kernel.ref(Gated, "g")
    await ref.tell(Gate())
    await asyncio.sleep(0)  # the worker takes the Gate and blocks in it
    for i in range(size):
        await ref.tell(Item(n=i))


async def test_reject_raises_mailbox_full(kernel: Kernel) -> None:
    await _blocked(kernel, "reject")
    ref = kernel.ref(Gated, "g")
    with pytest.raises(
        MailboxFull, match=r"mailbox of Gated/g is full \(3 messages, overflow=reject"
    ):
        await ref.tell(Item(n=99))
    with pytest.raises(MailboxFull):
        await ref.ask(Item(n=100))
    Gated.expect = 3
    Gated.gate.set()
    await asyncio.wait_for(Gated.done.wait(), 5)  # drained: there is room again
    assert await ref.ask(Item(n=3)) == 3
    assert Gated.got == [0, 1, 2, 3]  # nothing accepted was lost
    assert kernel.stats().types["Gated"].rejected == 2


async def test_drop_oldest_drops_and_counts(kernel: Kernel) -> None:
    kernel.register(DeadLetters)
    kernel.subscribe(Kernel.DEAD_LETTERS, DeadLetters)
    await _blocked(kernel, "drop_oldest")
    ref = kernel.ref(Gated, "g")
    await ref.tell(Item(n=3))  # drops 0
    await ref.tell(Item(n=4))  # drops 1
    asked = asyncio.ensure_future(ref.ask(Item(n=5)))
    await asyncio.sleep(0)  # the ask is queued, dropping 2
    await ref.tell(Item(n=6))  # drops 3
    await ref.tell(Item(n=7))  # drops 4
    await ref.tell(Item(n=8))  # drops the ask: its asker learns at once
    with pytest.raises(MailboxFull):
        await asyncio.wait_for(asked, 5)
    Gated.expect = 3
    Gated.gate.set()
    await asyncio.wait_for(Gated.done.wait(), 5)
    assert await ref.ask(Item(n=9)) == 9
    assert Gated.got == [6, 7, 8, 9]
    stats = kernel.stats().types["Gated"]
    assert stats.dropped == 6
    await kernel.ref(DeadLetters, "default").ask(Ping(n=0))
    reasons = {d.reason for d in DeadLetters.got}
    assert reasons == {"dropped_oldest"}
    assert sorted(d.message.n for d in DeadLetters.got) == [0, 1, 2, 3, 4]


async def test_wait_applies_backpressure(kernel: Kernel) -> None:
    await _blocked(kernel, "wait")
    ref = kernel.ref(Gated, "g")
    sender = asyncio.ensure_future(ref.tell(Item(n=3)))
    await asyncio.sleep(0.01)
    assert not sender.done()  # parked: the mailbox is full
    assert kernel.stats().types["Gated"].queued == 4
    Gated.gate.set()
    await asyncio.wait_for(sender, 5)
    assert await ref.ask(Item(n=4)) == 4
    assert Gated.got == [0, 1, 2, 3, 4]


async def test_waiting_sender_can_be_cancelled(kernel: Kernel) -> None:
    await _blocked(kernel, "wait")
    ref = kernel.ref(Gated, "g")
    sender = asyncio.ensure_future(ref.tell(Item(n=3)))
    await asyncio.sleep(0)
    sender.cancel()
    Gated.gate.set()
    assert await ref.ask(Item(n=4)) == 4
    assert Gated.got == [0, 1, 2, 4]  # the cancelled send was not delivered


async def test_waiting_ask_times_out(kernel: Kernel) -> None:
    await _blocked(kernel, "wait")
    ref = kernel.ref(Gated, "g")
    with pytest.raises(TimeoutError):
        await ref.ask(Item(n=3), timeout=0.02)
    Gated.gate.set()
    assert await ref.ask(Item(n=4)) == 4
    assert Gated.got == [0, 1, 2, 4]


class SelfTeller(Agent):
    @handler
    async def on(self, msg: Ping) -> str:
        me = self.ref(SelfTeller, self.id.key)
        try:
            for i in range(10):
                await me.tell(Pong(n=i))
        except MailboxFull as exc:
            return str(exc)
        return "no error"

    @handler
    async def pong(self, msg: Pong) -> None:
        return None


async def test_telling_yourself_into_a_full_wait_mailbox_raises(kernel: Kernel) -> None:
    kernel.register(SelfTeller, mailbox_size=2, overflow="wait")
    text = await kernel.ref(SelfTeller, "s").ask(Ping(n=0))
    assert "told itself into its own full mailbox" in text
