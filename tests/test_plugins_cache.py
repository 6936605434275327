"""kerna.plugins.cached: a response cache with single-flight, on virtual time.

Each test runs its scenario on a loop of its own ``VirtualClock`` (``run``): the
computations "take" seconds of virtual time, TTLs expire by ``clock.advance``, and
every wait is bounded in virtual time, so a regression fails at once instead of
hanging. Counts are exact: the clock makes the interleaving deterministic.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar

import pytest

from kerna import (
    Agent,
    AskTimeout,
    ConfigError,
    Kernel,
    KernelStopped,
    Message,
    RegistrationError,
    RemoteError,
    Request,
    handler,
)
from kerna.plugins import CacheStats, cache_stats, cached
from kerna.testing import VirtualClock

from .conftest import assert_no_stray_tasks

T = TypeVar("T")


def run(scenario: Callable[[VirtualClock], Awaitable[T]]) -> T:
    clock = VirtualClock()
    return clock.run(scenario, clock)


class Summary(Message):
    text: str


class Summarize(Request[Summary]):
    text: str
    request_id: int = 0


class Fail(Request[Summary]):
    text: str


class Opaque(Request[Summary]):
    payload: Any  # an object() here does not encode


class Ask(Request[str]):
    pass


class Summarizer(Agent):
    """Summaries take 1 s of virtual time; every computation is recorded."""

    calls: ClassVar[list[str]] = []
    release: ClassVar[asyncio.Event | None] = None  # when set, computations wait for it

    @handler
    @cached(ttl=60, maxsize=3)
    async def summarize(self, msg: Summarize) -> Summary:
        Summarizer.calls.append(msg.text)
        if Summarizer.release is not None:
            await Summarizer.release.wait()
        await asyncio.sleep(1)
        return Summary(text=msg.text.upper())

    @handler
    @cached(ttl=60, maxsize=10)
    async def fail(self, msg: Fail) -> Summary:
        Summarizer.calls.append(msg.text)
        await asyncio.sleep(1)
        raise ValueError(f"cannot summarize {msg.text}")

    @handler
    @cached(ttl=60, maxsize=10)
    async def opaque(self, msg: Opaque) -> Summary:
        return Summary(text="never")

    @handler
    async def plain(self, msg: Ask) -> str:
        return "plain"


class Keyed(Agent):
    calls: ClassVar[int] = 0

    @handler
    @cached(ttl=60, maxsize=10, key=lambda msg: msg.text)
    async def summarize(self, msg: Summarize) -> Summary:
        Keyed.calls += 1
        return Summary(text=f"{msg.text}#{msg.request_id}")


@pytest.fixture(autouse=True)
def _fresh_records() -> None:
    Summarizer.calls = []
    Summarizer.release = None
    Keyed.calls = 0


async def ask_many(kernel: Kernel, keys: list[str], message: Message, **kw: Any) -> list[Any]:
    asks = [kernel.ref(Summarizer, key).ask(message, **kw) for key in keys]
    async with asyncio.timeout(30):
        return await asyncio.gather(*asks, return_exceptions=True)


def test_concurrent_identical_asks_compute_once_for_every_activation_of_the_type() -> None:
    async def scenario(clock: VirtualClock) -> None:
        async with Kernel() as kernel:
            kernel.register(Summarizer)
            keys = ["a"] * 10 + ["b"] * 5 + ["c"]  # one agent's mailbox, and others'
            replies = await ask_many(kernel, keys, Summarize(text="doc"))
            assert replies == [Summary(text="DOC")] * 16
            assert Summarizer.calls == ["doc"]
            assert cache_stats(kernel, Summarizer.summarize) == CacheStats(
                hits=0, misses=1, coalesced=15, size=1, in_flight=0
            )
            assert clock.time() == 1.0  # one computation's time, not sixteen
            again = await kernel.ref(Summarizer, "d").ask(Summarize(text="doc"))
            assert again == Summary(text="DOC")
            assert cache_stats(kernel, Summarizer.summarize).hits == 1
            assert Summarizer.calls == ["doc"]

    run(scenario)


def test_an_error_reaches_every_coalesced_asker_and_is_not_cached() -> None:
    async def scenario(clock: VirtualClock) -> None:
        async with Kernel() as kernel:
            kernel.register(Summarizer)
            replies = await ask_many(kernel, ["a"] * 4 + ["b"] * 2, Fail(text="doc"))
            assert Summarizer.calls == ["doc"]
            for reply in replies:
                assert isinstance(reply, RemoteError)
                assert reply.type_name == "ValueError"
                assert "cannot summarize doc" in reply.message
            assert len({id(reply) for reply in replies}) == 6  # one error object each
            (again,) = await ask_many(kernel, ["a"], Fail(text="doc"))
            assert isinstance(again, RemoteError)
            assert Summarizer.calls == ["doc", "doc"]  # computed again: not cached
            stats = cache_stats(kernel, Summarizer.fail)
            assert (stats.misses, stats.coalesced, stats.hits, stats.size) == (2, 5, 0, 0)

    run(scenario)


@pytest.mark.parametrize("cancel_at_deadline", [False, True])
def test_a_first_asker_that_gives_up_leaves_the_computation_to_the_others(
    cancel_at_deadline: bool,
) -> None:
    async def scenario(clock: VirtualClock) -> None:
        async with Kernel() as kernel:
            kernel.register(Summarizer, cancel_at_deadline=cancel_at_deadline)
            ref = kernel.ref(Summarizer, "a")
            first = asyncio.create_task(ref.ask(Summarize(text="doc"), timeout=0.5))
            cancelled = asyncio.create_task(ref.ask(Summarize(text="doc")))
            await asyncio.sleep(0.1)
            later = asyncio.create_task(ref.ask(Summarize(text="doc"), timeout=10))
            other = asyncio.create_task(
                kernel.ref(Summarizer, "b").ask(Summarize(text="doc"), timeout=10)
            )
            cancelled.cancel()
            async with asyncio.timeout(30):
                with pytest.raises(AskTimeout):
                    await first
                with pytest.raises(asyncio.CancelledError):
                    await cancelled
                assert await later == Summary(text="DOC")
                assert await other == Summary(text="DOC")
            assert Summarizer.calls == ["doc"]
            assert clock.time() == 1.0

    run(scenario)


def test_answers_expire_after_the_ttl_on_the_loop_clock() -> None:
    async def scenario(clock: VirtualClock) -> None:
        async with Kernel() as kernel:
            kernel.register(Summarizer)
            ref = kernel.ref(Summarizer, "a")
            await ref.ask(Summarize(text="doc"))  # computed at t=1, cached until t=61
            clock.advance(59.5)
            await ref.ask(Summarize(text="doc"))
            assert Summarizer.calls == ["doc"]
            clock.advance(1.0)
            await ref.ask(Summarize(text="doc"))
            assert Summarizer.calls == ["doc", "doc"]
            stats = cache_stats(kernel, Summarizer.summarize)
            assert (stats.hits, stats.misses) == (1, 2)

    run(scenario)


def test_the_least_recently_used_answer_goes_when_maxsize_is_reached() -> None:
    async def scenario(clock: VirtualClock) -> None:
        async with Kernel() as kernel:
            kernel.register(Summarizer)  # summarize: maxsize=3
            ref = kernel.ref(Summarizer, "a")
            for text in ["a", "b", "c", "a", "d"]:  # "a" used again: "b" is the oldest
                await ref.ask(Summarize(text=text))
            assert Summarizer.calls == ["a", "b", "c", "d"]
            assert cache_stats(kernel, Summarizer.summarize).size == 3
            for text in ["a", "c", "d"]:
                await ref.ask(Summarize(text=text))
            assert Summarizer.calls == ["a", "b", "c", "d"]
            await ref.ask(Summarize(text="b"))
            assert Summarizer.calls == ["a", "b", "c", "d", "b"]

    run(scenario)


def test_a_key_function_decides_which_messages_are_the_same() -> None:
    async def scenario(clock: VirtualClock) -> None:
        async with Kernel() as kernel:
            kernel.register(Keyed)
            ref = kernel.ref(Keyed, "a")
            first = await ref.ask(Summarize(text="doc", request_id=1))
            second = await ref.ask(Summarize(text="doc", request_id=2))
            assert first == second == Summary(text="doc#1")
            await ref.ask(Summarize(text="other", request_id=3))
            assert Keyed.calls == 2
            # Without the key function, the request id would count:
            kernel.register(Summarizer)
            s = kernel.ref(Summarizer, "a")
            await s.ask(Summarize(text="doc", request_id=1))
            await s.ask(Summarize(text="doc", request_id=2))
            assert Summarizer.calls == ["doc", "doc"]

    run(scenario)


def test_an_unhashable_key_fails_its_ask_naming_the_message_type() -> None:
    class Listed(Agent):
        @handler
        @cached(ttl=1, maxsize=1, key=lambda msg: [msg.text])
        async def summarize(self, msg: Summarize) -> Summary:
            return Summary(text=msg.text)

    async def scenario(clock: VirtualClock) -> None:
        async with Kernel() as kernel:
            kernel.register(Listed)
            with pytest.raises(RemoteError, match="unhashable list for a Summarize") as info:
                await kernel.ref(Listed, "a").ask(Summarize(text="doc"))
            assert info.value.type_name == "TypeError"

    run(scenario)


def test_a_message_that_does_not_encode_fails_its_ask_naming_the_type() -> None:
    async def scenario(clock: VirtualClock) -> None:
        async with Kernel() as kernel:
            kernel.register(Summarizer)
            ref = kernel.ref(Summarizer, "a")
            with pytest.raises(RemoteError) as info:
                await ref.ask(Opaque(payload=object()))
            assert info.value.type_name == "TypeError"
            assert "a Opaque cannot be a cache key" in info.value.message
            assert "key= function" in info.value.message
            assert await ref.ask(Ask()) == "plain"  # nothing else is lost
            assert await ref.ask(Summarize(text="doc")) == Summary(text="DOC")

    run(scenario)


def test_the_mailbox_is_free_while_a_computation_runs() -> None:
    async def scenario(clock: VirtualClock) -> None:
        async with Kernel() as kernel:
            kernel.register(Summarizer)
            Summarizer.release = asyncio.Event()
            ref = kernel.ref(Summarizer, "a")
            pending = asyncio.create_task(ref.ask(Summarize(text="doc"), timeout=100))
            async with asyncio.timeout(5):
                assert await ref.ask(Ask()) == "plain"  # answered during the computation
            assert not pending.done()
            assert cache_stats(kernel, Summarizer.summarize).in_flight == 1
            Summarizer.release.set()
            async with asyncio.timeout(5):
                assert await pending == Summary(text="DOC")

    run(scenario)


def test_a_tell_waits_for_the_computation_and_warms_the_cache() -> None:
    async def scenario(clock: VirtualClock) -> None:
        async with Kernel() as kernel:
            kernel.register(Summarizer)
            ref = kernel.ref(Summarizer, "a")
            await ref.tell(Summarize(text="doc"))
            await kernel.wait_idle(timeout=10)  # the computation counts as work
            assert clock.time() == 1.0
            assert await ref.ask(Summarize(text="doc")) == Summary(text="DOC")
            assert Summarizer.calls == ["doc"]
            assert cache_stats(kernel, Summarizer.summarize).hits == 1

    run(scenario)


def test_stop_fails_askers_of_a_running_computation_with_kernel_stopped() -> None:
    async def scenario(clock: VirtualClock) -> None:
        before = asyncio.all_tasks()
        kernel = Kernel(stop_grace=2.0)
        await kernel.start()
        kernel.register(Summarizer)
        Summarizer.release = asyncio.Event()  # never set: the computation never ends
        asks = [
            asyncio.create_task(kernel.ref(Summarizer, key).ask(Summarize(text="doc"), timeout=100))
            for key in ["a", "a", "b"]
        ]
        await asyncio.sleep(0.1)
        async with asyncio.timeout(10):
            await kernel.stop()
            outcomes = await asyncio.gather(*asks, return_exceptions=True)
        assert [type(outcome) for outcome in outcomes] == [KernelStopped] * 3
        assert clock.time() == pytest.approx(2.1)  # the grace period waited for it
        assert cache_stats(kernel, Summarizer.summarize).in_flight == 0
        assert_no_stray_tasks(before)

    run(scenario)


def test_a_computation_that_ends_within_stops_grace_still_answers() -> None:
    async def scenario(clock: VirtualClock) -> None:
        kernel = Kernel(stop_grace=5.0)
        await kernel.start()
        kernel.register(Summarizer)
        ask = asyncio.create_task(kernel.ref(Summarizer, "a").ask(Summarize(text="doc")))
        await asyncio.sleep(0.1)
        async with asyncio.timeout(10):
            await kernel.stop()
            assert await ask == Summary(text="DOC")
        assert clock.time() == 1.0

    run(scenario)


def test_bad_options_and_bad_use_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="ttl must be > 0"):
        cached(ttl=0, maxsize=1)
    with pytest.raises(TypeError, match="maxsize must be an int"):
        cached(ttl=1, maxsize="10")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="maxsize must be > 0"):
        cached(ttl=1, maxsize=0)
    with pytest.raises(TypeError, match="key must be a function"):
        cached(ttl=1, maxsize=1, key="text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be 'async def'"):

        @cached(ttl=1, maxsize=1)  # type: ignore[arg-type]
        def sync(self: Agent, msg: Summarize) -> Summary:
            return Summary(text="")

    with pytest.raises(TypeError, match="is not a @cached handler"):
        cache_stats(Kernel(), Summarizer.plain)
    assert cache_stats(Kernel(), Summarizer.summarize) == CacheStats()


def test_registration_checks_a_cached_handler_like_any_handler() -> None:
    class Wrong(Agent):
        @handler
        @cached(ttl=1, maxsize=1)
        async def summarize(self, msg: Summarize) -> str:
            return ""

    with pytest.raises(RegistrationError, match="Summarize is a Request\\[Summary\\]"):
        Kernel().register(Wrong)


def test_without_cachetools_the_decorator_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "cachetools", None)  # import cachetools fails
    with pytest.raises(ConfigError, match=r"pip install 'kerna\[plugins\]'"):
        cached(ttl=1, maxsize=1)
