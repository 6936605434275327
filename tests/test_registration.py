"""Registration: clear errors for bad agent definitions and options."""

from __future__ import annotations

import pytest

from kerna import Agent, Kernel, Message, RegistrationError, handler

from .agents import Echo, Ping, Pong

pytestmark = pytest.mark.anyio


class Base(Message):
    pass


class Derived(Base):
    pass


class Other(Message):
    pass


async def test_type_name_defaults_to_class_name(kernel: Kernel) -> None:
    assert kernel.register(Echo) == "Echo"
    assert kernel.ref(Echo, "a").id.type == "Echo"
    assert kernel.register(Echo, name="Echo2") == "Echo2"
    assert kernel.ref("Echo2", "a").id.type == "Echo2"


async def test_reregistration_is_refused(kernel: Kernel) -> None:
    kernel.register(Echo)
    with pytest.raises(RegistrationError, match="already registered"):
        kernel.register(Echo)


async def test_non_agent_is_refused(kernel: Kernel) -> None:
    with pytest.raises(RegistrationError, match="Agent subclass"):
        kernel.register(dict)  # type: ignore[arg-type]
    with pytest.raises(RegistrationError, match="Agent subclass"):
        kernel.register(Echo())  # type: ignore[arg-type]


async def test_handler_without_annotation(kernel: Kernel) -> None:
    class NoAnnotation(Agent):
        @handler
        async def on(self, msg):  # type: ignore[no-untyped-def]
            return None

    with pytest.raises(RegistrationError, match="NoAnnotation.on: annotate"):
        kernel.register(NoAnnotation)


async def test_handler_with_non_message_annotation(kernel: Kernel) -> None:
    class WrongType(Agent):
        @handler
        async def on(self, msg: int) -> None:
            return None

    with pytest.raises(RegistrationError, match="kerna.Message subclass"):
        kernel.register(WrongType)


async def test_two_handlers_for_one_type(kernel: Kernel) -> None:
    class Twice(Agent):
        @handler
        async def one(self, msg: Ping) -> None:
            return None

        @handler
        async def two(self, msg: Ping) -> None:
            return None

    with pytest.raises(RegistrationError, match="two handlers for Ping: one and two"):
        kernel.register(Twice)


async def test_non_async_handler(kernel: Kernel) -> None:
    class Sync(Agent):
        @handler
        def on(self, msg: Ping) -> None:
            return None

    with pytest.raises(RegistrationError, match="must be 'async def'"):
        kernel.register(Sync)


async def test_handler_with_extra_parameters(kernel: Kernel) -> None:
    class Extra(Agent):
        @handler
        async def on(self, msg: Ping, other: int) -> None:
            return None

    with pytest.raises(RegistrationError, match="exactly one message argument"):
        kernel.register(Extra)


@pytest.mark.parametrize(
    ("options", "text"),
    [
        ({"mailbox_size": 0}, "mailbox_size"),
        ({"mailbox_size": 1.5}, "mailbox_size"),
        ({"overflow": "spill"}, "overflow must be one of wait, reject, drop_oldest"),
        ({"idle_timeout": -1}, "idle_timeout"),
        ({"max_restarts": -1}, "max_restarts"),
        ({"restart_backoff": float("nan")}, "restart_backoff"),
    ],
)
async def test_bad_registration_options(
    kernel: Kernel, options: dict[str, object], text: str
) -> None:
    with pytest.raises(ValueError, match=text):
        kernel.register(Echo, **options)  # type: ignore[arg-type]
    kernel.register(Echo)  # the failed attempt registered nothing


@pytest.mark.parametrize(
    ("options", "text"),
    [
        ({"ask_timeout": 0}, "ask_timeout"),
        ({"ask_timeout": float("inf")}, "ask_timeout"),
        ({"mailbox_size": -3}, "mailbox_size"),
        ({"overflow": None}, "overflow"),
        ({"stop_grace": -1}, "stop_grace"),
    ],
)
def test_bad_kernel_options(options: dict[str, object], text: str) -> None:
    with pytest.raises(ValueError, match=text):
        Kernel(**options)  # type: ignore[arg-type]


async def test_subclass_falls_back_to_nearest_base_handler(kernel: Kernel) -> None:
    class Dispatch(Agent):
        @handler
        async def base(self, msg: Base) -> str:
            return "base"

        @handler
        async def other(self, msg: Other | Pong) -> str:
            return "other-or-pong"

    kernel.register(Dispatch)
    ref = kernel.ref(Dispatch, "d")
    assert await ref.ask(Derived()) == "base"
    assert await ref.ask(Base()) == "base"
    assert await ref.ask(Other()) == "other-or-pong"
    assert await ref.ask(Pong(n=1)) == "other-or-pong"


async def test_inherited_and_overridden_handlers(kernel: Kernel) -> None:
    class Parent(Agent):
        @handler
        async def ping(self, msg: Ping) -> str:
            return "parent"

    class Child(Parent):
        @handler
        async def ping(self, msg: Ping) -> str:
            return "child"

    kernel.register(Parent)
    kernel.register(Child)
    assert await kernel.ref(Parent, "x").ask(Ping(n=0)) == "parent"
    assert await kernel.ref(Child, "x").ask(Ping(n=0)) == "child"
