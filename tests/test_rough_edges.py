"""What a new user trips over: each mistake gets a clear error at once, naming what was
wrong, and errors carry their context as attributes."""

from __future__ import annotations

import ast
import asyncio
import inspect
import itertools
import pydoc
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pytest

import kerna
from kerna import (
    Agent,
    AgentId,
    AskTimeout,
    DeadLetter,
    DeadLetterReason,
    Kernel,
    MailboxFull,
    Message,
    RegistrationError,
    RemoteError,
    UnhandledMessage,
    UnknownAgent,
    handler,
)

from .agents import Boom, Counter, Echo, Inc, Ping, Pong, Read, Record, Slow

pytestmark = pytest.mark.anyio


# -- self.state on a stateful agent ----------------------------------------------------


class Total(msgspec.Struct, frozen=True):
    n: int = 0


class Assign(Message):
    n: int


class Assigning(Agent, state=Total):
    @handler
    async def assign(self, msg: Assign) -> int:
        self.state = Total(msg.n)
        return int(self.state.n)

    @handler
    async def read(self, msg: Read) -> int:
        return int(self.state.n)


class Added(Message):
    n: int


class Ledger(Agent, state=Total, event_sourced=True):
    @staticmethod
    def apply(state: Total, event: Added) -> Total:
        return Total(state.n + event.n)

    @handler
    async def assign(self, msg: Assign) -> None:
        self.state = Total(msg.n)


async def test_assigning_self_state_on_a_stateful_agent_says_to_use_save(kernel: Kernel) -> None:
    kernel.register(Assigning)
    ref = kernel.ref(Assigning, "a")
    with pytest.raises(RemoteError) as info:
        await ref.ask(Assign(n=5))
    assert info.value.type_name == "AttributeError"
    assert "await self.save(" in info.value.message
    assert "read-only" in info.value.message
    assert await ref.ask(Read()) == 0  # nothing was changed, in memory or stored


async def test_assigning_self_state_on_an_event_sourced_agent_says_to_emit(
    kernel: Kernel,
) -> None:
    kernel.register(Ledger)
    with pytest.raises(RemoteError, match=r"self\.emit\(") as info:
        await kernel.ref(Ledger, "l").ask(Assign(n=5))
    assert info.value.type_name == "AttributeError"


async def test_a_stateless_agent_may_use_self_state_as_its_own_attribute(kernel: Kernel) -> None:
    class Plain(Agent):
        def __init__(self) -> None:
            self.state = 0

        @handler
        async def inc(self, msg: Inc) -> int:
            self.state += 1
            return int(self.state)

    kernel.register(Plain)
    ref = kernel.ref(Plain, "p")
    assert [await ref.ask(Inc()) for _ in range(3)] == [1, 2, 3]


async def test_save_still_changes_the_state(kernel: Kernel) -> None:
    kernel.register(Counter)
    ref = kernel.ref(Counter, "c")
    assert await ref.ask(Inc()) == 1
    assert await ref.ask(Read()) == 1


# -- subscribe, ask, publish, ref, register: bad arguments, at once --------------------


async def test_subscribing_an_unregistered_type_fails_at_once(kernel: Kernel) -> None:
    with pytest.raises(UnknownAgent, match="register it before subscribing") as info:
        kernel.subscribe("news", "Unregistered")
    assert info.value.agent_type == "Unregistered"
    assert "'news'" in str(info.value)
    with pytest.raises(UnknownAgent) as info:
        kernel.subscribe("news", Echo)  # a class, not registered yet
    assert info.value.agent_type == "Echo"
    kernel.register(Echo)
    kernel.subscribe("news", Echo)  # now it works
    await kernel.publish("news", Ping(n=1))


@pytest.mark.parametrize("timeout", ["1", b"1", True, None.__class__, [1]])
async def test_an_ask_timeout_of_the_wrong_type_is_a_type_error_naming_it(
    kernel: Kernel, timeout: Any
) -> None:
    kernel.register(Echo)
    ref = kernel.ref(Echo, "a")
    with pytest.raises(TypeError, match="timeout") as info:
        await ref.ask(Ping(n=1), timeout=timeout)
    assert repr(timeout) in str(info.value)
    assert kernel.stats().types["Echo"].active == 0  # nothing was sent
    assert await ref.ask(Ping(n=1), timeout=1) == Pong(n=1)


async def test_other_wrong_argument_types_name_the_argument(kernel: Kernel) -> None:
    kernel.register(Echo)
    with pytest.raises(TypeError, match="topic"):
        await kernel.publish(5, Ping(n=1))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="topic"):
        await kernel.publish("", Ping(n=1))
    with pytest.raises(TypeError, match="topic"):
        kernel.subscribe(5, Echo)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key"):
        kernel.subscribe("t", Echo, key="k")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key"):
        kernel.ref(Echo, 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="agent type"):
        kernel.ref(5, "k")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="headers"):
        await kernel.ref(Echo, "a").tell(Ping(n=1), headers=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cancel_at_deadline"):
        kernel.register(Echo, name="E2", cancel_at_deadline="no")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Message"):
        await kernel.ref(Echo, "a").tell("ping")  # type: ignore[arg-type]


class Tick(Message):
    pass


class Schedule(Message):
    delay: Any
    what: str = "tick"


class Scheduler(Agent):
    @handler
    async def schedule_one(self, msg: Schedule) -> None:
        message: Any = {"tick": Tick(), "str": "tick", "ping": Ping(n=1)}[msg.what]
        self.schedule(msg.delay, message)

    @handler
    async def tick(self, msg: Tick) -> None:
        pass


@pytest.mark.parametrize(
    ("delay", "what", "error", "text"),
    [
        ("1", "tick", "TypeError", "delay"),
        (None, "tick", "TypeError", "delay"),
        (-1, "tick", "ValueError", "delay"),
        (float("nan"), "tick", "ValueError", "delay"),
        (1, "str", "TypeError", "Message"),
        (1, "ping", "kerna.UnhandledMessage", "no handler for Ping"),
    ],
)
async def test_a_bad_timer_fails_when_scheduled_naming_what_was_wrong(
    kernel: Kernel, delay: Any, what: str, error: str, text: str
) -> None:
    kernel.register(Scheduler)
    with pytest.raises(RemoteError) as info:
        await kernel.ref(Scheduler, "s").ask(Schedule(delay=delay, what=what))
    assert info.value.type_name == error
    assert text in info.value.message


# -- errors that say how to fix them ------------------------------------------------------


async def test_unhandled_message_hints_at_a_missing_handler_decorator(kernel: Kernel) -> None:
    class Forgetful(Agent):
        @handler
        async def ping(self, msg: Ping) -> Pong:
            return Pong(n=msg.n)

        async def record(self, msg: Record) -> None:  # no @handler
            pass

    kernel.register(Forgetful)
    with pytest.raises(UnhandledMessage) as info:
        await kernel.ref(Forgetful, "f").tell(Record(sender="s", seq=1))
    error = info.value
    assert "@handler" in str(error)
    assert "Record" in str(error)
    assert "it handles: Ping" in str(error)
    assert error.agent_type == "Forgetful"
    assert error.message_type is Record


def test_an_unresolvable_local_annotation_says_how_to_fix_it() -> None:
    # This module has ``from __future__ import annotations``: annotations are strings,
    # resolved at registration from the module's globals, where a local class is not.
    class LocalMessage(Message):
        pass

    class Local(Agent):
        @handler
        async def local(self, msg: LocalMessage) -> None:
            pass

    kernel = Kernel()
    with pytest.raises(RegistrationError) as info:
        kernel.register(Local)
    text = str(info.value)
    assert "Local.local" in text
    assert "LocalMessage" in text
    assert "module level" in text
    assert "from __future__ import annotations" in text


def test_help_shows_readable_defaults() -> None:
    text = pydoc.render_doc(Kernel.register, renderer=pydoc.plaintext)
    assert "idle_timeout" in text
    assert " at 0x" not in text
    for name in kerna.__all__:
        obj = getattr(kerna, name)
        if not callable(obj):
            continue
        for _, member in (
            inspect.getmembers(obj, callable) if isinstance(obj, type) else [(name, obj)]
        ):
            try:
                signature = str(inspect.signature(member))
            except (TypeError, ValueError):  # builtins without a signature
                continue
            assert " at 0x" not in signature, (name, member, signature)


# -- errors carry their context as attributes --------------------------------------------


async def test_ask_timeout_carries_the_target_and_the_timeout(kernel: Kernel) -> None:
    kernel.register(Echo)
    ref = kernel.ref(Echo, "slow")
    with pytest.raises(AskTimeout) as info:
        await ref.ask(Slow(seconds=1), timeout=0.05)
    assert info.value.target == AgentId("Echo", "slow")
    assert info.value.timeout == 0.05
    assert "0.05s" in str(info.value)
    assert isinstance(info.value, TimeoutError)


class Hold(Message):
    pass


class Gate(Agent):
    """Holds its handler until the test opens the gate."""

    entered: ClassVar[asyncio.Event]
    opened: ClassVar[asyncio.Event]

    @handler
    async def hold(self, msg: Hold) -> str:
        Gate.entered.set()
        await Gate.opened.wait()
        return "through"

    @handler
    async def ping(self, msg: Ping) -> None:
        pass


async def test_mailbox_full_carries_the_target_and_the_capacity(kernel: Kernel) -> None:
    Gate.entered, Gate.opened = asyncio.Event(), asyncio.Event()
    kernel.register(Gate, mailbox_size=1, overflow="reject")
    ref = kernel.ref(Gate, "full")
    held = asyncio.ensure_future(ref.ask(Hold()))
    async with asyncio.timeout(5):
        await Gate.entered.wait()  # Hold is being handled: the mailbox takes one more
    await ref.tell(Ping(n=1))
    with pytest.raises(MailboxFull) as info:
        await ref.tell(Ping(n=2))
    assert info.value.target == AgentId("Gate", "full")
    assert info.value.capacity == 1
    Gate.opened.set()
    async with asyncio.timeout(5):
        assert await held == "through"


async def test_unknown_agent_carries_the_type(kernel: Kernel) -> None:
    with pytest.raises(UnknownAgent) as info:
        await kernel.ref("Nobody", "x").tell(Ping(n=1))
    assert info.value.agent_type == "Nobody"
    with pytest.raises(UnknownAgent) as info:
        kernel.replica("Nobody")
    assert info.value.agent_type == "Nobody"


# -- dead letter reasons --------------------------------------------------------------------


class Collector(Agent):
    got: ClassVar[list[DeadLetter]] = []
    arrived: ClassVar[asyncio.Event]

    @handler
    async def dead(self, msg: DeadLetter) -> None:
        Collector.got.append(msg)
        Collector.arrived.set()


async def next_dead_letter() -> DeadLetter:
    async with asyncio.timeout(5):
        while not Collector.got:
            Collector.arrived = asyncio.Event()
            await Collector.arrived.wait()
    return Collector.got.pop(0)


async def test_dead_letter_reasons_are_dead_letter_reason_members(kernel: Kernel) -> None:
    Collector.got = []
    Collector.arrived = asyncio.Event()
    kernel.register(Collector)
    kernel.register(Echo)
    kernel.subscribe(Kernel.DEAD_LETTERS, Collector)
    # a tell whose handler raised
    await kernel.ref(Echo, "a").tell(Boom())
    dead = await next_dead_letter()
    assert dead.reason is DeadLetterReason.HANDLER_FAILED
    assert dead.reason == "handler_failed"  # a StrEnum: equal to its str value
    # an event nobody there handles
    kernel.subscribe("records", Echo)
    await kernel.publish("records", Record(sender="s", seq=1))
    dead = await next_dead_letter()
    assert dead.reason is DeadLetterReason.UNHANDLED_MESSAGE
    # a subscription key that fails
    kernel.subscribe("pings", Echo, key=lambda _: 1 / 0)  # type: ignore[arg-type,return-value]
    await kernel.publish("pings", Ping(n=1))
    dead = await next_dead_letter()
    assert dead.reason is DeadLetterReason.SUBSCRIPTION_KEY_FAILED
    assert dead.error is not None
    assert "ZeroDivisionError" in dead.error


_REASON_TAKERS = {
    "undeliverable",
    "not_handled",
    "publish_dead_letter",
    "abort",
    "_fail_all",
    "DeadLetter",
}


def _kernel_sources() -> list[Path]:
    return sorted(Path(kerna.__file__).resolve().parent.glob("*.py"))


def test_every_reason_the_code_emits_is_a_documented_dead_letter_reason() -> None:
    members = {m.name for m in DeadLetterReason}
    used: set[str] = set()
    for path in _kernel_sources():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "DeadLetterReason"
            ):
                used.add(node.attr)
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name not in _REASON_TAKERS:
                    continue
                args = [*node.args, *(k.value for k in node.keywords if k.arg == "reason")]
                for arg in args:  # no reason given as a bare string
                    assert not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)), (
                        f"{path.name}:{node.lineno}: {name}() takes a DeadLetterReason, "
                        f"not {arg.value!r}"
                    )
    assert used <= members, used - members
    assert used == members, f"documented but never emitted: {members - used}"


def test_every_dead_letter_reason_is_documented() -> None:
    source = Path(inspect.getfile(DeadLetterReason)).read_text()
    [cls] = [
        n
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.ClassDef) and n.name == "DeadLetterReason"
    ]
    documented = set()
    body = cls.body
    for node, following in itertools.pairwise(body):
        if (
            isinstance(node, ast.Assign)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            target = node.targets[0]
            assert isinstance(target, ast.Name)
            documented.add(target.id)
    assert documented == {m.name for m in DeadLetterReason}
    assert all(m.value == m.name.lower() for m in DeadLetterReason)
