"""``self.context``: what a handler knows about the message it handles, and how that
context flows down the conversation (correlation, causation, headers, deadline)."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import pytest

from kerna import (
    Agent,
    AgentId,
    DeadLetter,
    Kernel,
    Message,
    MessageContext,
    RemoteError,
    UsageError,
    handler,
)

pytestmark = pytest.mark.anyio


class Probe(Message):
    """Ask: reply with the handler's context; tell/event: record it."""


class Relay(Message):
    """Ask the next agent (``to``) a Probe and return (own context, its reply)."""

    to: str
    timeout: float = 5.0
    headers: dict[str, str] | None = None


class TellOn(Message):
    """Tell the next agent (``to``) a Probe (carrying ``headers``)."""

    to: str
    headers: dict[str, str] | None = None


class PublishOn(Message):
    topic: str
    headers: dict[str, str] | None = None


class Snapshot(Message):
    """A handler's context, copied out into plain values."""

    sender: AgentId | None
    message_id: int
    correlation_id: int
    causation_id: int
    kind: str
    topic: str | None
    headers: dict[str, str]
    time_left: float | None


def snapshot(ctx: MessageContext) -> Snapshot:
    return Snapshot(
        sender=ctx.sender,
        message_id=ctx.message_id,
        correlation_id=ctx.correlation_id,
        causation_id=ctx.causation_id,
        kind=ctx.kind,
        topic=ctx.topic,
        headers=dict(ctx.headers),
        time_left=ctx.time_left(),
    )


class Node(Agent):
    """Reports its context (ask), records it (tell, event), and passes messages on."""

    seen: ClassVar[list[tuple[str, Snapshot]]] = []
    arrived: ClassVar[asyncio.Event | None] = None

    def _record(self) -> None:
        Node.seen.append((self.id.key, snapshot(self.context)))
        if Node.arrived is not None:
            Node.arrived.set()

    @handler
    async def probe(self, msg: Probe) -> Snapshot | None:
        if self.context.kind == "ask":
            return snapshot(self.context)
        self._record()
        return None

    @handler
    async def relay(self, msg: Relay) -> tuple[Snapshot, Snapshot]:
        mine = snapshot(self.context)
        theirs = await self.ref(Node, msg.to).ask(Probe(), timeout=msg.timeout, headers=msg.headers)
        return mine, theirs

    @handler
    async def tell_on(self, msg: TellOn) -> None:
        self._record()
        await self.ref(Node, msg.to).tell(Probe(), headers=msg.headers)

    @handler
    async def publish_on(self, msg: PublishOn) -> None:
        self._record()
        await self.publish(msg.topic, Probe(), headers=msg.headers)


@pytest.fixture
def nodes(kernel: Kernel) -> Kernel:
    Node.seen = []
    Node.arrived = None
    kernel.register(Node)
    return kernel


async def wait_for_records(count: int) -> list[tuple[str, Snapshot]]:
    """Wait (bounded) until the Node agents recorded ``count`` contexts."""
    async with asyncio.timeout(5):
        while len(Node.seen) < count:
            Node.arrived = asyncio.Event()
            await Node.arrived.wait()
    return Node.seen


# -- what a handler sees ---------------------------------------------------------------


async def test_an_ask_from_outside_has_no_sender_and_starts_a_conversation(nodes: Kernel) -> None:
    ctx = await nodes.ref(Node, "a").ask(Probe(), timeout=2.0)
    assert ctx.sender is None
    assert ctx.kind == "ask"
    assert ctx.topic is None
    assert ctx.message_id > 0
    # a root message: the conversation is named after it, and nothing caused it
    assert ctx.correlation_id == ctx.message_id
    assert ctx.causation_id == 0
    assert ctx.headers == {}
    assert ctx.time_left is not None
    assert 0 < ctx.time_left <= 2.0


async def test_every_message_gets_its_own_id(nodes: Kernel) -> None:
    ref = nodes.ref(Node, "a")
    contexts = [await ref.ask(Probe()) for _ in range(5)]
    ids = {c.message_id for c in contexts}
    assert len(ids) == 5
    assert {c.correlation_id for c in contexts} == ids  # five separate conversations


async def test_a_tell_from_outside_has_kind_tell_and_no_deadline(nodes: Kernel) -> None:
    await nodes.ref(Node, "a").tell(Probe())
    [(key, ctx)] = await wait_for_records(1)
    assert key == "a"
    assert ctx.kind == "tell"
    assert ctx.sender is None
    assert ctx.topic is None
    assert ctx.time_left is None  # nobody waits for a tell
    assert ctx.correlation_id == ctx.message_id


async def test_an_event_names_its_topic(nodes: Kernel) -> None:
    nodes.subscribe("news", Node, key=lambda _: "sub")
    await nodes.publish("news", Probe())
    [(key, ctx)] = await wait_for_records(1)
    assert key == "sub"
    assert ctx.kind == "event"
    assert ctx.topic == "news"
    assert ctx.sender is None
    assert ctx.time_left is None


async def test_the_sender_is_the_agent_that_sent_the_message(nodes: Kernel) -> None:
    outer, inner = await nodes.ref(Node, "a").ask(Relay(to="b"))
    assert outer.sender is None
    assert inner.sender == AgentId("Node", "a")
    assert inner.kind == "ask"


# -- context flows down the conversation ------------------------------------------------


async def test_an_ask_from_a_handler_continues_the_conversation(nodes: Kernel) -> None:
    outer, inner = await nodes.ref(Node, "a").ask(Relay(to="b"))
    assert inner.correlation_id == outer.correlation_id == outer.message_id
    assert inner.causation_id == outer.message_id
    assert inner.message_id not in (outer.message_id, 0)


async def test_a_chain_of_tells_keeps_the_correlation_and_links_each_cause(nodes: Kernel) -> None:
    await nodes.ref(Node, "a").tell(TellOn(to="b"))
    (_, first), (key, second) = await wait_for_records(2)
    assert key == "b"
    assert second.sender == AgentId("Node", "a")
    assert second.correlation_id == first.correlation_id == first.message_id
    assert second.causation_id == first.message_id


async def test_an_event_published_from_a_handler_continues_the_conversation(nodes: Kernel) -> None:
    nodes.subscribe("news", Node, key=lambda _: "sub")
    await nodes.ref(Node, "pub").tell(PublishOn(topic="news"))
    (_, published_by), (key, event) = await wait_for_records(2)
    assert key == "sub"
    assert event.kind == "event"
    assert event.topic == "news"
    assert event.sender == AgentId("Node", "pub")
    assert event.correlation_id == published_by.correlation_id
    assert event.causation_id == published_by.message_id


async def test_headers_reach_the_handler_and_flow_down_the_conversation(nodes: Kernel) -> None:
    outer, inner = await nodes.ref(Node, "a").ask(
        Relay(to="b"), headers={"trace": "t-1", "tenant": "acme"}
    )
    assert outer.headers == {"trace": "t-1", "tenant": "acme"}
    assert inner.headers == {"trace": "t-1", "tenant": "acme"}


async def test_headers_given_on_a_send_override_the_inherited_ones_key_by_key(
    nodes: Kernel,
) -> None:
    _, inner = await nodes.ref(Node, "a").ask(
        Relay(to="b", headers={"tenant": "other", "span": "s-2"}),
        headers={"trace": "t-1", "tenant": "acme"},
    )
    assert inner.headers == {"trace": "t-1", "tenant": "other", "span": "s-2"}


async def test_tell_and_publish_take_headers(nodes: Kernel) -> None:
    nodes.subscribe("news", Node, key=lambda _: "sub")
    await nodes.ref(Node, "a").tell(Probe(), headers={"h": "tell"})
    await wait_for_records(1)
    await nodes.publish("news", Probe(), headers={"h": "event"})
    (_, told), (_, event) = await wait_for_records(2)
    assert told.headers == {"h": "tell"}
    assert event.headers == {"h": "event"}
    # and from inside a handler, merged with what the handled message carried
    Node.seen = []
    await nodes.ref(Node, "p").tell(PublishOn(topic="news", headers={"x": "1"}), headers={"h": "t"})
    (_, _), (_, event) = await wait_for_records(2)
    assert event.headers == {"h": "t", "x": "1"}


async def test_headers_are_copied_when_sent(nodes: Kernel) -> None:
    headers = {"trace": "t-1"}
    ref = nodes.ref(Node, "a")
    await ref.tell(Probe(), headers=headers)
    headers["trace"] = "changed after the send"
    [(_, ctx)] = await wait_for_records(1)
    assert ctx.headers == {"trace": "t-1"}


@pytest.mark.parametrize("bad", [{"n": 1}, {1: "x"}, [("a", "b")], "a=b"])
async def test_headers_that_are_not_a_str_to_str_mapping_are_a_type_error(
    nodes: Kernel, bad: Any
) -> None:
    ref = nodes.ref(Node, "a")
    with pytest.raises(TypeError, match="headers must"):
        await ref.tell(Probe(), headers=bad)
    with pytest.raises(TypeError, match="headers must"):
        await ref.ask(Probe(), headers=bad)
    with pytest.raises(TypeError, match="headers must"):
        await nodes.publish("news", Probe(), headers=bad)
    assert (await ref.ask(Probe())).headers == {}  # nothing was sent, the kernel is fine


async def test_a_nested_ask_inherits_the_sooner_deadline(nodes: Kernel) -> None:
    # asked with 1 s, the handler asks on with 30 s: the inner ask still ends with the outer
    outer, inner = await nodes.ref(Node, "a").ask(Relay(to="b", timeout=30.0), timeout=1.0)
    assert outer.time_left is not None
    assert inner.time_left is not None
    assert 0 < inner.time_left <= outer.time_left <= 1.0
    # asked with 30 s, the handler asks on with 0.5 s: the inner one's own is sooner
    outer, inner = await nodes.ref(Node, "a").ask(Relay(to="b", timeout=0.5), timeout=30.0)
    assert inner.time_left is not None
    assert 0 < inner.time_left <= 0.5
    assert outer.time_left is not None
    assert outer.time_left > 1.0


async def test_dead_letters_carry_the_conversation_of_the_dead_message(kernel: Kernel) -> None:
    got: list[tuple[DeadLetter, Snapshot]] = []
    arrived = asyncio.Event()

    class Failing(Agent):
        @handler
        async def probe(self, msg: Probe) -> None:
            raise ValueError("nope")

    class Watcher(Agent):
        @handler
        async def dead(self, msg: DeadLetter) -> None:
            got.append((msg, snapshot(self.context)))
            arrived.set()

    kernel.register(Failing)
    kernel.register(Watcher)
    kernel.subscribe(Kernel.DEAD_LETTERS, Watcher)
    await kernel.ref(Failing, "f").tell(Probe(), headers={"trace": "t-9"})
    async with asyncio.timeout(5):
        await arrived.wait()
    [(dead, ctx)] = got
    assert dead.message == Probe()
    assert dead.correlation_id == dead.message_id  # a root tell
    # the dead letter event continues the dead message's conversation
    assert ctx.kind == "event"
    assert ctx.topic == Kernel.DEAD_LETTERS
    assert ctx.correlation_id == dead.correlation_id
    assert ctx.causation_id == dead.message_id
    assert ctx.headers == {"trace": "t-9"}


# -- where it is not available, and read-only -------------------------------------------


class WhereAmI(Message):
    pass


async def test_context_outside_a_handler_is_a_usage_error(kernel: Kernel) -> None:
    errors: dict[str, BaseException] = {}
    stopped = asyncio.Event()
    left_running: list[asyncio.Task[None]] = []

    class Hooks(Agent):
        async def on_start(self) -> None:
            try:
                self.context  # noqa: B018 - reading it is the test
            except UsageError as exc:
                errors["on_start"] = exc

        async def on_stop(self) -> None:
            try:
                self.context  # noqa: B018
            except UsageError as exc:
                errors["on_stop"] = exc
            stopped.set()

        @handler
        async def where(self, msg: WhereAmI) -> str:
            async def later() -> None:
                try:
                    self.context  # noqa: B018
                except UsageError as exc:
                    errors["after the handler returned"] = exc

            left_running.append(asyncio.get_running_loop().create_task(later()))
            return self.context.kind

    kernel.register(Hooks)
    ref = kernel.ref(Hooks, "h")
    assert await ref.ask(WhereAmI()) == "ask"
    async with asyncio.timeout(5):
        await asyncio.gather(*left_running)
        await ref.deactivate()
        await stopped.wait()
    assert set(errors) == {"on_start", "on_stop", "after the handler returned"}
    for exc in errors.values():
        assert isinstance(exc, UsageError)
        assert "Hooks/h" in str(exc)
        assert "handler" in str(exc)


async def test_context_is_read_only(kernel: Kernel) -> None:
    class Mutator(Agent):
        @handler
        async def probe(self, msg: Probe) -> list[str]:
            ctx = self.context
            failed = []
            for name, value in (
                ("sender", None),
                ("message_id", 1),
                ("correlation_id", 1),
                ("causation_id", 1),
                ("kind", "tell"),
                ("topic", "t"),
                ("headers", {}),
                ("new_attribute", 1),
            ):
                try:
                    setattr(ctx, name, value)
                except AttributeError:
                    failed.append(name)
            try:
                ctx.headers["x"] = "y"  # type: ignore[index]
            except TypeError:
                failed.append("headers[...]")
            return failed

    kernel.register(Mutator)
    failed = await kernel.ref(Mutator, "m").ask(Probe(), headers={"a": "b"})
    assert failed == [
        "sender",
        "message_id",
        "correlation_id",
        "causation_id",
        "kind",
        "topic",
        "headers",
        "new_attribute",
        "headers[...]",
    ]


async def test_context_is_a_public_type_and_shows_its_ids(nodes: Kernel) -> None:
    class Show(Agent):
        @handler
        async def probe(self, msg: Probe) -> str:
            assert isinstance(self.context, MessageContext)
            return repr(self.context)

    nodes.register(Show)
    text = await nodes.ref(Show, "s").ask(Probe())
    assert text.startswith("<MessageContext ask ")
    assert "outside" in text  # no sender


async def test_a_handler_error_reading_context_wrongly_reaches_the_asker(kernel: Kernel) -> None:
    class Wrong(Agent):
        @handler
        async def probe(self, msg: Probe) -> None:
            self.context.message_id = 5  # type: ignore[misc]

    kernel.register(Wrong)
    with pytest.raises(RemoteError) as info:
        await kernel.ref(Wrong, "w").ask(Probe())
    assert info.value.type_name == "AttributeError"


def test_the_context_is_a_read_only_view_of_its_message() -> None:
    from kerna._envelope import ASK, Envelope  # (a view of one message, made here)

    loop = asyncio.new_event_loop()
    try:
        target, sender = AgentId("T", "k"), AgentId("S", "s")
        env = Envelope(7, ASK, target, Probe(), sender, 3, 5, 12.5, (), None, {"h": "v"})
        ctx = MessageContext(env, loop)
        assert (ctx.message_id, ctx.correlation_id, ctx.causation_id) == (7, 3, 5)
        assert (ctx.sender, ctx.target, ctx.message, ctx.kind) == (sender, target, Probe(), "ask")
        assert (ctx.deadline, ctx.topic, dict(ctx.headers), ctx.header("h")) == (
            12.5,
            None,
            {"h": "v"},
            "v",
        )
        for name in ("sender", "message_id", "correlation_id", "causation_id", "target"):
            with pytest.raises(AttributeError):
                setattr(ctx, name, None)
        with pytest.raises(AttributeError):
            ctx.message = Probe()  # type: ignore[misc]
    finally:
        loop.close()
