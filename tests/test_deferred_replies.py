"""Deferred replies: an ask handler takes its reply along (``self.defer_reply()``) and
answers later from another handler, while the agent handles other messages."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import msgspec
import pytest

from kerna import (
    Agent,
    AskTimeout,
    Kernel,
    KernelStopped,
    Message,
    PendingReply,
    RemoteError,
    UsageError,
    handler,
)
from kerna.state import Layout

pytestmark = pytest.mark.anyio


class Job(Message):
    """Ask: the handler defers its reply under ``name`` (and returns a decoy)."""

    name: str


class Finish(Message):
    """Tell: answer the deferred ``name`` with ``value``."""

    name: str
    value: str


class Reject(Message):
    """Tell: fail the deferred ``name`` with ``ValueError(text)``."""

    name: str
    text: str


class Status(Message):
    """Ask: answered at once, while replies are deferred."""


class Outcome(Message):
    """Tell: what the last Finish/Reject's second send raised (for the test to read)."""


class Waiter(Agent):
    """Defers each Job's reply, answers it on Finish or Reject."""

    # Test-side views of what the agent did: reset per test (``reset_waiter``).
    errors: ClassVar[list[BaseException]] = []
    answered: ClassVar[asyncio.Event | None] = None
    deferred: ClassVar[dict[str, asyncio.Event]] = {}

    def __init__(self) -> None:
        self.pending: dict[str, PendingReply] = {}

    @handler
    async def job(self, msg: Job) -> str:
        self.pending[msg.name] = self.defer_reply()
        Waiter.deferred.setdefault(msg.name, asyncio.Event()).set()
        return "decoy: a deferring handler's return value is ignored"

    @handler
    async def finish(self, msg: Finish) -> None:
        pending = self.pending[msg.name]
        pending.reply(msg.value)
        try:
            pending.reply("again")
        except UsageError as exc:
            Waiter.errors.append(exc)
        try:
            pending.fail(ValueError("and a failure after the reply"))
        except UsageError as exc:
            Waiter.errors.append(exc)
        if Waiter.answered is not None:
            Waiter.answered.set()

    @handler
    async def reject(self, msg: Reject) -> None:
        pending = self.pending[msg.name]
        pending.fail(ValueError(msg.text))
        try:
            pending.reply("after the failure")
        except UsageError as exc:
            Waiter.errors.append(exc)
        if Waiter.answered is not None:
            Waiter.answered.set()

    @handler
    async def status(self, msg: Status) -> list[str]:
        return sorted(name for name, p in self.pending.items() if not p.sent)


@pytest.fixture(autouse=True)
def reset_waiter() -> None:
    Waiter.errors = []
    Waiter.answered = None
    Waiter.deferred = {}


@pytest.fixture
def waiter(kernel: Kernel) -> Kernel:
    kernel.register(Waiter)
    return kernel


async def started(ask: asyncio.Future[Any], name: str) -> None:
    """Wait (bounded) until the agent has deferred the reply to ``ask`` (job ``name``)."""
    async with asyncio.timeout(5):
        await Waiter.deferred.setdefault(name, asyncio.Event()).wait()
    assert not ask.done(), ask


async def test_a_deferred_reply_is_sent_later_from_another_handler(waiter: Kernel) -> None:
    ref = waiter.ref(Waiter, "w")
    ask = asyncio.ensure_future(ref.ask(Job(name="j"), timeout=5))
    await started(ask, "j")
    assert not ask.done()
    await ref.tell(Finish(name="j", value="the answer"))
    async with asyncio.timeout(5):
        assert await ask == "the answer"  # not the handler's return value


async def test_the_agent_handles_other_messages_while_a_reply_is_deferred(waiter: Kernel) -> None:
    ref = waiter.ref(Waiter, "w")
    asks = [asyncio.ensure_future(ref.ask(Job(name=n), timeout=5)) for n in ("a", "b", "c")]
    for ask, name in zip(asks, ("a", "b", "c"), strict=True):
        await started(ask, name)
    assert await ref.ask(Status(), timeout=1) == ["a", "b", "c"]  # answered at once
    # answered in any order, each to its own asker
    for name in ("c", "a", "b"):
        await ref.tell(Finish(name=name, value=name.upper()))
    async with asyncio.timeout(5):
        assert await asyncio.gather(*asks) == ["A", "B", "C"]


async def test_a_failed_deferred_reply_reaches_the_asker_as_remote_error(waiter: Kernel) -> None:
    ref = waiter.ref(Waiter, "w")
    ask = asyncio.ensure_future(ref.ask(Job(name="j"), timeout=5))
    await started(ask, "j")
    await ref.tell(Reject(name="j", text="no such document"))
    with pytest.raises(RemoteError) as info:
        async with asyncio.timeout(5):
            await ask
    assert info.value.type_name == "ValueError"
    assert info.value.message == "no such document"
    assert "ValueError" in info.value.traceback


async def test_a_deferred_reply_can_be_sent_only_once(waiter: Kernel) -> None:
    ref = waiter.ref(Waiter, "w")
    Waiter.answered = answered = asyncio.Event()
    ask = asyncio.ensure_future(ref.ask(Job(name="j"), timeout=5))
    await started(ask, "j")
    await ref.tell(Finish(name="j", value="first"))
    async with asyncio.timeout(5):
        assert await ask == "first"
        await answered.wait()
    answered.clear()
    ask = asyncio.ensure_future(ref.ask(Job(name="k"), timeout=5))
    await started(ask, "k")
    await ref.tell(Reject(name="k", text="x"))
    with pytest.raises(RemoteError):
        async with asyncio.timeout(5):
            await ask
    async with asyncio.timeout(5):
        await answered.wait()
    # reply twice, fail after a reply, reply after a failure: each raises UsageError
    assert len(Waiter.errors) == 3
    assert all(isinstance(e, UsageError) for e in Waiter.errors)
    assert all("already answered" in str(e) for e in Waiter.errors)


async def test_a_reply_never_sent_fails_the_asker_with_ask_timeout(waiter: Kernel) -> None:
    ref = waiter.ref(Waiter, "w")
    loop = asyncio.get_running_loop()
    begun = loop.time()
    with pytest.raises(AskTimeout) as info:
        async with asyncio.timeout(5):  # the test's bound; the ask's own is 0.2 s
            await ref.ask(Job(name="never"), timeout=0.2)
    assert loop.time() - begun >= 0.2
    assert info.value.target == ref.id
    assert info.value.timeout == 0.2
    # replying afterwards is allowed: nobody waits, so it is dropped and counted
    before = waiter.stats().types["Waiter"].late_replies
    await ref.tell(Finish(name="never", value="too late"))
    assert await ref.ask(Status()) == []
    assert waiter.stats().types["Waiter"].late_replies == before + 1


class Outer(Message):
    pass


class Tell(Message):
    pass


class Twice(Message):
    pass


async def test_a_nested_deferred_ask_is_bounded_by_the_outer_deadline(waiter: Kernel) -> None:
    class Front(Agent):
        @handler
        async def outer(self, msg: Outer) -> str:
            result: str = await self.ref(Waiter, "w").ask(Job(name="nested"), timeout=30)
            return result

    waiter.register(Front)
    with pytest.raises(AskTimeout):
        async with asyncio.timeout(5):
            await waiter.ref(Front, "f").ask(Outer(), timeout=0.2)


async def test_defer_reply_outside_an_ask_handler_is_a_usage_error(kernel: Kernel) -> None:
    errors: dict[str, BaseException] = {}
    done = asyncio.Event()

    class Misuse(Agent):
        async def on_start(self) -> None:
            try:
                self.defer_reply()
            except UsageError as exc:
                errors["on_start"] = exc

        @handler
        async def tell(self, msg: Tell) -> None:
            try:
                self.defer_reply()
            except UsageError as exc:
                errors[self.context.kind] = exc
            if self.context.kind == "event":
                done.set()

        @handler
        async def twice(self, msg: Twice) -> str:
            pending = self.defer_reply()
            try:
                self.defer_reply()
            except UsageError as exc:
                errors["twice"] = exc
            pending.reply("once")
            return "ignored"

    kernel.register(Misuse)
    kernel.subscribe("t", Misuse, key=lambda _: "m")
    ref = kernel.ref(Misuse, "m")
    assert await ref.ask(Twice()) == "once"
    await ref.tell(Tell())
    await kernel.publish("t", Tell())
    async with asyncio.timeout(5):
        await done.wait()
    assert set(errors) == {"on_start", "tell", "event", "twice"}
    assert all(isinstance(e, UsageError) for e in errors.values())
    assert "only in the handler of an ask" in str(errors["tell"])
    assert "already deferred" in str(errors["twice"])


async def test_a_handler_that_defers_and_then_raises_fails_its_asker(kernel: Kernel) -> None:
    class Careless(Agent):
        def __init__(self) -> None:
            self.pending: PendingReply | None = None

        @handler
        async def job(self, msg: Job) -> None:
            self.pending = self.defer_reply()
            raise LookupError(f"lost {msg.name}")

        @handler
        async def finish(self, msg: Finish) -> bool:
            assert self.pending is not None
            try:
                self.pending.reply(msg.value)
            except UsageError:
                return False
            return True

    kernel.register(Careless)
    ref = kernel.ref(Careless, "c")
    with pytest.raises(RemoteError) as info:
        await ref.ask(Job(name="j"), timeout=5)  # at once, not at the deadline
    assert info.value.type_name == "LookupError"
    assert info.value.message == "lost j"
    assert await ref.ask(Finish(name="j", value="late")) is False  # already failed
    assert kernel.stats().types["Careless"].failed == 1


async def test_stop_fails_outstanding_deferred_replies_with_kernel_stopped() -> None:
    async with Kernel(stop_grace=1.0) as kernel:
        kernel.register(Waiter)
        ref = kernel.ref(Waiter, "w")
        ask = asyncio.ensure_future(ref.ask(Job(name="j"), timeout=30))
        await started(ask, "j")
        loop = asyncio.get_running_loop()
        begun = loop.time()
        async with asyncio.timeout(5):
            await kernel.stop()
        # a deferred reply is no work in progress: stop does not wait out its grace
        assert loop.time() - begun < 1.0
    with pytest.raises(KernelStopped):
        async with asyncio.timeout(5):
            await ask


async def test_deactivation_fails_outstanding_deferred_replies(waiter: Kernel) -> None:
    ref = waiter.ref(Waiter, "w")
    ask = asyncio.ensure_future(ref.ask(Job(name="j"), timeout=30))
    await started(ask, "j")
    async with asyncio.timeout(5):
        await ref.deactivate()
    with pytest.raises(KernelStopped, match="deactivated"):
        async with asyncio.timeout(5):
            await ask
    # the agent comes back for the next message, with nothing pending
    assert await ref.ask(Status()) == []


class StoppingWaiter(Waiter):
    stopped: ClassVar[asyncio.Event | None] = None

    async def on_stop(self) -> None:
        if StoppingWaiter.stopped is not None:
            StoppingWaiter.stopped.set()


async def test_an_agent_with_a_reply_to_send_is_not_idle_until_its_asker_gives_up() -> None:
    async with Kernel(stop_grace=1.0) as kernel:
        StoppingWaiter.stopped = stopped = asyncio.Event()
        kernel.register(StoppingWaiter, idle_timeout=0.05)
        ref = kernel.ref(StoppingWaiter, "w")
        # its asker waits 0.3 s, six idle timeouts: the agent stays to answer it
        with pytest.raises(AskTimeout):
            async with asyncio.timeout(5):
                await ref.ask(Job(name="j"), timeout=0.3)
        assert not stopped.is_set()
        # nobody waits any more: the agent goes idle (a reply nobody waits for does not
        # keep it alive for ever)
        async with asyncio.timeout(5):
            await stopped.wait()


async def test_an_agent_with_a_reply_to_send_is_idle_once_it_is_sent() -> None:
    async with Kernel(stop_grace=1.0) as kernel:
        StoppingWaiter.stopped = stopped = asyncio.Event()
        kernel.register(StoppingWaiter, idle_timeout=0.05)
        ref = kernel.ref(StoppingWaiter, "w")
        ask = asyncio.ensure_future(ref.ask(Job(name="j"), timeout=5))
        await started(ask, "j")
        await ref.tell(Finish(name="j", value="v"))
        async with asyncio.timeout(5):
            assert await ask == "v"
            await stopped.wait()


async def test_a_pending_reply_says_whether_it_was_sent_and_whether_anyone_waits(
    kernel: Kernel,
) -> None:
    held: list[PendingReply] = []

    class Holder(Agent):
        @handler
        async def job(self, msg: Job) -> None:
            held.append(self.defer_reply())
            Waiter.deferred.setdefault(msg.name, asyncio.Event()).set()

        @handler
        async def finish(self, msg: Finish) -> tuple[bool, bool, bool]:
            pending = held[-1]
            before = (pending.sent, pending.expired)
            pending.reply(msg.value)
            return (*before, pending.sent)

    kernel.register(Holder)
    ref = kernel.ref(Holder, "h")
    ask = asyncio.ensure_future(ref.ask(Job(name="j"), timeout=5))
    await started(ask, "j")
    assert "pending" in repr(held[0])
    # the ask it answers, as the deferring handler saw it
    asked = held[0].context
    assert asked.kind == "ask"
    assert asked.sender is None
    left = asked.time_left()
    assert left is not None
    assert 0 < left <= 5
    assert await ref.ask(Finish(name="j", value="v")) == (False, False, True)
    async with asyncio.timeout(5):
        assert await ask == "v"
    assert "sent" in repr(held[0])
    with pytest.raises(AskTimeout):
        await ref.ask(Job(name="k"), timeout=0.05)
    assert held[-1].expired
    assert not held[-1].sent


async def test_fail_takes_an_exception(waiter: Kernel) -> None:
    class Sloppy(Agent):
        @handler
        async def job(self, msg: Job) -> str:
            pending = self.defer_reply()
            try:
                pending.fail("not an exception")  # type: ignore[arg-type]
            except TypeError as exc:
                pending.reply(str(exc))
            return "ignored"

    waiter.register(Sloppy)
    assert "exception" in await waiter.ref(Sloppy, "s").ask(Job(name="j"))


# -- the LLM pattern -----------------------------------------------------------------------


class Research(Message):
    """Ask the coordinator to answer ``question`` from ``parts`` workers."""

    question: str
    parts: int


class Work(Message):
    job: int
    part: int
    question: str


class Result(Message):
    job: int
    part: int
    text: str


class Answer(Message):
    question: str
    texts: list[str]


class Coordinator(Agent):
    """Accepts a request, fans out tells to workers, replies when all results are in."""

    def __init__(self) -> None:
        self.jobs: dict[int, tuple[PendingReply, Research, dict[int, str]]] = {}
        self.next_job = 0

    @handler
    async def research(self, msg: Research) -> None:
        self.next_job += 1
        job = self.next_job
        self.jobs[job] = (self.defer_reply(), msg, {})
        for part in range(msg.parts):
            worker = self.ref(Worker, f"w{part}")
            await worker.tell(Work(job=job, part=part, question=msg.question))

    @handler
    async def result(self, msg: Result) -> None:
        pending, request, results = self.jobs[msg.job]
        results[msg.part] = msg.text
        if len(results) == request.parts:
            del self.jobs[msg.job]
            pending.reply(
                Answer(question=request.question, texts=[results[p] for p in sorted(results)])
            )


class Worker(Agent):
    """Answers its part after a (simulated) model call, from any coordinator."""

    @handler
    async def work(self, msg: Work) -> None:
        await asyncio.sleep(0)  # a model call would await here
        coordinator = self.context.sender
        assert coordinator is not None
        await self.ref(Coordinator, coordinator.key).tell(
            Result(job=msg.job, part=msg.part, text=f"{msg.question}:{self.id.key}")
        )


async def test_llm_pattern_accept_fan_out_reply_when_results_arrive(kernel: Kernel) -> None:
    kernel.register(Coordinator)
    kernel.register(Worker)
    coordinator = kernel.ref(Coordinator, "c")
    # concurrent requests to one coordinator: it accepts them all before any finishes
    questions = [f"q{i}" for i in range(8)]
    async with asyncio.timeout(10):
        answers = await asyncio.gather(
            *(coordinator.ask(Research(question=q, parts=4), timeout=5) for q in questions)
        )
    for q, answer in zip(questions, answers, strict=True):
        assert answer == Answer(question=q, texts=[f"{q}:w{p}" for p in range(4)])
    stats = kernel.stats().types
    assert stats["Coordinator"].handled == 8 + 8 * 4  # the requests and every result
    assert stats["Worker"].handled == 8 * 4
    assert stats["Coordinator"].failed == 0


class Jobs(msgspec.Struct, frozen=True):
    accepted: int = 0


class DurableCoordinator(Agent, state=Jobs):
    """Defers, then records the accepted job in its state (which may conflict)."""

    deferred: ClassVar[list[PendingReply]] = []

    def __init__(self) -> None:
        self.pending: PendingReply | None = None

    @handler
    async def job(self, msg: Job) -> None:
        self.pending = self.defer_reply()
        DurableCoordinator.deferred.append(self.pending)
        await self.save(Jobs(self.state.accepted + 1))
        Waiter.deferred.setdefault(msg.name, asyncio.Event()).set()

    @handler
    async def finish(self, msg: Finish) -> None:
        assert self.pending is not None
        self.pending.reply(f"{msg.value} (job {self.state.accepted})")


async def test_a_handler_rerun_after_a_conflict_may_defer_again() -> None:
    async with Kernel() as kernel:
        kernel.register(DurableCoordinator, conflict_retries=1)
        ref = kernel.ref(DurableCoordinator, "d")
        # a first job: the agent is active, its state read
        first = asyncio.ensure_future(ref.ask(Job(name="a"), timeout=5))
        await started(first, "a")
        await ref.tell(Finish(name="a", value="first"))
        async with asyncio.timeout(5):
            assert await first == "first (job 1)"
        # another writer moves the state on: the next save conflicts, the handler re-runs
        key = Layout().state("DurableCoordinator", "d")
        await kernel.state_backend.put(key, msgspec.msgpack.encode(Jobs(accepted=10)))
        DurableCoordinator.deferred = []
        second = asyncio.ensure_future(ref.ask(Job(name="b"), timeout=5))
        await started(second, "b")
        await ref.tell(Finish(name="b", value="second"))
        async with asyncio.timeout(5):
            assert await second == "second (job 11)"
        # the first run's deferral was taken back for the re-run: it cannot answer
        withdrawn, answered = DurableCoordinator.deferred
        assert withdrawn.sent
        with pytest.raises(UsageError, match="withdrawn"):
            withdrawn.reply("from the run that lost")
        assert answered.sent
