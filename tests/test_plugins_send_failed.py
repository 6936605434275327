"""A synchronous send link's timeout and ``send_failed``: ``before_send`` may answer
``(state, headers, timeout)`` to bound the attempts inside it, and a middleware with an
``async def send_failed(ctx, state, error, call_next)`` gets a failed attempt (or its own
``before_send``'s error) instead of ``after_send``, and may make further attempts: what
``Resilience`` is built on. The same wherever the link sits in the chain: alone, among
synchronous links only (every hook inline in the ask's coroutine), or next to coroutine
hooks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from kerna import Agent, AskTimeout, Kernel, Message, MessageContext, RemoteError, Request, handler
from kerna.plugins import SendNext

from .test_plugins_sync_hooks import Around, Watch

pytestmark = pytest.mark.anyio


class Pong(Message):
    n: int
    message_id: int
    correlation_id: int
    headers: dict[str, str]


class Ping(Request[Pong]):
    n: int


class Hold(Request[Pong]):
    """Handled only once released (or cancelled)."""


class Seen:
    asks: list[int] = []  # message ids the handler got
    time_left: list[float] = []
    entered = asyncio.Event()
    release = asyncio.Event()


class Flaky(Agent):
    @handler
    async def ping(self, msg: Ping) -> Pong:
        ctx = self.context
        Seen.asks.append(ctx.message_id)
        left = ctx.time_left()
        assert left is not None
        Seen.time_left.append(left)
        if len(Seen.asks) <= msg.n:  # the first n attempts fail
            raise ConnectionError(f"attempt {len(Seen.asks)} failed")
        return Pong(msg.n, ctx.message_id, ctx.correlation_id, dict(ctx.headers))

    @handler
    async def hold(self, msg: Hold) -> Pong:
        Seen.entered.set()
        await Seen.release.wait()
        return Pong(0, 0, 0, {})


@pytest.fixture(autouse=True)
def fresh() -> None:
    Seen.asks, Seen.time_left = [], []
    Seen.entered, Seen.release = asyncio.Event(), asyncio.Event()


class Again:
    """Retries a failed ask once per ``retries``, each attempt bounded by ``timeout``; a
    ``before_send`` that raises (``refuse``) is answered by ``send_failed`` too."""

    def __init__(
        self, log: list[str], retries: int = 1, timeout: float | None = None, refuse: bool = False
    ) -> None:
        self.log = log
        self.retries = retries
        self.timeout = timeout
        self.refuse = refuse

    def before_send(self, ctx: MessageContext) -> tuple[Any, Mapping[str, str], float | None]:
        self.log.append(f"before {ctx.kind}")
        if self.refuse:
            raise LookupError("refused before any attempt")
        return ("state", ctx.message_id), {"x-again": "1"}, self.timeout

    def after_send(
        self, ctx: MessageContext, state: Any, result: Any, error: BaseException | None
    ) -> None:
        assert state == ("state", ctx.message_id)
        self.log.append(f"after {'ok' if error is None else type(error).__name__}")

    async def send_failed(
        self, ctx: MessageContext, state: Any, error: Exception, call_next: SendNext
    ) -> Any:
        self.log.append(f"failed {type(error).__name__} state={state is not None}")
        if isinstance(error, LookupError):
            return Pong(-1, 0, 0, {})  # answered without an attempt
        for _ in range(self.retries):
            try:
                return await call_next(self.timeout)
            except RemoteError as again:
                self.log.append(f"failed again {again.type_name}")
                error = again
        raise error


CHAINS: dict[str, Callable[[list[str]], list[object]]] = {
    "alone": lambda log: [Again(log)],
    "inside a sync link": lambda log: [Watch("w", log, {"x-w": "w"}), Again(log)],
    "outside a sync link": lambda log: [Again(log), Watch("w", log, {"x-w": "w"})],
    "inside a coroutine hook": lambda log: [Around("a", log, {"x-w": "w"}), Again(log)],
    "outside a coroutine hook": lambda log: [Again(log), Around("a", log, {"x-w": "w"})],
}


@pytest.mark.parametrize("chain", CHAINS)
async def test_send_failed_gets_a_failed_attempt_and_makes_a_fresh_one_with_its_headers(
    chain: str,
) -> None:
    log: list[str] = []
    async with Kernel(middleware=CHAINS[chain](log)) as kernel:
        kernel.register(Flaky)
        pong = await kernel.ref(Flaky, "f").ask(Ping(1))  # its first attempt fails
    first, second = Seen.asks
    assert pong.message_id == second != first  # another attempt: a fresh message
    assert pong.correlation_id == first  # of the same conversation
    assert pong.headers["x-again"] == "1"  # the link's own headers on the retry too
    if chain != "alone":
        assert pong.headers["x-w"] == "w"  # and those of the link next to it
    assert log.count("before ask") == 1  # once per send, however many attempts
    assert "failed RemoteError state=True" in log
    assert "after RemoteError" not in log  # send_failed instead
    assert "after ok" not in log


@pytest.mark.parametrize("chain", CHAINS)
async def test_what_send_failed_raises_is_the_asks_error(chain: str) -> None:
    log: list[str] = []
    async with Kernel(middleware=CHAINS[chain](log)) as kernel:
        kernel.register(Flaky)
        with pytest.raises(RemoteError, match="attempt 2 failed"):
            await kernel.ref(Flaky, "f").ask(Ping(5))
    assert len(Seen.asks) == 2  # the first attempt and one retry
    assert log.count("failed again ConnectionError") == 1


@pytest.mark.parametrize("chain", CHAINS)
async def test_a_sync_links_timeout_bounds_each_attempt_inside_it(chain: str) -> None:
    log: list[str] = []
    links = CHAINS[chain](log)
    for link in links:
        if isinstance(link, Again):
            link.timeout = 0.2
    async with Kernel(middleware=links, ask_timeout=30) as kernel:
        kernel.register(Flaky)
        await kernel.ref(Flaky, "f").ask(Ping(1))
        assert all(0 < left <= 0.2 for left in Seen.time_left)  # not the ask's 30 s
        # an attempt that gets no reply in time fails with that timeout
        held = asyncio.create_task(kernel.ref(Flaky, "h").ask(Hold()))
        with pytest.raises(AskTimeout, match=r"in 0\.2s"):
            async with asyncio.timeout(10):
                await held
        Seen.release.set()


@pytest.mark.parametrize("chain", CHAINS)
async def test_a_before_send_that_raises_goes_to_its_send_failed_and_no_attempt_is_made(
    chain: str,
) -> None:
    log: list[str] = []
    links = CHAINS[chain](log)
    for link in links:
        if isinstance(link, Again):
            link.refuse = True
    async with Kernel(middleware=links) as kernel:
        kernel.register(Flaky)
        assert (await kernel.ref(Flaky, "f").ask(Ping(0))).n == -1
    assert Seen.asks == []
    assert "failed LookupError state=False" in log


@pytest.mark.parametrize("chain", CHAINS)
async def test_a_cancelled_ask_reaches_after_send_not_send_failed(chain: str) -> None:
    log: list[str] = []
    async with Kernel(middleware=CHAINS[chain](log)) as kernel:
        kernel.register(Flaky)
        asking = asyncio.create_task(kernel.ref(Flaky, "h").ask(Hold()))
        async with asyncio.timeout(5):
            await Seen.entered.wait()
        asking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asking
        Seen.release.set()
    assert "after CancelledError" in log
    assert not any(line.startswith("failed") for line in log)


async def test_a_tells_failed_attempt_goes_to_send_failed_too() -> None:
    class Note(Message):
        pass

    log: list[str] = []
    async with Kernel(middleware=[Again(log, retries=0)]) as kernel:
        kernel.register(Flaky)
        with pytest.raises(Exception, match="Note"):  # Flaky does not handle it
            await kernel.ref(Flaky, "f").tell(Note())
    assert log == ["before tell", "failed UnhandledMessage state=True"]


def test_send_failed_needs_the_plain_send_hooks_and_no_send() -> None:
    class Alone:
        async def send_failed(
            self, ctx: MessageContext, state: Any, error: Exception, call_next: SendNext
        ) -> Any:
            raise error

        def before_handle(self, ctx: MessageContext) -> None:
            pass

    class NotAsync:
        def before_send(self, ctx: MessageContext) -> tuple[None, None]:
            return None, None

        def send_failed(self, ctx: MessageContext, state: Any, error: Exception) -> Any:
            raise error

    with pytest.raises(TypeError, match="Alone.*send_failed must be an 'async def'"):
        Kernel(middleware=[Alone()])
    with pytest.raises(TypeError, match="NotAsync.*send_failed must be an 'async def'"):
        Kernel(middleware=[NotAsync()])


async def test_a_before_send_answer_of_another_shape_is_a_clear_error() -> None:
    class Wrong:
        def before_send(self, ctx: MessageContext) -> Any:
            return None, None, None, None

    async with Kernel(middleware=[Wrong()]) as kernel:
        kernel.register(Flaky)
        with pytest.raises(TypeError, match=r"\(state, headers or None, timeout or None\)"):
            await kernel.ref(Flaky, "f").ask(Ping(0))
