"""kerna.plugins' fallbacks, degraded-result markers and dependencies, on virtual time:
the seed's story (sentiment analysis down -> keyword filtering), a fallback used when
the breaker is open, on a timeout, a fallback that fails too, and calls to a named
external dependency from handlers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from kerna import (
    Agent,
    CircuitOpen,
    ConfigError,
    Kernel,
    Message,
    RemoteError,
    Request,
    UsageError,
    handler,
)
from kerna.plugins import (
    Breaker,
    Failed,
    Policy,
    Resilience,
    Retry,
    degradation,
    dependency,
    is_degraded,
)
from kerna.testing import VirtualClock

T = TypeVar("T")


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    return VirtualClock().run(scenario)


class Mood(Message):
    label: str
    degraded: bool = False


class Analyse(Request[Mood]):
    text: str


class Review(Request[Mood]):
    text: str


class Model:
    """The simulated sentiment model behind the agent: fails or hangs on demand."""

    def __init__(self) -> None:
        self.down = False
        self.hang = False
        self.calls = 0


class Sentiment(Agent):
    def __init__(self, model: Model) -> None:
        self.model = model

    @handler
    async def analyse(self, msg: Analyse) -> Mood:
        self.model.calls += 1
        if self.model.hang:
            await asyncio.sleep(3600)
        if self.model.down:
            raise ConnectionError("sentiment model unreachable")
        return Mood("positive" if "good" in msg.text else "negative")


class Reviewer(Agent):
    """A critical workflow step that uses the sentiment result."""

    @handler
    async def review(self, msg: Review) -> Mood:
        mood = await self.ref(Sentiment, "s").ask(Analyse(msg.text))
        return Mood(mood.label, degraded=is_degraded(self))


async def keywords(failed: Failed) -> Mood:
    """The fallback: keyword filtering."""
    assert failed.context is not None
    text = failed.context.message.text
    return Mood("positive" if "great" in text or "good" in text else "neutral")


def make(model: Model, policy: Policy) -> Kernel:
    resilience = Resilience(policies={"sentiment": policy}, targets={Sentiment: "sentiment"})
    kernel = Kernel(middleware=[resilience])
    kernel.register(Sentiment, factory=lambda: Sentiment(model), cancel_at_deadline=True)
    kernel.register(Reviewer)
    return kernel


def test_a_failing_target_falls_back_and_the_workflow_carries_the_degraded_marker() -> None:
    model = Model()

    async def scenario() -> None:
        async with make(model, Policy(fallback=keywords)) as kernel:
            with degradation() as healthy:
                assert await kernel.ref(Reviewer, "r").ask(Review("good")) == Mood("positive")
            assert not healthy.degraded
            model.down = True
            with degradation() as d:
                mood = await kernel.ref(Reviewer, "r").ask(Review("a great day"))
            assert mood == Mood("positive", degraded=True)  # the handler saw it too
            assert d.degraded
            assert d.targets == ["Sentiment"]
            with degradation() as again:  # the next conversation starts clean
                model.down = False
                assert await kernel.ref(Reviewer, "r").ask(Review("bad")) == Mood("negative")
            assert not again.degraded

    run(scenario)


def test_an_open_breaker_and_a_timeout_go_to_the_fallback_without_calling_the_target() -> None:
    model = Model()
    policy = Policy(timeout=0.5, breaker=Breaker(failures=2, reset_timeout=60), fallback=keywords)

    async def scenario() -> None:
        async with make(model, policy) as kernel:
            model.hang = True
            loop = asyncio.get_running_loop()
            ref = kernel.ref(Sentiment, "s")
            with degradation() as d:
                assert await ref.ask(Analyse("good"), timeout=30) == Mood("positive")
            assert loop.time() == pytest.approx(0.5)  # the target's timeout, not the ask's
            assert d.degraded
            assert await ref.ask(Analyse("meh")) == Mood("neutral")  # 2nd timeout: it opens
            calls = model.calls
            with degradation() as d2:
                assert await ref.ask(Analyse("good")) == Mood("positive")
            assert model.calls == calls  # open: the fallback answered at once
            assert loop.time() == pytest.approx(1.0)
            assert d2.degraded

    run(scenario)


def test_a_fallback_that_fails_gives_the_original_error_with_the_fallbacks_attached() -> None:
    model = Model()
    model.down = True

    async def broken(failed: Failed) -> Mood:
        raise LookupError("keyword list missing")

    async def scenario() -> None:
        async with make(model, Policy(fallback=broken)) as kernel:
            with pytest.raises(RemoteError) as caught:
                await kernel.ref(Sentiment, "s").ask(Analyse("x"))
            error = caught.value
            assert error.type_name == "ConnectionError"
            assert isinstance(error.__cause__, LookupError)
            assert any("fallback of Sentiment failed" in note for note in error.__notes__)

    run(scenario)


# -- dependencies ------------------------------------------------------------------------


class Remote:
    """A simulated external API."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def complete(self, prompt: str) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("503")
        return prompt.upper()

    async def slow(self) -> str:
        self.calls += 1
        await asyncio.sleep(3600)
        return "never"


class Ask(Request[str]):
    prompt: str


class Writer(Agent):
    def __init__(self, api: Remote) -> None:
        self.api = api

    @handler
    async def ask(self, msg: Ask) -> str:
        if msg.prompt == "block":
            try:
                async with dependency(self, "openai"):
                    return await self.api.slow()
            except (CircuitOpen, TimeoutError) as exc:
                return type(exc).__name__
        return await dependency(self, "openai").call(self.api.complete, msg.prompt)


async def canned(failed: Failed) -> str:
    return f"canned:{failed.args[0]}"


def writer_kernel(api: Remote, policy: Policy) -> Kernel:
    resilience = Resilience(policies={"llm": policy}, targets={"openai": "llm"})
    kernel = Kernel(middleware=[resilience])
    kernel.register(Writer, factory=lambda: Writer(api))
    return kernel


def test_a_dependency_call_gets_its_policys_retries_and_fallback() -> None:
    api = Remote(failures=2)
    policy = Policy(retry=Retry(on=(ConnectionError,), max_retries=2), fallback=canned)

    async def scenario() -> None:
        async with writer_kernel(api, policy) as kernel:
            assert await kernel.ref(Writer, "w").ask(Ask("hi")) == "HI"
            assert api.calls == 3
            api.failures, api.calls = 10, 0
            with degradation() as d:
                assert await kernel.ref(Writer, "w").ask(Ask("hi")) == "canned:hi"
            assert api.calls == 3
            assert d.degraded

    run(scenario)


def test_async_with_a_dependency_applies_its_timeout_and_breaker() -> None:
    api = Remote(failures=0)
    policy = Policy(timeout=2.0, breaker=Breaker(failures=1, reset_timeout=60), fallback=canned)

    async def scenario() -> None:
        async with writer_kernel(api, policy) as kernel:
            ref = kernel.ref(Writer, "w")
            assert await ref.ask(Ask("block")) == "TimeoutError"
            assert asyncio.get_running_loop().time() == pytest.approx(2.0)
            assert await ref.ask(Ask("block")) == "CircuitOpen"
            assert api.calls == 1

    run(scenario)


class Lost(Agent):
    @handler
    async def ask(self, msg: Ask) -> str:
        try:
            dependency(self, msg.prompt)
        except (ConfigError, UsageError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return "found"


def test_misuse_is_a_clear_error_naming_what_was_wrong() -> None:
    resilience = Resilience(policies={"p": Policy()}, targets={"db": "p"})

    async def scenario() -> None:
        async with Kernel(middleware=[resilience]) as kernel:
            kernel.register(Lost)
            reply = await kernel.ref(Lost, "l").ask(Ask("openai"))
            assert reply == "ConfigError: no dependency 'openai' is a target (dependencies: db)"
            assert await kernel.ref(Lost, "l").ask(Ask("db")) == "found"
        with pytest.raises(UsageError, match="one kernel"):
            Kernel(middleware=[resilience])
        async with Kernel() as bare:
            bare.register(Lost)
            reply = await bare.ref(Lost, "l").ask(Ask("db"))
            assert reply == (
                "UsageError: this kernel's middleware chain has no kerna.plugins.Resilience"
            )

    run(scenario)
    with pytest.raises(ConfigError, match="neither|not 3"):
        Resilience(policies={"p": Policy()}, targets={3: "p"})  # type: ignore[dict-item]
