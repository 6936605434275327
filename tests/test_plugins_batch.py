"""kerna.plugins.batched: single asks into batch calls, on virtual time.

Each test runs on a loop of its own ``VirtualClock`` (``run``): ``max_wait`` flushes and
the batch handler's "inference time" are virtual, so batch sizes and flush times are
exact, and every wait is bounded in virtual time (a stalled batcher fails at once).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import ClassVar, TypeVar

import pytest

from kerna import (
    Agent,
    AskTimeout,
    Kernel,
    KernelStopped,
    Message,
    RegistrationError,
    RemoteError,
    Request,
    UnhandledMessage,
    handler,
)
from kerna.plugins import BatchStats, batch_stats, batched
from kerna.testing import VirtualClock

from .conftest import assert_no_stray_tasks

T = TypeVar("T")


def run(scenario: Callable[[VirtualClock], Awaitable[T]]) -> T:
    clock = VirtualClock()
    return clock.run(scenario, clock)


class Completion(Message):
    text: str


class Prompt(Request[Completion]):
    text: str


class Status(Request[str]):
    pass


class Model(Agent):
    """Each batch takes 0.1 s of virtual time; the prompts of every call are recorded.

    A prompt "bad" fails alone (an exception in its slot); "boom" fails its batch;
    "short" makes the handler return one result too few; "hang" blocks until stop.
    """

    batches: ClassVar[list[list[str]]] = []
    times: ClassVar[list[float]] = []

    @batched(max_size=4, max_wait=0.005)
    async def infer(self, batch: list[Prompt]) -> list[Completion | Exception]:
        texts = [p.text for p in batch]
        Model.batches.append(texts)
        Model.times.append(asyncio.get_running_loop().time())
        if "hang" in texts:
            await asyncio.Event().wait()
        await asyncio.sleep(0.1)
        if "boom" in texts:
            raise RuntimeError("the model fell over")
        results: list[Completion | Exception] = [
            ValueError(f"bad prompt {t}") if t == "bad" else Completion(text=t.upper())
            for t in texts
        ]
        return results[:-1] if "short" in texts else results

    @handler
    async def status(self, msg: Status) -> str:
        return "up"


@pytest.fixture(autouse=True)
def _fresh_records() -> None:
    Model.batches = []
    Model.times = []


async def ask_all(kernel: Kernel, texts: list[str], timeout: float = 30) -> list[object]:
    ref = kernel.ref(Model, "m")
    async with asyncio.timeout(60):
        return await asyncio.gather(
            *(ref.ask(Prompt(text=t), timeout=timeout) for t in texts), return_exceptions=True
        )


def test_asks_become_batches_of_at_most_max_size_and_results_map_back_in_order() -> None:
    async def scenario(clock: VirtualClock) -> None:
        async with Kernel() as kernel:
            kernel.register(Model)
            texts = [f"p{i}" for i in range(10)]
            replies = await ask_all(kernel, texts)
            assert replies == [Completion(text=t.upper()) for t in texts]
            assert Model.batches == [texts[0:4], texts[4:8], texts[8:10]]
            # a full batch goes at once; the next ones as soon as the previous ends
            assert Model.times == pytest.approx([0.0, 0.1, 0.2])
            assert batch_stats(kernel, Model.infer) == BatchStats(
                batches=3, items=10, largest=4, expired=0, failed=0
            )

    run(scenario)


def test_a_partial_batch_goes_after_max_wait_on_the_loop_clock() -> None:
    async def scenario(clock: VirtualClock) -> None:
        async with Kernel() as kernel:
            kernel.register(Model)
            clock.advance(10)
            replies = await ask_all(kernel, ["a", "b", "c"])
            assert replies == [Completion(text=t) for t in "ABC"]
            assert Model.batches == [["a", "b", "c"]]
            assert Model.times == pytest.approx([10.005])

    run(scenario)


def test_an_exception_in_a_slot_fails_only_that_asker() -> None:
    async def scenario(clock: VirtualClock) -> None:
        async with Kernel() as kernel:
            kernel.register(Model)
            ok, bad, ok2 = await ask_all(kernel, ["x", "bad", "y"])
            assert (ok, ok2) == (Completion(text="X"), Completion(text="Y"))
            assert isinstance(bad, RemoteError)
            assert bad.type_name == "ValueError"
            assert "bad prompt bad" in bad.message
            assert Model.batches == [["x", "bad", "y"]]

    run(scenario)


def test_a_raising_batch_handler_fails_its_batch_only() -> None:
    async def scenario(clock: VirtualClock) -> None:
        async with Kernel() as kernel:
            kernel.register(Model)
            replies = await ask_all(kernel, ["a", "boom", "b", "c", "d", "e"])
            for reply in replies[:4]:
                assert isinstance(reply, RemoteError)
                assert reply.type_name == "RuntimeError"
                assert "the model fell over" in reply.message
            assert replies[4:] == [Completion(text="D"), Completion(text="E")]
            assert await ask_all(kernel, ["f"]) == [Completion(text="F")]
            stats = batch_stats(kernel, Model.infer)
            assert (stats.batches, stats.failed) == (3, 1)

    run(scenario)


def test_a_wrong_number_of_results_is_a_clear_error_to_every_asker_of_the_batch() -> None:
    async def scenario(clock: VirtualClock) -> None:
        async with Kernel() as kernel:
            kernel.register(Model)
            replies = await ask_all(kernel, ["a", "short", "b"])
            for reply in replies:
                assert isinstance(reply, RemoteError)
                assert reply.type_name == "ValueError"
                assert "Model.infer returned 2 results for a batch of 3" in reply.message
            assert await ask_all(kernel, ["next"]) == [Completion(text="NEXT")]

    run(scenario)


def test_askers_who_gave_up_are_dropped_from_their_batch_and_never_stall_it() -> None:
    class Patient(Agent):
        seen: ClassVar[list[list[str]]] = []

        @batched(max_size=8, max_wait=1.0)
        async def infer(self, batch: list[Prompt]) -> list[Completion]:
            Patient.seen.append([p.text for p in batch])
            return [Completion(text=p.text) for p in batch]

    async def scenario(clock: VirtualClock) -> None:
        async with Kernel() as kernel:
            kernel.register(Patient)
            ref = kernel.ref(Patient, "m")
            impatient = asyncio.create_task(ref.ask(Prompt(text="timeout"), timeout=0.5))
            cancelled = asyncio.create_task(ref.ask(Prompt(text="cancelled"), timeout=10))
            kept = asyncio.create_task(ref.ask(Prompt(text="kept"), timeout=10))
            await asyncio.sleep(0.1)
            cancelled.cancel()
            async with asyncio.timeout(30):
                with pytest.raises(AskTimeout):
                    await impatient
                assert await kept == Completion(text="kept")
            assert Patient.seen == [["kept"]]
            # a batch whose askers all gave up is never called, and the next one is
            lone = asyncio.create_task(ref.ask(Prompt(text="gone"), timeout=0.5))
            with pytest.raises(AskTimeout):
                await lone
            await asyncio.sleep(1)
            assert Patient.seen == [["kept"]]
            async with asyncio.timeout(30):
                assert await ref.ask(Prompt(text="after")) == Completion(text="after")
            assert batch_stats(kernel, Patient.infer).expired == 3

    run(scenario)


def test_the_mailbox_keeps_serving_while_a_batch_runs_and_a_tell_joins_a_batch() -> None:
    async def scenario(clock: VirtualClock) -> None:
        async with Kernel() as kernel:
            kernel.register(Model)
            ref = kernel.ref(Model, "m")
            await ref.tell(Prompt(text="told"))
            ask = asyncio.create_task(ref.ask(Prompt(text="asked")))
            await asyncio.sleep(0.05)  # the batch is running (0.1 s)
            assert await ref.ask(Status()) == "up"
            assert not ask.done()
            async with asyncio.timeout(5):
                assert await ask == Completion(text="ASKED")
            assert Model.batches == [["told", "asked"]]

    run(scenario)


@pytest.mark.parametrize("texts", [["waits"], ["hang"]], ids=["waiting", "running"])
def test_stop_fails_the_askers_of_a_waiting_or_running_batch_with_kernel_stopped(
    texts: list[str],
) -> None:
    class Slow(Agent):
        @batched(max_size=8, max_wait=1000.0)
        async def infer(self, batch: list[Prompt]) -> list[Completion]:
            return [Completion(text=p.text) for p in batch]

    async def scenario(clock: VirtualClock) -> None:
        before = asyncio.all_tasks()
        kernel = Kernel(stop_grace=1.0)
        await kernel.start()
        kernel.register(Model)
        kernel.register(Slow)
        target = Model if texts == ["hang"] else Slow
        asks = [
            asyncio.create_task(kernel.ref(target, "m").ask(Prompt(text=t), timeout=5000))
            for t in texts * 3
        ]
        await asyncio.sleep(0.01)
        async with asyncio.timeout(60):
            await kernel.stop()
            outcomes = await asyncio.gather(*asks, return_exceptions=True)
        assert [type(o) for o in outcomes] == [KernelStopped] * 3
        assert clock.time() < 10
        assert_no_stray_tasks(before)

    run(scenario)


def test_registration_sees_the_element_types() -> None:
    class Wrong(Agent):
        @batched(max_size=2, max_wait=0)
        async def infer(self, batch: list[Prompt]) -> list[str]:
            return []

    with pytest.raises(RegistrationError, match="Prompt is a Request\\[Completion\\]"):
        Kernel().register(Wrong)

    async def unhandled() -> None:
        async with Kernel() as kernel:
            kernel.register(Model)
            assert set(kernel.message_types().values()) == {Prompt, Status}
            with pytest.raises(UnhandledMessage, match="it handles: Prompt, Status"):
                await kernel.ref(Model, "m").tell(Completion(text="not a prompt"))

    run(lambda clock: unhandled())

    async def raw(self: Agent, batch: list[Prompt]) -> list[Completion | Exception]:
        return []

    # annotations as objects (a module without 'from __future__ import annotations')
    raw.__annotations__ = {"batch": list[Prompt], "return": list[Completion | Exception]}
    Raw = type("Raw", (Agent,), {"infer": batched(max_size=2, max_wait=0)(raw)})
    Kernel().register(Raw)


def test_bad_batch_handlers_and_options_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="max_size must be > 0"):
        batched(max_size=0, max_wait=1)
    with pytest.raises(TypeError, match="max_size must be an int"):
        batched(max_size=1.5, max_wait=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_wait must be >= 0 and finite"):
        batched(max_size=1, max_wait=float("inf"))
    decorate = batched(max_size=2, max_wait=0)

    async def single(self: Agent, batch: Prompt) -> list[Completion]:
        return []

    def sync(self: Agent, batch: list[Prompt]) -> list[Completion]:
        return []

    async def scalar(self: Agent, batch: list[Prompt]) -> Completion:
        return Completion(text="")

    with pytest.raises(RegistrationError, match="annotate 'batch' as list"):
        decorate(single)  # type: ignore[arg-type]
    with pytest.raises(RegistrationError, match="must be 'async def'"):
        decorate(sync)  # type: ignore[arg-type]
    with pytest.raises(RegistrationError, match="annotate the return as list"):
        decorate(scalar)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="is not a @batched handler"):
        batch_stats(Kernel(), Model.status)
