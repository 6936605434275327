"""kerna.plugins' Resilience: per-target timeouts and retries, exact on virtual time.

Each test runs on a ``VirtualClock`` loop of its own: backoffs and timeouts take no real
time, so call counts, call times and delays are exact.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from kerna import (
    Agent,
    AskTimeout,
    ConfigError,
    Kernel,
    RegistrationError,
    RemoteError,
    Request,
    handler,
)
from kerna.plugins import Policy, Resilience, Retry, idempotent
from kerna.testing import VirtualClock

T = TypeVar("T")


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    return VirtualClock().run(scenario)


@idempotent
class Get(Request[str]):
    key: str


class Put(Request[str]):
    """Not idempotent: never retried."""

    key: str


@idempotent
class Slow(Request[float]):
    """Replies with the time left its handler saw."""


class Log:
    def __init__(self, failures: int = 1_000_000, error: type[Exception] = ConnectionError):
        self.failures = failures
        self.error = error
        self.times: list[float] = []


class Flaky(Agent):
    """Fails its first ``log.failures`` messages, then answers."""

    def __init__(self, log: Log) -> None:
        self.log = log

    def _call(self) -> str:
        self.log.times.append(asyncio.get_running_loop().time())
        if len(self.log.times) <= self.log.failures:
            raise self.log.error("down")
        return "ok"

    @handler
    async def get(self, msg: Get) -> str:
        return self._call()

    @handler
    async def put(self, msg: Put) -> str:
        return self._call()

    @handler
    async def slow(self, msg: Slow) -> float:
        self.log.times.append(asyncio.get_running_loop().time())
        left = self.context.time_left()
        await asyncio.sleep(100)
        return left or 0.0


class Highest(random.Random):
    """A jitter source that always picks the top of the envelope."""

    def uniform(self, a: float, b: float) -> float:
        return b


def kernel_with(policy: Policy, log: Log, ask_timeout: float = 30.0) -> Kernel:
    resilience = Resilience(policies={"p": policy}, targets={Flaky: "p"})
    return Kernel(middleware=[resilience], ask_timeout=ask_timeout)


async def register(kernel: Kernel, log: Log) -> None:
    kernel.register(Flaky, factory=lambda: Flaky(log), cancel_at_deadline=True)


def test_an_always_failing_target_sees_exactly_max_retries_plus_one_calls_in_the_envelope() -> None:
    seed = 7
    retry = Retry(on=(ConnectionError,), max_retries=5, interval=0.1, max_interval=1.0,
                  rng=random.Random(seed))  # fmt: skip
    log = Log()

    async def scenario() -> None:
        async with kernel_with(Policy(retry=retry), log, ask_timeout=60) as kernel:
            await register(kernel, log)
            with pytest.raises(RemoteError) as caught:
                await kernel.ref(Flaky, "a").ask(Get("k"))
        assert caught.value.type_name == "ConnectionError"

    run(scenario)
    assert len(log.times) == 6
    gaps = [b - a for a, b in zip(log.times, log.times[1:], strict=False)]
    expected = random.Random(seed)
    for n, gap in enumerate(gaps):
        envelope = min(1.0, 0.1 * 2**n)
        assert 0 <= gap <= envelope
        assert gap == pytest.approx(expected.uniform(0, envelope), abs=1e-9)


@pytest.mark.parametrize("k", [0, 1, 2, 3, 4])
def test_k_transient_failures_take_exactly_k_plus_one_calls(k: int) -> None:
    log = Log(failures=k)
    retry = Retry(on=("ConnectionError",), max_retries=5)

    async def scenario() -> str:
        async with kernel_with(Policy(retry=retry), log) as kernel:
            await register(kernel, log)
            return await kernel.ref(Flaky, "a").ask(Get("k"))

    assert run(scenario) == "ok"
    assert len(log.times) == k + 1


def test_a_message_not_marked_idempotent_is_sent_once() -> None:
    log = Log(failures=1)

    async def scenario() -> None:
        async with kernel_with(Policy(retry=Retry(on=(ConnectionError,))), log) as kernel:
            await register(kernel, log)
            with pytest.raises(RemoteError, match="ConnectionError"):
                await kernel.ref(Flaky, "a").ask(Put("k"))

    run(scenario)
    assert len(log.times) == 1


def test_errors_the_policy_does_not_mark_and_caller_errors_are_not_retried() -> None:
    for error, on in ((KeyError, (ConnectionError,)), (ValueError, (Exception,))):
        log = Log(error=error)

        async def scenario() -> None:
            async with kernel_with(Policy(retry=Retry(on=on)), log) as kernel:  # noqa: B023
                await register(kernel, log)  # noqa: B023
                with pytest.raises(RemoteError):
                    await kernel.ref(Flaky, "a").ask(Get("k"))

        run(scenario)
        assert len(log.times) == 1, error


def test_a_retry_policy_naming_a_caller_error_is_refused() -> None:
    for on in ((RegistrationError,), ("ValidationError",), (TypeError,), ()):
        with pytest.raises(ConfigError, match="Retry on="):
            Retry(on=on)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_retries"):
        Retry(on=(ConnectionError,), max_retries=-1)


def test_retries_never_start_past_the_deadline() -> None:
    log = Log()
    retry = Retry(on=(ConnectionError,), max_retries=50, backoff="constant", interval=0.3,
                  rng=Highest())  # fmt: skip

    async def scenario() -> float:
        async with kernel_with(Policy(retry=retry), log) as kernel:
            await register(kernel, log)
            with pytest.raises(RemoteError, match="ConnectionError"):
                await kernel.ref(Flaky, "a").ask(Get("k"), timeout=1.0)
            return asyncio.get_running_loop().time()

    ended = run(scenario)
    # calls at 0, 0.3, 0.6, 0.9; a retry at 1.2 would pass the deadline at 1.0
    assert log.times == pytest.approx([0.0, 0.3, 0.6, 0.9])
    assert ended < 1.0


def test_a_targets_timeout_bounds_each_attempt_and_the_target_sees_it() -> None:
    log = Log()

    async def scenario() -> None:
        async with kernel_with(Policy(timeout=0.5), log) as kernel:
            await register(kernel, log)
            loop = asyncio.get_running_loop()
            with pytest.raises(AskTimeout) as caught:
                await kernel.ref(Flaky, "a").ask(Slow(), timeout=30)
            assert loop.time() == pytest.approx(0.5)
            assert caught.value.timeout == pytest.approx(0.5)

    run(scenario)
    assert log.times == [0.0]


def test_a_timeout_is_never_past_the_messages_deadline_and_timeouts_can_be_retried() -> None:
    log = Log()
    retry = Retry(on=(AskTimeout,), max_retries=5, backoff="constant", interval=0.1,
                  rng=Highest())  # fmt: skip

    async def scenario() -> float:
        async with kernel_with(Policy(timeout=0.5, retry=retry), log) as kernel:
            await register(kernel, log)
            with pytest.raises(AskTimeout):
                await kernel.ref(Flaky, "a").ask(Slow(), timeout=1.2)
            return asyncio.get_running_loop().time()

    ended = run(scenario)
    # attempt 1: 0 -> 0.5; retry at 0.6, bounded 0.5 -> 1.1; a retry at 1.2 is refused
    assert log.times == pytest.approx([0.0, 0.6])
    assert ended == pytest.approx(1.1)

    log2 = Log()

    async def shorter() -> float:
        async with kernel_with(Policy(timeout=5.0), log2) as kernel:
            await register(kernel, log2)
            with pytest.raises(AskTimeout):
                await kernel.ref(Flaky, "a").ask(Slow(), timeout=0.3)
            return asyncio.get_running_loop().time()

    assert run(shorter) == pytest.approx(0.3)
