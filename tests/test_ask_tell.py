"""Request/response and one-way messages, and what goes wrong with them."""

from __future__ import annotations

import asyncio

import pytest

from kerna import (
    Agent,
    AskTimeout,
    Kernel,
    KernelStopped,
    Message,
    RemoteError,
    UnhandledMessage,
    UnknownAgent,
    handler,
)

from .agents import Boom, Echo, Ping, Pong, Record, Recorder, Slow

pytestmark = pytest.mark.anyio


async def test_ask_and_tell(kernel: Kernel) -> None:
    kernel.register(Echo)
    ref = kernel.ref(Echo, "a")
    assert ref.id.type == "Echo"
    assert ref.id.key == "a"
    pong = await ref.ask(Ping(n=7), timeout=1.0)
    assert pong == Pong(n=7)
    await ref.tell(Ping(n=2))
    assert await ref.ask(Ping(n=3)) == Pong(n=3)
    assert kernel.stats().types["Echo"].handled == 3


async def test_tells_arrive_in_order(kernel: Kernel) -> None:
    Recorder.log.clear()
    kernel.register(Recorder)
    ref = kernel.ref(Recorder, "r")
    async with asyncio.timeout(10):
        for i in range(2500):  # more than one mailbox full: senders wait, order holds
            await ref.tell(Record(sender="s", seq=i))
    await ref.ask(Ping(n=0))
    seqs = [m.seq for m in Recorder.log["r"] if isinstance(m, Record)]
    assert seqs == list(range(2500))


async def test_unknown_agent_type(kernel: Kernel) -> None:
    with pytest.raises(UnknownAgent, match="'Nobody'"):
        await kernel.ref("Nobody", "x").tell(Ping(n=1))
    with pytest.raises(UnknownAgent):
        await kernel.ref("Nobody", "x").ask(Ping(n=1))
    kernel.register(Echo)
    assert await kernel.ref(Echo, "a").ask(Ping(n=1)) == Pong(n=1)  # kernel still fine


async def test_unhandled_message_type(kernel: Kernel) -> None:
    kernel.register(Echo)
    ref = kernel.ref(Echo, "a")
    with pytest.raises(UnhandledMessage, match="'Echo' has no handler for Record"):
        await ref.tell(Record(sender="x", seq=1))
    with pytest.raises(UnhandledMessage):
        await ref.ask(Record(sender="x", seq=1))
    assert await ref.ask(Ping(n=1)) == Pong(n=1)


async def test_non_message_objects_are_refused(kernel: Kernel) -> None:
    kernel.register(Echo)
    ref = kernel.ref(Echo, "a")
    with pytest.raises(TypeError, match="kerna.Message instances, got dict"):
        await ref.tell({"n": 1})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got str"):
        await ref.ask("ping")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key must be a str"):
        kernel.ref(Echo, 5)  # type: ignore[arg-type]
    assert await ref.ask(Ping(n=1)) == Pong(n=1)


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf")])
async def test_bad_timeouts(kernel: Kernel, timeout: float) -> None:
    kernel.register(Echo)
    with pytest.raises(ValueError, match="positive number"):
        await kernel.ref(Echo, "a").ask(Ping(n=1), timeout=timeout)
    assert kernel.stats().types["Echo"].active == 0  # nothing was activated


async def test_handler_error_comes_back_and_agent_lives_on(kernel: Kernel) -> None:
    kernel.register(Echo)
    ref = kernel.ref(Echo, "a")
    with pytest.raises(RemoteError) as info:
        await ref.ask(Boom(text="bad input 42"))
    err = info.value
    assert err.type_name == "ValueError"
    assert err.message == "bad input 42"
    assert "raise ValueError(msg.text)" in err.traceback
    assert await ref.ask(Ping(n=5)) == Pong(n=5)
    stats = kernel.stats().types["Echo"]
    assert stats.failed == 1
    assert stats.handled == 1
    assert stats.activations == 1  # the same activation lived on


async def test_ask_timeout_and_late_reply_is_counted(kernel: Kernel) -> None:
    kernel.register(Echo)
    ref = kernel.ref(Echo, "a")
    with pytest.raises(AskTimeout, match="no reply from Echo/a to Slow"):
        await ref.ask(Slow(seconds=0.2), timeout=0.02)
    # the late reply is dropped: the next ask still gets its own answer
    assert await ref.ask(Ping(n=1)) == Pong(n=1)
    assert kernel.stats().types["Echo"].late_replies == 1
    with pytest.raises(TimeoutError):  # AskTimeout is a TimeoutError too
        await ref.ask(Slow(seconds=0.2), timeout=0.01)


class Deadline(Message):
    pass


class Outer(Agent):
    @handler
    async def outer(self, msg: Deadline) -> tuple[float | None, float | None]:
        mine = self.time_left()
        inner = await self.ref(Inner, "i").ask(Deadline(), timeout=60)
        return mine, inner


class Inner(Agent):
    @handler
    async def inner(self, msg: Deadline) -> float | None:
        return self.time_left()


async def test_deadline_travels_into_nested_asks(kernel: Kernel) -> None:
    kernel.register(Outer)
    kernel.register(Inner)
    mine, inner = await kernel.ref(Outer, "o").ask(Deadline(), timeout=2.0)
    assert mine is not None
    assert inner is not None
    assert 0 < inner <= mine <= 2.0  # the nested ask kept the outer, shorter deadline


async def test_tell_has_no_deadline(kernel: Kernel) -> None:
    seen: list[float | None] = []

    class Probe(Agent):
        @handler
        async def on(self, msg: Deadline) -> None:
            seen.append(self.time_left())

    kernel.register(Probe)
    await kernel.ref(Probe, "p").tell(Deadline())
    await kernel.ref(Probe, "p").ask(Deadline())
    assert seen[0] is None
    assert seen[1] is not None


class Hop(Message):
    to: str
    ttl: int


class Hopper(Agent):
    @handler
    async def hop(self, msg: Hop) -> str:
        if msg.ttl == 0:
            return self.id.key
        reply: str = await self.ref(Hopper, msg.to).ask(Hop(to=self.id.key, ttl=msg.ttl - 1))
        return reply


async def test_ask_cycle_fails_fast_with_deadlock_error(kernel: Kernel) -> None:
    kernel.register(Hopper)
    ref = kernel.ref(Hopper, "a")
    # a -> b -> a: a is still waiting for b, so b's ask to a is a deadlock
    with pytest.raises(RemoteError) as info:
        await ref.ask(Hop(to="b", ttl=2), timeout=5)
    assert "DeadlockError" in info.value.type_name
    assert "Hopper/a -> Hopper/b -> Hopper/a" in info.value.message
    assert await ref.ask(Hop(to="b", ttl=1)) == "b"  # a -> b, no cycle


async def test_self_ask_is_a_deadlock(kernel: Kernel) -> None:
    class Selfish(Agent):
        @handler
        async def on(self, msg: Ping) -> None:
            await self.ref(Selfish, self.id.key).ask(Pong(n=1))

        @handler
        async def pong(self, msg: Pong) -> None:
            return None

    kernel.register(Selfish)
    with pytest.raises(RemoteError, match="DeadlockError"):
        await kernel.ref(Selfish, "s").ask(Ping(n=1))


class Trace(Message):
    depth: int


class Tracer(Agent):
    seen: list[tuple[int, int, str | None]] = []

    @handler
    async def on(self, msg: Trace) -> None:
        cur = self._activation.current
        assert cur is not None
        Tracer.seen.append((cur.correlation_id, cur.causation_id, str(cur.sender)))
        if msg.depth:
            await self.ref(Tracer, f"t{msg.depth}").tell(Trace(depth=msg.depth - 1))
            await self.publish("trace", Trace(depth=0))


async def test_correlation_and_causation_ids_propagate(kernel: Kernel) -> None:
    Tracer.seen.clear()
    kernel.register(Tracer)
    kernel.subscribe("trace", Tracer, key=lambda m: "sub")
    await kernel.ref(Tracer, "root").ask(Trace(depth=1))
    await kernel.ref(Tracer, "t1").ask(Trace(depth=0))  # flushes t1's mailbox
    await kernel.ref(Tracer, "sub").ask(Trace(depth=0))
    root, child, event = Tracer.seen[0], Tracer.seen[1], Tracer.seen[2]
    assert root[1] == 0  # the root has no cause
    assert root[2] == "None"
    assert child[0] == root[0]  # same conversation
    assert child[2] == "Tracer/root"
    assert event[0] == root[0]
    assert child[1] == event[1] != 0  # both caused by the root message


async def test_send_after_stop_is_refused() -> None:
    kernel = Kernel()
    await kernel.start()
    kernel.register(Echo)
    ref = kernel.ref(Echo, "a")
    await asyncio.wait_for(kernel.stop(), 5)
    with pytest.raises(KernelStopped):
        await ref.tell(Ping(n=1))
    with pytest.raises(KernelStopped):
        await ref.ask(Ping(n=1))
    with pytest.raises(KernelStopped):
        await kernel.publish("t", Ping(n=1))


async def test_kernel_not_started() -> None:
    kernel = Kernel()
    kernel.register(Echo)
    with pytest.raises(KernelStopped, match="not running"):
        await kernel.ref(Echo, "a").ask(Ping(n=1))


async def test_concurrent_asks_to_one_agent(kernel: Kernel) -> None:
    kernel.register(Echo)
    ref = kernel.ref(Echo, "a")
    replies = await asyncio.gather(*(ref.ask(Ping(n=i)) for i in range(500)))
    assert [r.n for r in replies] == list(range(500))


class AskSlowly(Message):
    timeout: float


class Relay(Agent):
    @handler
    async def relay(self, msg: AskSlowly) -> str:
        try:
            await self.ref(Echo, "slow").ask(Slow(seconds=0.05), timeout=msg.timeout)
        except AskTimeout as exc:
            return str(exc)
        return "answered"


async def test_a_nested_ask_timeout_names_the_timeout_it_was_given(kernel: Kernel) -> None:
    kernel.register(Echo)
    kernel.register(Relay)
    text = await kernel.ref(Relay, "r").ask(AskSlowly(timeout=0.001), timeout=5)
    assert text == "no reply from Echo/slow to Slow in 0.001s"
