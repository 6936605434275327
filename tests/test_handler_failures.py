"""Whatever a handler (or a lifecycle hook) raises, the kernel survives it.

A handler may raise any ``BaseException``: its asker gets a ``RemoteError`` (its tell
becomes a dead letter) and the agent and the kernel live on. Only ``KeyboardInterrupt``
and ``SystemExit`` propagate, as they do out of any asyncio task; and the kernel's own
cancellation of a worker (at stop) is told apart from a handler's own ``CancelledError``.
"""

from __future__ import annotations

import asyncio
import sys
import textwrap
from asyncio.subprocess import PIPE

import pytest

from kerna import (
    ActivationFailed,
    Agent,
    DeadLetter,
    Kernel,
    Message,
    RemoteError,
    handler,
)

from .agents import Ping, Pong

pytestmark = pytest.mark.anyio


class Abort(BaseException):
    """A user's BaseException subclass (not an Exception)."""


class RaiseAbort(Message):
    pass


class RaiseGeneratorExit(Message):
    pass


class AwaitCancelled(Message):
    """The handler awaits a future that somebody else cancels."""


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ is broken")


class EndlessError(Exception):
    def __str__(self) -> str:
        return str(self)  # RecursionError when formatted


class RaiseUnprintable(Message):
    endless: bool = False


class Volatile(Agent):
    """Raises whatever it is asked to; answers Ping in between."""

    @handler
    async def ping(self, msg: Ping) -> Pong:
        return Pong(n=msg.n)

    @handler
    async def abort(self, msg: RaiseAbort) -> None:
        raise Abort("stop everything")

    @handler
    async def generator_exit(self, msg: RaiseGeneratorExit) -> None:
        raise GeneratorExit

    @handler
    async def await_cancelled(self, msg: AwaitCancelled) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(future.cancel)
        await future  # raises CancelledError: the handler's own, not the kernel's

    @handler
    async def unprintable(self, msg: RaiseUnprintable) -> None:
        raise EndlessError() if msg.endless else UnprintableError()


class DeadLetters(Agent):
    got: asyncio.Queue[DeadLetter]

    @handler
    async def on(self, msg: DeadLetter) -> None:
        DeadLetters.got.put_nowait(msg)


async def _next_dead_letter(timeout: float = 5.0) -> DeadLetter:
    async with asyncio.timeout(timeout):
        return await DeadLetters.got.get()


@pytest.fixture
def dead_letters(kernel: Kernel) -> asyncio.Queue[DeadLetter]:
    DeadLetters.got = asyncio.Queue()
    kernel.register(DeadLetters)
    kernel.subscribe(Kernel.DEAD_LETTERS, DeadLetters)
    return DeadLetters.got


@pytest.mark.parametrize(
    ("message", "type_name"),
    [(RaiseAbort(), "Abort"), (RaiseGeneratorExit(), "GeneratorExit")],
)
async def test_a_handler_raising_a_base_exception_fails_its_asker_and_the_kernel_lives_on(
    kernel: Kernel, message: Message, type_name: str
) -> None:
    kernel.register(Volatile)
    ref = kernel.ref(Volatile, "v")
    queued = [asyncio.ensure_future(ref.ask(Ping(n=i), timeout=2)) for i in range(3)]
    with pytest.raises(RemoteError) as info:
        await ref.ask(message, timeout=2)
    assert info.value.type_name.endswith(type_name)
    assert [p.n for p in await asyncio.wait_for(asyncio.gather(*queued), 5)] == [0, 1, 2]
    assert kernel.running
    assert await ref.ask(Ping(n=7), timeout=2) == Pong(n=7)
    assert await kernel.ref(Volatile, "other").ask(Ping(n=8), timeout=2) == Pong(n=8)
    assert kernel.stats().types["Volatile"].failed == 1


async def test_a_told_base_exception_becomes_a_dead_letter_and_the_kernel_lives_on(
    kernel: Kernel, dead_letters: asyncio.Queue[DeadLetter]
) -> None:
    kernel.register(Volatile)
    ref = kernel.ref(Volatile, "v")
    await ref.tell(RaiseAbort())
    dead = await _next_dead_letter()
    assert dead.reason == "handler_failed"
    assert dead.error is not None
    assert "Abort" in dead.error
    assert await ref.ask(Ping(n=1), timeout=2) == Pong(n=1)
    assert kernel.running


async def test_a_handlers_own_cancelled_error_goes_to_its_asker_and_the_queue_survives(
    kernel: Kernel,
) -> None:
    kernel.register(Volatile)
    ref = kernel.ref(Volatile, "v")
    first = asyncio.ensure_future(ref.ask(AwaitCancelled(), timeout=2))
    behind = [asyncio.ensure_future(ref.ask(Ping(n=i), timeout=2)) for i in range(5)]
    with pytest.raises(RemoteError) as info:
        await asyncio.wait_for(first, 5)
    assert info.value.type_name.endswith("CancelledError")
    assert [p.n for p in await asyncio.wait_for(asyncio.gather(*behind), 5)] == list(range(5))
    await ref.tell(AwaitCancelled())  # and on the tell path
    assert await ref.ask(Ping(n=9), timeout=2) == Pong(n=9)
    stats = kernel.stats().types["Volatile"]
    assert (stats.failed, stats.handled) == (2, 6)
    assert kernel.running


@pytest.mark.parametrize("endless", [False, True], ids=["raising-str", "recursive-str"])
async def test_an_error_that_cannot_be_formatted_still_reaches_its_asker(
    kernel: Kernel, dead_letters: asyncio.Queue[DeadLetter], endless: bool
) -> None:
    kernel.register(Volatile)
    ref = kernel.ref(Volatile, "v")
    with pytest.raises(RemoteError) as info:
        await ref.ask(RaiseUnprintable(endless=endless), timeout=2)
    name = "EndlessError" if endless else "UnprintableError"
    assert info.value.type_name.endswith(name)
    assert name in info.value.message  # the fallback names the type
    await ref.tell(RaiseUnprintable(endless=endless))
    dead = await _next_dead_letter()
    assert dead.error is not None
    assert name in dead.error
    assert await ref.ask(Ping(n=1), timeout=2) == Pong(n=1)
    assert kernel.running


class StartAbort(Agent):
    async def on_start(self) -> None:
        raise Abort("no start")

    @handler
    async def ping(self, msg: Ping) -> Pong:
        return Pong(n=msg.n)


class StopAbort(Agent):
    async def on_stop(self) -> None:
        raise Abort("no stop")

    @handler
    async def ping(self, msg: Ping) -> Pong:
        return Pong(n=msg.n)


async def test_lifecycle_hooks_raising_base_exceptions_do_not_kill_the_kernel() -> None:
    kernel = Kernel(max_restarts=1, restart_backoff=0.001)
    await kernel.start()
    kernel.register(StartAbort)
    kernel.register(StopAbort)
    with pytest.raises(ActivationFailed) as info:
        await kernel.ref(StartAbort, "s").ask(Ping(n=1), timeout=2)
    assert info.value.type_name.endswith("Abort")
    stopper = kernel.ref(StopAbort, "s")
    assert await stopper.ask(Ping(n=2), timeout=2) == Pong(n=2)
    await asyncio.wait_for(
        stopper.deactivate(), 5
    )  # on_stop raises Abort: counted, the kernel lives on
    assert await stopper.ask(Ping(n=3), timeout=2) == Pong(n=3)
    assert kernel.running
    async with asyncio.timeout(5):
        await kernel.stop()  # on_stop raises again at stop: counted, stop completes
    assert kernel.stats().types["StopAbort"].failed == 2


@pytest.mark.parametrize(
    ("raised", "returncode"), [("SystemExit(3)", 3), ("KeyboardInterrupt()", 130)]
)
async def test_keyboard_interrupt_and_system_exit_propagate_as_in_asyncio(
    raised: str, returncode: int
) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, signal, sys
        from kerna import Agent, Kernel, Message, handler

        class Go(Message):
            pass

        class Quitter(Agent):
            @handler
            async def go(self, msg: Go) -> None:
                raise {raised}

        async def main() -> None:
            async with Kernel() as kernel:
                kernel.register(Quitter)
                await kernel.ref(Quitter, "q").ask(Go(), timeout=5)

        try:
            asyncio.run(main())
        except KeyboardInterrupt:
            sys.exit(130)
        print("not propagated")
        """
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=PIPE, stderr=PIPE
    )
    try:
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == returncode, (out + err).decode()
    assert b"not propagated" not in out


class CancelItself(Message):
    pass


class SelfCancelling(Agent):
    @handler
    async def cancel_itself(self, msg: CancelItself) -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # the handler cancels its own task: its failure, not a kernel stop
        await asyncio.sleep(0)

    @handler
    async def ping(self, msg: Ping) -> Pong:
        return Pong(n=msg.n)


async def test_a_handler_that_cancels_its_own_task_fails_alone(kernel: Kernel) -> None:
    kernel.register(SelfCancelling)
    ref = kernel.ref(SelfCancelling, "s")
    first = asyncio.ensure_future(ref.ask(CancelItself(), timeout=2))
    behind = [asyncio.ensure_future(ref.ask(Ping(n=i), timeout=2)) for i in range(3)]
    with pytest.raises(RemoteError) as info:
        await asyncio.wait_for(first, 5)
    assert info.value.type_name.endswith("CancelledError")
    assert [p.n for p in await asyncio.wait_for(asyncio.gather(*behind), 5)] == [0, 1, 2]
    async with asyncio.timeout(2):  # a later timeout in the same worker still works
        assert await ref.ask(Ping(n=5), timeout=1) == Pong(n=5)


class Refusing(Agent):
    async def on_start(self) -> None:
        raise RuntimeError("never starts")

    @handler
    async def on(self, msg: Ping) -> None:
        pass


class Taking(Agent):
    got: list[int]

    @handler
    async def on(self, msg: Ping) -> None:
        Taking.got.append(msg.n)


async def test_a_publisher_refused_by_one_subscriber_still_reaches_the_others() -> None:
    Taking.got = []
    async with Kernel(max_restarts=0) as kernel:
        kernel.register(Refusing, mailbox_size=1)
        kernel.register(Taking)
        kernel.subscribe("t", Refusing)
        kernel.subscribe("t", Taking)
        async with asyncio.timeout(5):
            for n in range(3):  # the 2nd waits for room at Refusing, which then fails
                await kernel.publish("t", Ping(n=n))
        await kernel.ref(Taking, "default").ask(Ping(n=-1), timeout=5)
        assert Taking.got == [0, 1, 2, -1]


class Sink(Agent):
    gate: asyncio.Event

    @handler
    async def on(self, msg: DeadLetter) -> None:
        await Sink.gate.wait()


async def test_dead_letters_a_full_watcher_cannot_take_are_counted_on_its_type() -> None:
    Sink.gate = asyncio.Event()
    async with Kernel() as kernel:
        kernel.register(Sink, mailbox_size=1)
        kernel.register(Volatile)
        kernel.subscribe(Kernel.DEAD_LETTERS, Sink)
        for _ in range(20):
            await kernel.ref(Volatile, "v").tell(RaiseAbort())
        await kernel.ref(Volatile, "v").ask(Ping(n=0), timeout=5)  # all 20 handled
        stats = kernel.stats().types["Sink"]
        assert stats.dead_letters + stats.queued + 1 == 20  # 1 being handled, 1 queued
        Sink.gate.set()
