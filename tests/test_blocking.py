"""Sync embedding: a kernel on a background thread, driven from plain code."""

from __future__ import annotations

import threading

import pytest

from kerna import Agent, BlockingKernel, KernelStopped, RemoteError, UnknownAgent, handler

from .agents import Boom, Echo, Ping, Pong
from .test_event_sourcing import Account, Deposit, Deposited


def _loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "kerna-blocking-kernel"]


def test_sync_ask_tell_publish() -> None:
    with BlockingKernel(ask_timeout=5) as kernel:
        assert len(_loop_threads()) == 1
        assert kernel.register(Echo) == "Echo"
        ref = kernel.ref(Echo, "a")
        assert ref.ask(Ping(n=1), timeout=1.0) == Pong(n=1)
        ref.tell(Ping(n=2))
        kernel.subscribe("pings", Echo, key=lambda m: "a")
        kernel.publish("pings", Ping(n=3))
        assert ref.ask(Ping(n=4)) == Pong(n=4)
        assert kernel.stats().types["Echo"].handled == 4
        with pytest.raises(RemoteError, match="ValueError"):
            ref.ask(Boom())
        with pytest.raises(UnknownAgent):
            kernel.ref("Nope", "x").tell(Ping(n=1))
        ref.deactivate()
    assert not _loop_threads()  # stop ended the loop thread


def test_calls_from_many_threads() -> None:
    with BlockingKernel() as kernel:
        kernel.register(Echo)
        results: list[int] = []
        lock = threading.Lock()

        def client(base: int) -> None:
            ref = kernel.ref(Echo, str(base % 3))
            for i in range(50):
                n = ref.ask(Ping(n=base * 1000 + i)).n
                with lock:
                    results.append(n)

        threads = [threading.Thread(target=client, args=(b,)) for b in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
            assert not t.is_alive(), f"{t.name} still running"
        assert sorted(results) == sorted(b * 1000 + i for b in range(4) for i in range(50))


def test_a_kernel_that_never_started_has_no_thread_and_stops_quietly() -> None:
    kernel = BlockingKernel()
    kernel.register(Echo)
    assert kernel.ref(Echo, "a").id.key == "a"
    assert not _loop_threads()
    kernel.stop()
    kernel.stop()


def test_concurrent_stops_all_return_once_the_kernel_stopped() -> None:
    kernel = BlockingKernel(ask_timeout=5)
    kernel.start()
    kernel.register(Echo)
    assert kernel.ref(Echo, "a").ask(Ping(n=1)) == Pong(n=1)
    threads = [threading.Thread(target=kernel.stop) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    assert not kernel.running
    assert not _loop_threads()


class Caller(Agent):
    """Calls its BlockingKernel from inside a handler: a mistake, told as such."""

    def __init__(self, blocking: BlockingKernel) -> None:
        self.blocking = blocking

    @handler
    async def ping(self, msg: Ping) -> Pong:
        result: Pong = self.blocking.ref(Echo, "x").ask(msg)
        return result


def test_a_call_from_inside_an_agent_fails_at_once_saying_why() -> None:
    with BlockingKernel(ask_timeout=5) as kernel:
        kernel.register(Echo)
        kernel.register(Caller, factory=lambda: Caller(kernel))
        with pytest.raises(RemoteError, match="cannot be called on the kernel's own loop") as e:
            kernel.ref(Caller, "c").ask(Ping(n=1))
        assert e.value.type_name == "kerna.UsageError"


def test_calls_after_stop_raise_kernel_stopped() -> None:
    kernel = BlockingKernel(ask_timeout=5)
    kernel.start()
    kernel.register(Echo)
    ref = kernel.ref(Echo, "a")
    assert ref.ask(Ping(n=1)) == Pong(n=1)
    kernel.stop()
    with pytest.raises(KernelStopped):
        ref.ask(Ping(n=2))
    with pytest.raises(KernelStopped):
        ref.tell(Ping(n=3))
    with pytest.raises(KernelStopped, match="stopped"):
        kernel.ref(Echo, "b").ask(Ping(n=4))  # a ref still comes, as from Kernel
    with pytest.raises(KernelStopped):
        kernel.publish("pings", Ping(n=4))
    kernel.stop()  # still idempotent


def test_a_call_racing_with_stop_raises_kernel_stopped_or_succeeds() -> None:
    kernel = BlockingKernel(ask_timeout=5)
    kernel.start()
    kernel.register(Echo)
    ref = kernel.ref(Echo, "a")
    outcomes: list[object] = []
    started = threading.Event()

    def caller() -> None:
        started.set()
        for i in range(10_000):
            try:
                outcomes.append(ref.ask(Ping(n=i)))
            except Exception as exc:  # anything but KernelStopped fails the test below
                outcomes.append(exc)
                return

    thread = threading.Thread(target=caller)
    thread.start()
    assert started.wait(5)
    kernel.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert isinstance(outcomes[-1], KernelStopped), outcomes[-1]  # the caller was stopped
    assert all(isinstance(o, Pong) for o in outcomes[:-1])


def test_an_event_log_read_stops_early_and_pages_lazily() -> None:
    with BlockingKernel(ask_timeout=5) as kernel:
        kernel.register(Account)
        ref = kernel.ref(Account, "a")
        for amount in range(1, 4):
            ref.ask(Deposit(amount=amount))
        log = kernel.event_log(Account, "a")
        assert (log.agent_type, log.key) == ("Account", "a")
        events = log.events()
        assert next(events).event == Deposited(amount=1)
        events.close()  # the async generator underneath is closed on the loop thread
        assert [r.seq for r in log.events(after=1)] == [2, 3]
        assert log.state_at()[1] == 3
    with pytest.raises(KernelStopped, match=r"stopped \(event log not read\)"):
        list(log.events())
