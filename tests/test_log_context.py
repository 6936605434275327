"""Every log record made while a message is handled carries ``correlation_id`` and
``agent_id`` (the kernel's log record factory), whatever handler or formatter the
application uses; a record made outside any agent carries None for both."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from typing import Any, ClassVar

import pytest

from kerna import Agent, Kernel, Message, PendingReply, handler

pytestmark = pytest.mark.anyio

LOGGER = "myapp.agents"
log = logging.getLogger(LOGGER)


class Hello(Message):
    text: str


class Relay(Message):
    """Ask: the Front asks a Back with it (the second hop of the chain)."""

    text: str


class Pause(Message):
    """Ask: log, wait for the test's event, log again."""

    name: str


class Start(Message):
    """Tell: start a timer that ticks once."""


class Tick(Message):
    pass


class Job(Message):
    """Ask: its reply is deferred, answered by a later Finish."""


class Finish(Message):
    """Tell: answer the deferred Job (and log while doing it)."""


class Back(Agent):
    @handler
    async def relay(self, msg: Relay) -> str:
        log.info("second hop %s", msg.text)
        return msg.text


class Front(Agent):
    seen: ClassVar[list[int]] = []
    go: ClassVar[dict[str, asyncio.Event]] = {}
    paused: ClassVar[dict[str, asyncio.Event]] = {}
    ticked: ClassVar[asyncio.Event]
    deferred: ClassVar[asyncio.Event]

    def __init__(self) -> None:
        self.pending: PendingReply | None = None

    @handler
    async def hello(self, msg: Hello) -> str:
        Front.seen.append(self.context.correlation_id)
        log.info("first hop %s", msg.text)
        return await self.kernel.ref(Back, "b").ask(Relay(text=msg.text))

    @handler
    async def pause(self, msg: Pause) -> None:
        Front.seen.append(self.context.correlation_id)
        log.info("before %s", msg.name)
        Front.paused[msg.name].set()
        async with asyncio.timeout(5):
            await Front.go[msg.name].wait()
        log.info("after %s", msg.name)

    @handler
    async def start(self, msg: Start) -> None:
        self.schedule(0.001, Tick())

    @handler
    async def tick(self, msg: Tick) -> None:
        Front.seen.append(self.context.correlation_id)
        log.info("tick")
        Front.ticked.set()

    @handler
    async def job(self, msg: Job) -> None:
        self.pending = self.defer_reply()
        Front.deferred.set()

    @handler
    async def finish(self, msg: Finish) -> None:
        Front.seen.append(self.context.correlation_id)
        assert self.pending is not None
        log.info("answering the deferred job")
        self.pending.reply("done")


@pytest.fixture(autouse=True)
def reset() -> None:
    Front.seen = []
    Front.go = {}
    Front.paused = {}
    Front.ticked = asyncio.Event()
    Front.deferred = asyncio.Event()


def records(caplog: pytest.LogCaptureFixture, text: str) -> list[Any]:
    return [r for r in caplog.records if r.name == LOGGER and r.getMessage().startswith(text)]


async def test_a_record_logged_in_a_handler_carries_the_messages_correlation_id(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    kernel.register(Front)
    kernel.register(Back)
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert await kernel.ref(Front, "f").ask(Hello(text="x")) == "x"
    [first] = records(caplog, "first hop")
    [correlation] = Front.seen
    assert first.correlation_id == correlation
    assert first.agent_id == "Front/f"


async def test_a_record_in_an_ask_chains_second_hop_carries_the_same_correlation_id(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    kernel.register(Front)
    kernel.register(Back)
    caplog.set_level(logging.INFO, logger=LOGGER)
    await kernel.ref(Front, "f").ask(Hello(text="one"))
    await kernel.ref(Front, "f").ask(Hello(text="two"))
    second = records(caplog, "second hop")
    assert [r.correlation_id for r in second] == Front.seen
    assert Front.seen[0] != Front.seen[1]  # two conversations
    assert {r.agent_id for r in second} == {"Back/b"}


async def test_a_record_outside_any_handler_carries_none_and_formats_with_any_formatter(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    log.info("outside")
    [record] = records(caplog, "outside")
    assert record.correlation_id is None
    assert record.agent_id is None
    text = logging.Formatter("%(agent_id)s %(correlation_id)s %(message)s").format(record)
    assert text == "None None outside"


async def test_concurrent_handlers_do_not_mix_correlation_ids(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    kernel.register(Front)
    caplog.set_level(logging.INFO, logger=LOGGER)
    names = ["p0", "p1", "p2"]
    for name in names:
        Front.go[name] = asyncio.Event()
        Front.paused[name] = asyncio.Event()
    asks = [asyncio.ensure_future(kernel.ref(Front, name).ask(Pause(name=name))) for name in names]
    async with asyncio.timeout(5):
        for name in names:  # all three are inside their handlers at once
            await Front.paused[name].wait()
    for name in reversed(names):  # resumed in the other order
        Front.go[name].set()
    async with asyncio.timeout(5):
        await asyncio.gather(*asks)
    by_agent = {f"Front/{name}": cid for name, cid in zip(names, Front.seen, strict=True)}
    assert len(set(by_agent.values())) == 3
    mine = [r for r in caplog.records if r.name == LOGGER]
    assert len(mine) == 6
    for record in mine:
        assert record.correlation_id == by_agent[record.agent_id]


async def test_a_timer_ticks_handler_records_carry_the_ticks_correlation_id(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    kernel.register(Front)
    caplog.set_level(logging.INFO, logger=LOGGER)
    await kernel.ref(Front, "t").tell(Start())
    async with asyncio.timeout(5):
        await Front.ticked.wait()
    [record] = records(caplog, "tick")
    [tick_correlation] = Front.seen
    assert (record.agent_id, record.correlation_id) == ("Front/t", tick_correlation)


async def test_a_record_made_answering_a_deferred_reply_carries_the_handled_messages_id(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    kernel.register(Front)
    caplog.set_level(logging.INFO, logger=LOGGER)
    ref = kernel.ref(Front, "d")
    job = asyncio.ensure_future(ref.ask(Job()))
    async with asyncio.timeout(5):
        await Front.deferred.wait()
    await ref.tell(Finish())
    async with asyncio.timeout(5):
        assert await job == "done"
    [record] = records(caplog, "answering")
    [finish_correlation] = Front.seen
    assert (record.agent_id, record.correlation_id) == ("Front/d", finish_correlation)


async def test_the_kernels_own_handler_failure_record_carries_the_messages_ids(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    class Fails(Agent):
        @handler
        async def hello(self, msg: Hello) -> None:
            Front.seen.append(self.context.correlation_id)
            raise ValueError(msg.text)

    kernel.register(Fails)
    caplog.set_level(logging.WARNING, logger="kerna")
    await kernel.ref(Fails, "x").tell(Hello(text="boom"))
    await kernel.wait_idle(5)
    [record] = [r for r in caplog.records if "handler failed" in r.getMessage()]
    assert (record.agent_id, record.correlation_id) == ("Fails/x", Front.seen[0])
    assert record.message_type == "Hello"


async def test_json_lines_formatted_later_keep_the_ids_and_omit_them_outside_agents(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    from kerna.node._logs import JsonFormatter

    kernel.register(Front)
    kernel.register(Back)
    caplog.set_level(logging.INFO, logger=LOGGER)
    await kernel.ref(Front, "j").ask(Hello(text="json"))
    log.info("outside")
    formatter = JsonFormatter("n1")  # formats here, outside any handler (a QueueHandler's way)
    [inside] = [json.loads(formatter.format(r)) for r in records(caplog, "first hop")]
    assert (inside["agent_id"], inside["correlation_id"]) == ("Front/j", Front.seen[0])
    [outside] = [json.loads(formatter.format(r)) for r in records(caplog, "outside")]
    assert "agent_id" not in outside
    assert "correlation_id" not in outside


def test_records_made_before_the_first_kernel_format_with_the_ids_too() -> None:
    code = (
        "import logging\n"
        "from kerna import Kernel\n"
        "logging.basicConfig(format='%(agent_id)s %(correlation_id)s %(message)s')\n"
        "logging.warning('starting')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stderr) == (0, "None None starting\n")


def test_a_factory_replaced_without_wrapping_is_wrapped_again_by_the_next_kernel() -> None:
    previous = logging.getLogRecordFactory()
    logging.setLogRecordFactory(logging.LogRecord)
    try:
        Kernel()
        record = logging.getLogger(LOGGER).makeRecord(LOGGER, logging.INFO, "f", 1, "m", (), None)
        assert record.correlation_id is None
    finally:
        logging.setLogRecordFactory(previous)
