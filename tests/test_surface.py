"""One surface, two kernels: the behaviour ``Kernel`` and ``BlockingKernel`` share.

Every test here runs twice, through the ``kernels`` fixture: once on an async
``Kernel``, once on a ``BlockingKernel`` driven from a worker thread. A test body calls
the kernel through ``k.do(lambda kernel: ...)``: the same lambda, with the same method
names and arguments, runs on both (awaited on the async kernel, called in a thread on
the blocking one). That the lambdas are shared is the point: the two surfaces are one.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import anyio
import pytest

import kerna
from kerna import (
    Agent,
    AgentRef,
    BlockingKernel,
    BlockingRef,
    IdleTimeout,
    Kernel,
    KernelStats,
    KernelStopped,
    RegistrationError,
    RemoteError,
    Subscription,
    UnhandledMessage,
    UnknownAgent,
    handler,
)

from .agents import (
    Boom,
    Counter,
    Echo,
    Inc,
    Ping,
    Pong,
    Read,
    Record,
    Recorder,
    Register,
    SetValue,
    Slow,
    Value,
)
from .test_event_sourcing import Account, Deposit, Deposited

pytestmark = pytest.mark.anyio


class Driven:
    """One kernel of either kind, called through one async interface."""

    blocking: ClassVar[bool]

    def __init__(self, **options: Any) -> None:
        self.kernel: Any = (BlockingKernel if self.blocking else Kernel)(**options)

    async def do(self, call: Callable[[Any], Any]) -> Any:
        """``call(kernel)``; awaited if it returns an awaitable (the async kernel), run
        in a worker thread on the blocking kernel (as a sync caller would)."""
        if self.blocking:
            return await anyio.to_thread.run_sync(functools.partial(call, self.kernel))
        result = call(self.kernel)
        return await result if inspect.isawaitable(result) else result

    async def start(self) -> None:
        await self.do(lambda k: k.start())

    async def stop(self, grace: float | None = None) -> None:
        await self.do(lambda k: k.stop(grace))

    async def audit(self, agent_type: Any, key: str, upto: int | None = None) -> Any:
        """The events ``kernel.event_log(agent_type, key)`` lists, and its state at ``upto``."""
        if not self.blocking:
            log = self.kernel.event_log(agent_type, key)
            return [r async for r in log.events()], await log.state_at(upto)

        def read(kernel: BlockingKernel) -> Any:
            log = kernel.event_log(agent_type, key)
            return list(log.events()), log.state_at(upto)

        return await self.do(read)

    async def replica_get(self, agent_type: Any, key: str, revision: int) -> Any:
        """What ``kernel.replica(agent_type)`` holds for ``key`` once it saw ``revision``."""
        if not self.blocking:
            async with self.kernel.replica(agent_type) as replica:
                await replica.wait_for(revision, timeout=5)
                return replica.get(key)

        def read(kernel: BlockingKernel) -> Any:
            with kernel.replica(agent_type) as replica:
                replica.wait_for(revision, timeout=5)
                return replica.get(key)

        return await self.do(read)


class AsyncDriven(Driven):
    blocking = False


class BlockingDriven(Driven):
    blocking = True


Kernels = Callable[..., Driven]


@pytest.fixture(params=[AsyncDriven, BlockingDriven], ids=["Kernel", "BlockingKernel"])
async def kernels(request: pytest.FixtureRequest) -> AsyncIterator[Kernels]:
    """A factory of driven kernels of one kind; every kernel made is stopped after."""
    made: list[Driven] = []

    def new(**options: Any) -> Driven:
        driven: Driven = request.param(**options)
        made.append(driven)
        return driven

    try:
        yield new
    finally:
        async with asyncio.timeout(10):
            for driven in made:
                await driven.stop()


@pytest.fixture
async def running(kernels: Kernels) -> Driven:
    k = kernels(ask_timeout=5, stop_grace=1)
    await k.start()
    return k


# -- the surface itself -----------------------------------------------------------------

# Public members of Kernel that BlockingKernel does not mirror, and why.
NOT_MIRRORED = {
    "loop": "the loop runs on the kernel's thread; BlockingKernel.kernel.loop",
    "state_backend": "its methods are async, for the loop thread: .kernel.state_backend",
    "create_task": "a coroutine runs on the loop thread (plug-ins, handlers): .kernel.create_task",
    # The options as given: read them on .kernel (the constructor takes the same ones).
    "ask_timeout": "option",
    "mailbox_size": "option",
    "overflow": "option",
    "idle_timeout": "option",
    "stop_grace": "option",
    "cancel_grace": "option",
    "max_restarts": "option",
    "restart_backoff": "option",
    "state_url": "option",
    "state_prefix": "option",
    "lease_ttl": "option",
    "failure_log_level": "option",
    "transport": "option",
    "cluster": "option",
    "dead_letters_kept": "option",
    "timing": "option",
}


def _public(obj: object) -> set[str]:
    return {name for name in dir(obj) if not name.startswith("_")}


def test_blocking_kernel_mirrors_every_public_member_of_kernel() -> None:
    kernel = Kernel()
    missing = _public(kernel) - _public(BlockingKernel) - set(NOT_MIRRORED)
    assert not missing, f"BlockingKernel lacks {sorted(missing)}"
    assert set(NOT_MIRRORED) <= _public(kernel), "NOT_MIRRORED names a member Kernel lost"
    # route: the runtime's routing cache on the ref, not for users
    assert _public(AgentRef) - {"route"} <= _public(BlockingRef)


def test_blocking_kernel_takes_the_same_constructor_options() -> None:
    mine = inspect.signature(BlockingKernel.__init__).parameters
    theirs = inspect.signature(Kernel.__init__).parameters
    assert list(mine) == list(theirs)
    for name, param in theirs.items():
        assert mine[name].kind == param.kind, name
        assert mine[name].default == param.default, name
        assert mine[name].annotation == param.annotation, name


def _parameters(fn: Any) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def test_mirrored_methods_take_the_same_parameters() -> None:
    pairs = [(Kernel, BlockingKernel), (AgentRef, BlockingRef)]
    for theirs, mine in pairs:
        for name in sorted(_public(theirs) & _public(mine)):
            if name == "register":  # the same options, passed on as **options
                continue
            original, twin = getattr(theirs, name), getattr(mine, name)
            if inspect.isfunction(original):
                assert _parameters(twin) == _parameters(original), f"{mine.__name__}.{name}"


def test_blocking_methods_say_what_they_mirror() -> None:
    for name in _public(BlockingKernel) - {"kernel"}:
        member = getattr(BlockingKernel, name)
        if callable(member) or isinstance(member, property):
            assert member.__doc__, f"BlockingKernel.{name} has no docstring"


# -- construction and lifecycle ---------------------------------------------------------


async def test_a_bad_option_fails_at_construction_naming_the_option(kernels: Kernels) -> None:
    with pytest.raises(ValueError, match="mailbox_size"):
        kernels(mailbox_size=0)
    with pytest.raises(ValueError, match="ask_timeout"):
        kernels(ask_timeout=-1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'mailboxsize'"):
        kernels(mailboxsize=10)


async def test_agents_registered_before_start_are_served_after_it(kernels: Kernels) -> None:
    k = kernels(ask_timeout=5)
    assert await k.do(lambda kernel: kernel.register(Echo)) == "Echo"
    with pytest.raises(UnknownAgent, match="register it before subscribing"):
        await k.do(lambda kernel: kernel.subscribe("records", Recorder))
    await k.do(lambda kernel: kernel.register(Recorder))
    sub = await k.do(lambda kernel: kernel.subscribe("records", Recorder, key=lambda m: m.sender))
    assert isinstance(sub, Subscription)
    ref = await k.do(lambda kernel: kernel.ref(Echo, "a"))  # a ref needs no running kernel
    assert ref.id == kerna.AgentId("Echo", "a")
    stats = await k.do(lambda kernel: kernel.stats())
    assert isinstance(stats, KernelStats)
    assert stats.types["Echo"].handled == 0
    assert not await k.do(lambda kernel: kernel.running)
    await k.start()
    assert await k.do(lambda kernel: kernel.running)
    assert await k.do(lambda kernel: ref.ask(Ping(n=1))) == Pong(n=1)


async def test_sends_before_start_raise_kernel_stopped_saying_how_to_start(
    kernels: Kernels,
) -> None:
    k = kernels()
    await k.do(lambda kernel: kernel.register(Echo))
    ref = await k.do(lambda kernel: kernel.ref(Echo, "a"))
    with pytest.raises(KernelStopped, match=r"not running \(Ping not sent\).* start\(\)"):
        await k.do(lambda kernel: ref.ask(Ping(n=1)))
    with pytest.raises(KernelStopped, match=r"not running \(Ping not sent\)"):
        await k.do(lambda kernel: ref.tell(Ping(n=1)))
    with pytest.raises(KernelStopped, match=r"not running \(event on 'pings' not published\)"):
        await k.do(lambda kernel: kernel.publish("pings", Ping(n=1)))
    await k.do(lambda kernel: ref.deactivate())  # nothing is active: nothing to do


async def test_sends_after_stop_raise_kernel_stopped(running: Driven) -> None:
    k = running
    await k.do(lambda kernel: kernel.register(Echo))
    ref = await k.do(lambda kernel: kernel.ref(Echo, "a"))
    assert await k.do(lambda kernel: ref.ask(Ping(n=1))) == Pong(n=1)
    await k.stop()
    assert not await k.do(lambda kernel: kernel.running)
    with pytest.raises(KernelStopped, match=r"stopped \(Ping not sent\)"):
        await k.do(lambda kernel: ref.ask(Ping(n=2)))
    with pytest.raises(KernelStopped, match=r"stopped \(Ping not sent\)"):
        await k.do(lambda kernel: ref.tell(Ping(n=3)))
    with pytest.raises(KernelStopped, match=r"stopped \(event on 'pings' not published\)"):
        await k.do(lambda kernel: kernel.publish("pings", Ping(n=4)))
    await k.do(lambda kernel: ref.deactivate())  # nothing is active any more
    assert (await k.do(lambda kernel: kernel.stats())).types["Echo"].handled == 1
    await k.stop()  # idempotent


async def test_a_stopped_kernel_does_not_start_again(running: Driven) -> None:
    k = running
    with pytest.raises(RuntimeError, match="already running"):
        await k.start()
    await k.stop()
    with pytest.raises(RuntimeError, match="already stopped"):
        await k.start()


async def test_stop_rejects_a_negative_grace_and_keeps_running(running: Driven) -> None:
    k = running
    await k.do(lambda kernel: kernel.register(Echo))
    with pytest.raises(ValueError, match="grace"):
        await k.stop(-1)
    ref = await k.do(lambda kernel: kernel.ref(Echo, "a"))
    assert await k.do(lambda kernel: ref.ask(Ping(n=1))) == Pong(n=1)


# -- messages -----------------------------------------------------------------------------


async def test_ask_tell_and_the_errors_a_sender_can_fix(running: Driven) -> None:
    k = running
    await k.do(lambda kernel: kernel.register(Echo))
    ref = await k.do(lambda kernel: kernel.ref(Echo, "a"))
    await k.do(lambda kernel: ref.tell(Ping(n=1)))
    assert await k.do(lambda kernel: ref.ask(Ping(n=2), timeout=5)) == Pong(n=2)
    with pytest.raises(RemoteError, match="ValueError: boom") as failed:
        await k.do(lambda kernel: ref.ask(Boom()))
    assert failed.value.type_name == "ValueError"
    with pytest.raises(ValueError, match="ask timeout must be a positive number"):
        await k.do(lambda kernel: ref.ask(Ping(n=3), timeout=-1))
    with pytest.raises(UnhandledMessage, match="no handler for Record"):
        await k.do(lambda kernel: ref.tell(Record(sender="x", seq=1)))
    with pytest.raises(TypeError, match="kerna.Message"):
        await k.do(lambda kernel: ref.tell("not a message"))
    nobody = await k.do(lambda kernel: kernel.ref("Nobody", "x"))
    with pytest.raises(UnknownAgent, match="'Nobody'"):
        await k.do(lambda kernel: nobody.ask(Ping(n=1)))
    with pytest.raises(TypeError, match="agent key must be a str"):
        await k.do(lambda kernel: kernel.ref(Echo, 1))
    with pytest.raises(RegistrationError, match="'Echo' is already registered"):
        await k.do(lambda kernel: kernel.register(Echo))
    with pytest.raises(RegistrationError, match="takes an Agent subclass"):
        await k.do(lambda kernel: kernel.register(Ping))
    assert (await k.do(lambda kernel: kernel.stats())).types["Echo"].handled >= 2


class Headers(Agent):
    """Answers with the headers its message came with, and keeps them."""

    seen: ClassVar[list[dict[str, str]]] = []

    @handler
    async def ping(self, msg: Ping) -> dict[str, str]:
        Headers.seen.append(dict(self.context.headers))
        return dict(self.context.headers)


async def test_headers_reach_the_handler(running: Driven) -> None:
    k = running
    await k.do(lambda kernel: kernel.register(Headers))
    ref = await k.do(lambda kernel: kernel.ref(Headers, "h"))
    await k.do(lambda kernel: ref.tell(Ping(n=1), headers={"trace": "t1"}))
    assert await k.do(lambda kernel: ref.ask(Ping(n=2), headers={"trace": "t2"})) == {"trace": "t2"}
    with pytest.raises(TypeError, match="headers"):
        await k.do(lambda kernel: ref.ask(Ping(n=3), headers={"trace": 3}))
    await k.do(lambda kernel: kernel.subscribe("pings", Headers, key=lambda m: "h"))
    await k.do(lambda kernel: kernel.publish("pings", Ping(n=4), headers={"trace": "t4"}))
    await k.do(lambda kernel: ref.ask(Ping(n=5)))  # after the event, in order
    assert Headers.seen[-3:] == [{"trace": "t2"}, {"trace": "t4"}, {}]


async def test_refs_to_one_agent_are_equal(running: Driven) -> None:
    k = running
    await k.do(lambda kernel: kernel.register(Echo))
    a = await k.do(lambda kernel: kernel.ref(Echo, "a"))
    again = await k.do(lambda kernel: kernel.ref("Echo", "a"))
    other = await k.do(lambda kernel: kernel.ref(Echo, "b"))
    assert a == again
    assert hash(a) == hash(again)
    assert a != other
    assert await k.do(lambda kernel: a.kernel is kernel)
    assert "Echo/a" in repr(a)


async def test_publish_reaches_subscribers_until_they_unsubscribe(running: Driven) -> None:
    k = running
    Recorder.log = {}
    await k.do(lambda kernel: kernel.register(Recorder))
    sub = await k.do(lambda kernel: kernel.subscribe("records", Recorder, key=lambda m: m.sender))
    await k.do(lambda kernel: kernel.publish("records", Record(sender="s", seq=1)))
    ref = await k.do(lambda kernel: kernel.ref(Recorder, "s"))
    assert await k.do(lambda kernel: ref.ask(Ping(n=0))) == 2  # the event, then this ask
    await k.do(lambda kernel: kernel.unsubscribe(sub))
    await k.do(lambda kernel: kernel.unsubscribe(sub))  # unknown ones are ignored
    await k.do(lambda kernel: kernel.publish("records", Record(sender="s", seq=2)))
    assert await k.do(lambda kernel: ref.ask(Ping(n=0))) == 3  # the second event never came
    with pytest.raises(TypeError, match="topic must be a non-empty str"):
        await k.do(lambda kernel: kernel.subscribe("", Recorder))
    with pytest.raises(TypeError, match="kerna.Message"):
        await k.do(lambda kernel: kernel.publish("records", {"seq": 3}))


async def test_deactivate_waits_for_on_stop_and_the_next_message_reactivates(
    running: Driven,
) -> None:
    k = running
    await k.do(lambda kernel: kernel.register(Counter))
    ref = await k.do(lambda kernel: kernel.ref(Counter, "c"))
    assert await k.do(lambda kernel: ref.ask(Inc())) == 1
    await k.do(lambda kernel: ref.deactivate())
    stats = (await k.do(lambda kernel: kernel.stats())).types["Counter"]
    assert (stats.active, stats.activations) == (0, 1)
    assert await k.do(lambda kernel: ref.ask(Read())) == 1  # a fresh activation, same state
    assert (await k.do(lambda kernel: kernel.stats())).types["Counter"].activations == 2


async def test_wait_idle_returns_once_the_work_has_settled(running: Driven) -> None:
    k = running
    await k.do(lambda kernel: kernel.register(Echo))
    ref = await k.do(lambda kernel: kernel.ref(Echo, "a"))
    await k.do(lambda kernel: kernel.wait_idle(timeout=5))  # nothing to do: at once
    for n in range(5):
        await k.do(lambda kernel, n=n: ref.tell(Slow(seconds=0.01 * n)))
    await k.do(lambda kernel: kernel.wait_idle(timeout=5))
    stats = await k.do(lambda kernel: kernel.stats())
    assert stats.types["Echo"].handled == 5
    assert stats.running == 0


async def test_wait_idle_gives_up_after_its_timeout(running: Driven) -> None:
    k = running
    await k.do(lambda kernel: kernel.register(Echo))
    ref = await k.do(lambda kernel: kernel.ref(Echo, "a"))
    await k.do(lambda kernel: ref.tell(Slow(seconds=30)))
    with pytest.raises(IdleTimeout, match="still busy after 0.05s"):
        await k.do(lambda kernel: kernel.wait_idle(timeout=0.05))
    with pytest.raises(TypeError, match="timeout must be a number of seconds"):
        await k.do(lambda kernel: kernel.wait_idle(timeout="1"))
    await k.stop(0)  # the sleeping handler is cancelled at once


async def test_wait_idle_refuses_when_not_running(kernels: Kernels) -> None:
    k = kernels()
    with pytest.raises(KernelStopped, match=r"not running \(wait_idle\)"):
        await k.do(lambda kernel: kernel.wait_idle(timeout=1))
    await k.start()
    await k.stop()
    with pytest.raises(KernelStopped, match=r"stopped \(wait_idle\)"):
        await k.do(lambda kernel: kernel.wait_idle(timeout=1))


# -- state ---------------------------------------------------------------------------------


async def test_replica_mirrors_saved_state(running: Driven) -> None:
    k = running
    await k.do(lambda kernel: kernel.register(Register))
    await k.do(lambda kernel: kernel.register(Echo))
    ref = await k.do(lambda kernel: kernel.ref(Register, "r"))
    revision = await k.do(lambda kernel: ref.ask(SetValue(v="x")))
    assert await k.replica_get(Register, "r", revision) == Value(v="x")
    with pytest.raises(UnknownAgent, match="'Nobody'"):
        await k.do(lambda kernel: kernel.replica("Nobody"))
    with pytest.raises(TypeError, match="declares no state"):
        await k.do(lambda kernel: kernel.replica(Echo))


async def test_event_log_lists_the_audit_trail_and_rebuilds_past_state(running: Driven) -> None:
    k = running
    await k.do(lambda kernel: kernel.register(Account))
    await k.do(lambda kernel: kernel.register(Echo))
    ref = await k.do(lambda kernel: kernel.ref(Account, "a"))
    for amount in (5, 7, 11):
        await k.do(lambda kernel, amount=amount: ref.ask(Deposit(amount=amount)))
    records, (state, seq) = await k.audit(Account, "a", upto=2)
    assert [r.event for r in records] == [Deposited(amount=n) for n in (5, 7, 11)]
    assert [r.seq for r in records] == [1, 2, 3]
    assert (state.amount, seq) == (12, 2)
    with pytest.raises(TypeError, match="not event-sourced"):
        await k.do(lambda kernel: kernel.event_log(Echo, "a"))
    with pytest.raises(UnknownAgent, match="'Nobody'"):
        await k.do(lambda kernel: kernel.event_log("Nobody", "a"))
