"""The chain's synchronous hooks (``before_send``/``after_send``,
``before_handle``/``after_handle``): called inline around a send's attempts and a
handling, once each, in the chain's order among ``send``/``handle`` hooks, with the
outcome (a value, an error, a cancellation); a raising hook fails that message only."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import pytest

from kerna import Agent, AskTimeout, Kernel, Message, MessageContext, RemoteError, Request, handler
from kerna.plugins import Middleware, SendNext

pytestmark = pytest.mark.anyio


class Pong(Message):
    n: int


class Ping(Request[Pong]):
    n: int


class Note(Message):
    text: str


class Gate:
    """Where a blocked handler waits (reset per test)."""

    entered: asyncio.Event = asyncio.Event()
    release: asyncio.Event = asyncio.Event()


class Echo(Agent):
    @handler
    async def ping(self, msg: Ping) -> Pong:
        if msg.n < 0:
            raise ValueError(f"negative: {msg.n}")
        if msg.n == 99:  # blocks until released (or cancelled)
            Gate.entered.set()
            await Gate.release.wait()
        return Pong(msg.n)

    @handler
    async def note(self, msg: Note) -> None:
        Seen.headers.append(dict(self.context.headers))


class Seen:
    headers: list[dict[str, str]] = []


def outcome(result: Any, error: BaseException | None) -> str:
    if error is not None:
        return f"error {type(error).__name__}"
    return f"ok {result!r}"


class Watch:
    """Only synchronous hooks (no base class: any object with them is a middleware)."""

    def __init__(self, name: str, log: list[str], headers: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = log
        self.headers = headers

    def before_send(self, ctx: MessageContext) -> tuple[object, Mapping[str, str] | None]:
        self.log.append(f"{self.name} before_send {ctx.kind} {type(ctx.message).__name__}")
        return ("send", ctx.message_id), self.headers

    def after_send(
        self, ctx: MessageContext, state: Any, result: Any, error: BaseException | None
    ) -> None:
        assert state == ("send", ctx.message_id)  # its own before's state, this send's
        self.log.append(f"{self.name} after_send {outcome(result, error)}")

    def before_handle(self, ctx: MessageContext) -> object:
        self.log.append(f"{self.name} before_handle {type(ctx.message).__name__}")
        return ("handle", ctx.message_id)

    def after_handle(
        self, ctx: MessageContext, state: Any, result: Any, error: BaseException | None
    ) -> None:
        assert state == ("handle", ctx.message_id)
        self.log.append(f"{self.name} after_handle {outcome(result, error)}")


class Around(Middleware):
    """Coroutine hooks, logging around ``call_next``."""

    def __init__(self, name: str, log: list[str], headers: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = log
        self.headers = headers

    async def send(self, ctx: MessageContext, call_next: SendNext) -> Any:
        self.log.append(f"{self.name} send>")
        try:
            return await call_next(headers=self.headers)
        finally:
            self.log.append(f"{self.name} send<")

    async def handle(self, ctx: MessageContext, call_next: Callable[[], Awaitable[Any]]) -> Any:
        self.log.append(f"{self.name} handle>")
        try:
            return await call_next()
        finally:
            self.log.append(f"{self.name} handle<")


async def test_sync_hooks_see_each_send_and_handling_once_in_order_with_its_outcome() -> None:
    log: list[str] = []
    async with Kernel(middleware=[Watch("w", log)]) as kernel:
        kernel.register(Echo)
        echo = kernel.ref(Echo, "e")
        assert await echo.ask(Ping(1)) == Pong(1)
        assert log == [
            "w before_send ask Ping",
            "w before_handle Ping",
            "w after_handle ok Pong(n=1)",
            "w after_send ok Pong(n=1)",
        ]
        log.clear()
        with pytest.raises(RemoteError, match="negative: -1"):
            await echo.ask(Ping(-1))
        assert log == [
            "w before_send ask Ping",
            "w before_handle Ping",
            "w after_handle error ValueError",
            "w after_send error RemoteError",
        ]
        log.clear()
        await echo.tell(Note("x"))
        await kernel.wait_idle()
        assert log == [
            "w before_send tell Note",
            "w after_send ok None",  # a tell's attempt ends once it is in the mailbox
            "w before_handle Note",
            "w after_handle ok None",
        ]


async def test_sync_hooks_see_a_cancelled_send_and_a_handler_cancelled_at_its_deadline() -> None:
    log: list[str] = []
    Gate.entered, Gate.release = asyncio.Event(), asyncio.Event()
    async with Kernel(middleware=[Watch("w", log)]) as kernel:
        kernel.register(Echo, cancel_at_deadline=True)
        echo = kernel.ref(Echo, "e")
        asking = asyncio.create_task(echo.ask(Ping(99), timeout=30))
        async with asyncio.timeout(5):
            await Gate.entered.wait()
        asking.cancel()  # the asker gives up: its send sees the cancellation
        with pytest.raises(asyncio.CancelledError):
            await asking
        assert log[-1] == "w after_send error CancelledError"
        Gate.release.set()
        await kernel.wait_idle()
        assert log[-1] == "w after_handle ok Pong(n=99)"  # (nobody waits: not cancelled)
        log.clear()
        Gate.entered, Gate.release = asyncio.Event(), asyncio.Event()
        # the handler is cancelled at the ask's deadline: its handling sees that
        with pytest.raises((AskTimeout, RemoteError)):  # whichever of the two is first
            await echo.ask(Ping(99), timeout=0.05)
        await kernel.wait_idle()
        assert "w after_handle error CancelledError" in log
        assert await echo.ask(Ping(2)) == Pong(2)  # the agent lives on


async def test_sync_hooks_run_in_the_chains_order_among_coroutine_hooks() -> None:
    log: list[str] = []
    Seen.headers = []
    chain = [
        Around("a", log, {"x-a": "a", "x-s": "from-a"}),
        Watch("s", log, {"x-s": "s", "x-b": "from-s"}),
        Around("b", log, {"x-b": "b"}),
    ]
    async with Kernel(middleware=chain) as kernel:
        kernel.register(Echo, middleware=[Watch("own", log)])
        assert await kernel.ref(Echo, "e").ask(Ping(1)) == Pong(1)
        assert log == [
            "a send>", "s before_send ask Ping", "b send>",
            "a handle>", "s before_handle Ping", "b handle>", "own before_handle Ping",
            "own after_handle ok Pong(n=1)", "b handle<", "s after_handle ok Pong(n=1)",
            "a handle<",
            "b send<", "s after_send ok Pong(n=1)", "a send<",
        ]  # fmt: skip
        await kernel.ref(Echo, "e").tell(Note("h"), headers={"x-own": "1", "x-a": "mine"})
        await kernel.wait_idle()
    # an inner hook's headers over an outer one's, sync or not, all over the sender's
    assert Seen.headers == [{"x-own": "1", "x-a": "a", "x-s": "s", "x-b": "b"}]


class Refuse:
    """A before hook that raises for n == 1 (and an after hook that raises for n == 2)."""

    def __init__(self, where: str) -> None:
        self.where = where

    def __repr__(self) -> str:
        return f"<Refuse {self.where}>"

    def before_send(self, ctx: MessageContext) -> tuple[None, None]:
        if self.where == "send" and getattr(ctx.message, "n", 0) == 1:
            raise LookupError("no sending 1")
        return None, None

    def after_send(
        self, ctx: MessageContext, state: None, result: Any, error: BaseException | None
    ) -> None:
        if self.where == "send" and getattr(ctx.message, "n", 0) == 2:
            raise LookupError("no reply to 2")

    def before_handle(self, ctx: MessageContext) -> None:
        if self.where == "handle" and getattr(ctx.message, "n", 0) == 1:
            raise LookupError("no handling 1")

    def after_handle(
        self, ctx: MessageContext, state: None, result: Any, error: BaseException | None
    ) -> None:
        if self.where == "handle" and getattr(ctx.message, "n", 0) == 2:
            raise LookupError("no reply to 2")


async def test_a_raising_sync_hook_fails_that_message_naming_the_hook_and_the_kernel_lives_on() -> (
    None
):
    log: list[str] = []
    async with Kernel(middleware=[Watch("outer", log), Refuse("handle")]) as kernel:
        kernel.register(Echo)
        echo = kernel.ref(Echo, "e")
        with pytest.raises(RemoteError, match="no handling 1") as failed:
            await echo.ask(Ping(1))
        assert "<Refuse handle>.before_handle" in failed.value.traceback
        assert "outer after_handle error LookupError" in log  # entered hooks still exit
        with pytest.raises(RemoteError, match="no reply to 2") as failed:
            await echo.ask(Ping(2))
        assert "<Refuse handle>.after_handle" in failed.value.traceback
        assert await echo.ask(Ping(3)) == Pong(3)
        assert kernel.stats().types["Echo"].failed == 2
    log.clear()
    async with Kernel(middleware=[Watch("outer", log), Refuse("send")]) as kernel:
        kernel.register(Echo)
        echo = kernel.ref(Echo, "e")
        with pytest.raises(LookupError, match="no sending 1") as raised:
            await echo.ask(Ping(1))
        assert "raised in <Refuse send>.before_send" in (raised.value.__notes__ or [])
        assert log == ["outer before_send ask Ping", "outer after_send error LookupError"]
        log.clear()
        with pytest.raises(LookupError, match="no reply to 2"):
            await echo.ask(Ping(2))  # handled, then the after hook failed the send
        # ... and the hook outside it hears that error
        assert log[0] == "outer before_send ask Ping"
        assert log[-1] == "outer after_send error LookupError"
        assert await echo.ask(Ping(3)) == Pong(3)
    log.clear()
    # the same outside a coroutine hook (a link of its own, not run inside the attempt)
    async with Kernel(middleware=[Refuse("send"), Around("inner", log)]) as kernel:
        kernel.register(Echo)
        echo = kernel.ref(Echo, "e")
        with pytest.raises(LookupError, match="no sending 1") as raised:
            await echo.ask(Ping(1))
        assert "raised in <Refuse send>.before_send" in (raised.value.__notes__ or [])
        assert log == []  # nothing inside it ran
        with pytest.raises(LookupError, match="no reply to 2") as raised:
            await echo.ask(Ping(2))
        assert "raised in <Refuse send>.after_send" in (raised.value.__notes__ or [])
        assert await echo.ask(Ping(3)) == Pong(3)


def test_a_sync_hook_that_is_a_coroutine_or_doubles_a_coroutine_hook_is_refused() -> None:
    class AsyncBefore:
        async def before_handle(self, ctx: MessageContext) -> None:
            pass

    class Both:
        async def send(self, ctx: MessageContext, call_next: SendNext) -> Any:
            return await call_next()

        def before_send(self, ctx: MessageContext) -> tuple[None, None]:
            return None, None

    with pytest.raises(TypeError, match="AsyncBefore.*before_handle must be a plain"):
        Kernel(middleware=[AsyncBefore()])
    with pytest.raises(TypeError, match="Both.*both 'send' and 'before_send'"):
        Kernel(middleware=[Both()])


async def test_a_chain_of_sync_hooks_only_still_composes_and_an_empty_one_does_not() -> None:
    async with Kernel(middleware=[Watch("w", [])]) as kernel:
        kernel.register(Echo)
        atype = kernel._runtime.types["Echo"]  # noqa: SLF001 - the hot path's table itself
        assert atype.handlers[Ping] is not Echo.ping
        assert atype.table[Ping] is Echo.ping
        assert kernel._runtime.outbound != ()  # noqa: SLF001 - root sends go through it
    async with Kernel() as kernel:
        kernel.register(Echo)
        assert kernel._runtime.types["Echo"].handlers[Ping] is Echo.ping  # noqa: SLF001


class Show(Message):
    wait: bool = False


class HeadersOf(Agent):
    """Answers with the headers its message carried (read once released, if told to
    wait)."""

    @handler
    async def show(self, msg: Show) -> dict[str, str]:
        if msg.wait:
            Gate.entered.set()
            await Gate.release.wait()
        return dict(self.context.headers)


class Key(str):
    pass


async def test_an_all_sync_asks_headers_are_checked_and_copied_from_each_before_send() -> None:
    Gate.entered, Gate.release = asyncio.Event(), asyncio.Event()
    own = {"x-a": "1"}  # the middleware's own dict, returned by every before_send
    log: list[str] = []
    chain = [Watch("a", log, own), Watch("b", log)]  # two links: the all-synchronous path
    async with Kernel(middleware=chain) as kernel:
        kernel.register(HeadersOf)
        ref = kernel.ref(HeadersOf, "h")
        asked = asyncio.create_task(ref.ask(Show(wait=True)))
        async with asyncio.timeout(5):
            await Gate.entered.wait()
        own["x-a"] = "changed"  # while it is handled: its message's headers are a copy
        Gate.release.set()
        async with asyncio.timeout(5):
            assert await asked == {"x-a": "1"}
        own[Key("x-k")] = "k"  # a str subclass is a str (checked the general way)
        assert await ref.ask(Show()) == {"x-a": "changed", "x-k": "k"}
        own[1] = "one"  # type: ignore[index]
        with pytest.raises(TypeError, match=r"headers must map str to str, got 1: 'one'") as info:
            await ref.ask(Show())
        assert any(note.endswith(".before_send") for note in info.value.__notes__)


class Fresh:
    """A before_send that promises a new dict of str each time (``fresh_headers``)."""

    fresh_headers = True

    def __init__(self) -> None:
        self.given: list[dict[str, str]] = []

    def before_send(self, ctx: MessageContext) -> tuple[None, dict[str, str]]:
        headers = {"x-f": "fresh", "x-n": str(len(self.given))}
        self.given.append(headers)
        return None, headers


async def test_a_fresh_before_sends_headers_merge_as_any_others_in_an_all_sync_ask() -> None:
    fresh, log = Fresh(), list[str]()
    inner = Watch("inner", log, {"x-b": "2", "x-f": "inner"})
    async with Kernel(middleware=[fresh, inner]) as kernel:
        kernel.register(HeadersOf)
        ref = kernel.ref(HeadersOf, "h")
        # an inner hook's keys over an outer one's, both over the sender's
        seen = await ref.ask(Show(), headers={"x-own": "o", "x-f": "sender", "x-n": "s"})
        assert seen == {"x-own": "o", "x-f": "inner", "x-n": "0", "x-b": "2"}
        assert await ref.ask(Show()) == {"x-f": "inner", "x-n": "1", "x-b": "2"}
    async with Kernel(middleware=[fresh, Watch("plain", log)]) as kernel:
        kernel.register(HeadersOf)
        assert await kernel.ref(HeadersOf, "h").ask(Show()) == {"x-f": "fresh", "x-n": "2"}
    assert fresh.given == [
        {"x-f": "fresh", "x-n": "0"},
        {"x-f": "fresh", "x-n": "1"},
        {"x-f": "fresh", "x-n": "2"},
    ]  # (never changed by the chain)
