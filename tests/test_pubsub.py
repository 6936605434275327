"""Topics, subscriptions, fan-out and dead letters."""

from __future__ import annotations

import asyncio
from typing import ClassVar

import pytest

from kerna import Agent, DeadLetter, Kernel, Message, UnknownAgent, handler

from .agents import Boom, Echo, Ping, Pong

pytestmark = pytest.mark.anyio


class Uploaded(Message):
    doc: str


class Listener(Agent):
    got: ClassVar[list[tuple[str, object]]] = []

    @handler
    async def on(self, msg: Uploaded) -> None:
        Listener.got.append((self.id.key, msg))

    @handler
    async def flush(self, msg: Ping) -> Pong:
        return Pong(n=msg.n)


class Other(Agent):
    got: ClassVar[list[object]] = []

    @handler
    async def on(self, msg: Uploaded) -> None:
        Other.got.append(msg)

    @handler
    async def flush(self, msg: Ping) -> Pong:
        return Pong(n=msg.n)


class Letters(Agent):
    got: ClassVar[list[DeadLetter]] = []
    arrived: ClassVar[asyncio.Event]

    @handler
    async def on(self, msg: DeadLetter) -> None:
        Letters.got.append(msg)
        Letters.arrived.set()

    @handler
    async def flush(self, msg: Ping) -> Pong:
        return Pong(n=msg.n)


@pytest.fixture(autouse=True)
def _reset() -> None:
    Listener.got, Other.got, Letters.got = [], [], []
    Letters.arrived = asyncio.Event()


async def test_every_subscription_gets_the_same_event(kernel: Kernel) -> None:
    kernel.register(Listener)
    kernel.register(Other)
    kernel.subscribe("docs", Listener, key=lambda m: m.doc[0])
    kernel.subscribe("docs", Other)
    events = [Uploaded(doc=d) for d in ("a1", "b1", "a2")]
    for event in events:
        await kernel.publish("docs", event)
    for key in ("a", "b"):
        await kernel.ref(Listener, key).ask(Ping(n=0))
    await kernel.ref(Other, "default").ask(Ping(n=0))
    assert [m for k, m in Listener.got if k == "a"] == [events[0], events[2]]
    assert [m for k, m in Listener.got if k == "b"] == [events[1]]
    assert all(a is b for a, b in zip(Other.got, events, strict=True))


async def test_publish_without_subscribers_is_a_no_op(kernel: Kernel) -> None:
    await kernel.publish("nobody", Uploaded(doc="x"))
    assert kernel.stats().dead_letters == 0


async def test_unsubscribe(kernel: Kernel) -> None:
    kernel.register(Other)
    sub = kernel.subscribe("docs", Other)
    await kernel.publish("docs", Uploaded(doc="1"))
    kernel.unsubscribe(sub)
    kernel.unsubscribe(sub)  # twice is fine
    await kernel.publish("docs", Uploaded(doc="2"))
    await kernel.ref(Other, "default").ask(Ping(n=0))
    assert [m.doc for m in Other.got] == ["1"]  # type: ignore[attr-defined]


async def test_handler_failure_on_tell_goes_to_dead_letters(kernel: Kernel) -> None:
    kernel.register(Echo)
    kernel.register(Letters)
    kernel.subscribe(Kernel.DEAD_LETTERS, Letters)
    await kernel.ref(Echo, "e").tell(Boom(text="kaputt"))
    await asyncio.wait_for(Letters.arrived.wait(), 5)
    dead = Letters.got[0]
    assert dead.reason == "handler_failed"
    assert dead.target == "Echo/e"
    assert dead.error == "ValueError: kaputt"
    assert isinstance(dead.message, Boom)
    stats = kernel.stats().types["Echo"]
    # counted once, as failed; the DeadLetter record is how it is observed
    assert (stats.failed, stats.dead_letters) == (1, 0)


async def test_bad_subscribers_do_not_stop_the_others(kernel: Kernel) -> None:
    kernel.register(Other)
    kernel.register(Letters)
    kernel.register(Echo)  # has no handler for Uploaded
    kernel.subscribe(Kernel.DEAD_LETTERS, Letters)

    def broken_key(event: object) -> str:
        raise KeyError("no shard")

    kernel.subscribe("docs", Other, key=broken_key)
    with pytest.raises(UnknownAgent, match="'NotRegistered' is registered"):
        kernel.subscribe("docs", "NotRegistered")  # refused at once, with the reason
    kernel.subscribe("docs", Echo)
    kernel.subscribe("docs", Other, key=lambda m: 42)  # type: ignore[arg-type,return-value]
    kernel.subscribe("docs", Other, key=lambda m: "good")
    await kernel.publish("docs", Uploaded(doc="x"))
    await kernel.ref(Other, "good").ask(Ping(n=0))
    await kernel.ref(Echo, "default").ask(Ping(n=0))
    await kernel.ref(Letters, "default").ask(Ping(n=0))
    assert len(Other.got) == 1
    reasons = sorted(d.reason for d in Letters.got)
    assert reasons == [
        "subscription_key_failed",
        "subscription_key_failed",
        "unhandled_message",
    ]
    assert kernel.stats().dead_letters == 3


async def test_reject_mailbox_subscriber_loses_the_event_but_publish_goes_on(
    kernel: Kernel,
) -> None:
    gate = asyncio.Event()

    class Stuck(Agent):
        @handler
        async def on(self, msg: Uploaded) -> None:
            await asyncio.wait_for(gate.wait(), 5)

    kernel.register(Stuck, mailbox_size=1, overflow="reject")
    kernel.register(Other)
    kernel.subscribe("docs", Stuck)
    kernel.subscribe("docs", Other)
    for i in range(3):
        await kernel.publish("docs", Uploaded(doc=str(i)))
        await asyncio.sleep(0)
    await kernel.ref(Other, "default").ask(Ping(n=0))
    assert len(Other.got) == 3
    assert kernel.stats().types["Stuck"].rejected == 1  # refused by the full mailbox
    gate.set()


@pytest.mark.parametrize(
    ("topic", "agent", "key", "text"),
    [
        ("", "Other", None, "topic must be a non-empty str"),
        (5, "Other", None, "topic must be a non-empty str"),
        ("t", 3.5, None, "agent type must be an Agent class or a name"),
        ("t", "Other", "not callable", "key must be a callable"),
    ],
)
async def test_bad_subscriptions(
    kernel: Kernel, topic: object, agent: object, key: object, text: str
) -> None:
    with pytest.raises(TypeError, match=text):
        kernel.subscribe(topic, agent, key=key)  # type: ignore[arg-type]


async def test_publish_non_message(kernel: Kernel) -> None:
    with pytest.raises(TypeError, match="events must be kerna.Message instances, got dict"):
        await kernel.publish("t", {"doc": 1})  # type: ignore[arg-type]
