"""Handler failures nobody else hears of (tell, publish) are logged at WARNING on
``kerna.activation``, rate-limited per agent type; the level is configurable."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar, cast

import pytest

from kerna import Agent, AgentId, DeadLetter, Kernel, Message, RemoteError, handler
from kerna._envelope import TELL, Envelope
from kerna._failure_log import BURST, WINDOW, FailureLog

pytestmark = pytest.mark.anyio

LOGGER = "kerna.activation"


class Explode(Message):
    text: str = "kaboom"


class Bomb(Agent):
    """Raises on Explode, after noting the message's correlation id."""

    correlations: ClassVar[list[int]] = []

    @handler
    async def explode(self, msg: Explode) -> None:
        Bomb.correlations.append(self.context.correlation_id)
        raise ValueError(msg.text)


class OtherBomb(Bomb):
    pass


class Watcher(Agent):
    """Counts dead letters: one per failed tell or event, so tests can wait for them."""

    count: ClassVar[int] = 0
    changed: ClassVar[asyncio.Event]

    @handler
    async def dead(self, msg: DeadLetter) -> None:
        Watcher.count += 1
        Watcher.changed.set()


@pytest.fixture(autouse=True)
def reset() -> None:
    Bomb.correlations = []
    Watcher.count = 0
    Watcher.changed = asyncio.Event()


async def dead_letters(count: int) -> None:
    """Wait (bounded) until ``count`` dead letters arrived (each failure logged first)."""
    async with asyncio.timeout(5):
        while Watcher.count < count:
            Watcher.changed.clear()
            await Watcher.changed.wait()


def failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and "handler failed" in r.message]


def setup(kernel: Kernel) -> None:
    kernel.register(Bomb)
    kernel.register(OtherBomb)
    kernel.register(Watcher)
    kernel.subscribe(Kernel.DEAD_LETTERS, Watcher)


async def test_a_failed_tell_is_logged_at_warning_with_what_a_reader_needs(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    setup(kernel)
    caplog.set_level(logging.WARNING, logger="kerna")
    await kernel.ref(Bomb, "b1").tell(Explode(text="the fuse was short"))
    await dead_letters(1)
    [record] = failures(caplog)
    assert record.levelno == logging.WARNING
    text = record.getMessage()
    assert "Bomb/b1" in text  # the agent id
    assert "Explode" in text  # the message type
    assert "tell" in text
    [correlation] = Bomb.correlations
    assert str(correlation) in text  # the correlation id, as the int reads everywhere
    assert "ValueError: the fuse was short" in text  # the exception
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)  # with its traceback
    # and as attributes, for structured logging
    fields = cast(Any, record)
    assert fields.agent_id == "Bomb/b1"
    assert fields.message_type == "Explode"
    assert fields.correlation_id == correlation


async def test_a_failed_event_is_logged_too(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    setup(kernel)
    kernel.subscribe("alerts", Bomb, key=lambda _: "sub")
    caplog.set_level(logging.WARNING, logger="kerna")
    await kernel.publish("alerts", Explode())
    await dead_letters(1)
    [record] = failures(caplog)
    assert record.levelno == logging.WARNING
    assert "Bomb/sub" in record.getMessage()
    assert "event" in record.getMessage()


async def test_a_failed_ask_is_not_logged_its_asker_has_the_error(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    setup(kernel)
    caplog.set_level(logging.DEBUG, logger="kerna")
    with pytest.raises(RemoteError):
        await kernel.ref(Bomb, "b").ask(Explode())
    await kernel.wait_idle(timeout=5)
    assert failures(caplog) == []


async def test_failures_are_rate_limited_per_agent_type(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    setup(kernel)
    caplog.set_level(logging.WARNING, logger="kerna")
    bombs = [kernel.ref(Bomb, f"b{i}") for i in range(BURST + 15)]
    for ref in bombs:  # a poison stream: many agents of one type, all failing
        await ref.tell(Explode())
    await dead_letters(len(bombs))
    assert len(failures(caplog)) == BURST  # not 25: the rest are counted, not logged
    assert kernel.stats().types["Bomb"].failed == len(bombs)
    # another type has its own budget
    await kernel.ref(OtherBomb, "o").tell(Explode())
    await dead_letters(len(bombs) + 1)
    records = failures(caplog)
    assert len(records) == BURST + 1
    assert "OtherBomb/o" in records[-1].getMessage()


class Clock:
    """A loop stand-in whose ``time()`` the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now


def test_after_the_window_the_next_record_says_how_many_were_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    flog = FailureLog(logging.WARNING, cast(asyncio.AbstractEventLoop, clock))
    agent = AgentId("Bomb", "b")
    caplog.set_level(logging.WARNING, logger="kerna")

    def fail(n: int) -> None:
        env = Envelope(n, TELL, agent, Explode(), correlation_id=n)
        flog.handler_failed(agent, env, ValueError(f"failure {n}"))

    for n in range(1, BURST + 8):  # 10 logged, 7 left out
        fail(n)
    assert len(failures(caplog)) == BURST
    clock.now += WINDOW / 2
    fail(100)  # still in the window: left out too (8)
    assert len(failures(caplog)) == BURST
    clock.now += WINDOW / 2  # the window is over
    fail(200)
    records = failures(caplog)
    assert len(records) == BURST + 1
    text = records[-1].getMessage()
    assert "failure 200" in text
    assert "8 earlier failures of Bomb were not logged" in text
    fail(201)  # the count was reported once
    assert "not logged" not in failures(caplog)[-1].getMessage()
    assert WINDOW == 60.0
    assert BURST == 10


@pytest.mark.parametrize(
    ("level", "number"),
    [(logging.ERROR, logging.ERROR), ("INFO", logging.INFO), ("error", logging.ERROR), (25, 25)],
)
async def test_the_failure_log_level_is_configurable(
    caplog: pytest.LogCaptureFixture, level: int | str, number: int
) -> None:
    async with Kernel(failure_log_level=level) as kernel:
        assert kernel.failure_log_level == number
        setup(kernel)
        caplog.set_level(logging.DEBUG, logger="kerna")
        await kernel.ref(Bomb, "b").tell(Explode())
        await dead_letters(1)
    [record] = failures(caplog)
    assert record.levelno == number


async def test_a_debug_failure_log_stays_out_of_a_warning_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with Kernel(failure_log_level=logging.DEBUG) as kernel:
        setup(kernel)
        caplog.set_level(logging.WARNING, logger="kerna")
        await kernel.ref(Bomb, "b").tell(Explode())
        await dead_letters(1)
    assert failures(caplog) == []


@pytest.mark.parametrize("bad", ["LOUD", "", -1])
def test_a_bad_failure_log_level_is_a_value_error_naming_it(bad: Any) -> None:
    with pytest.raises(ValueError, match="failure_log_level") as info:
        Kernel(failure_log_level=bad)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("bad", [1.5, True, None, [logging.WARNING]])
def test_a_failure_log_level_of_the_wrong_type_is_a_type_error_naming_it(bad: Any) -> None:
    with pytest.raises(TypeError, match="failure_log_level") as info:
        Kernel(failure_log_level=bad)
    assert repr(bad) in str(info.value)
    assert isinstance(info.value, ValueError)  # as every option's error was before
