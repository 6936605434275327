"""Sync embedding: a kernel on a background thread, driven from plain code."""

from __future__ import annotations

import threading

import pytest

from kerna import BlockingKernel, KernelStopped, RemoteError, UnknownAgent

from .agents import Boom, Echo, Ping, Pong


def test_sync_ask_tell_publish() -> None:
    with BlockingKernel(ask_timeout=5) as kernel:
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
    assert not any(t.name.startswith("AnyIO") and t.is_alive() for t in threading.enumerate())


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


def test_not_started() -> None:
    kernel = BlockingKernel()
    with pytest.raises(RuntimeError, match="not started"):
        kernel.ref(Echo, "a")
    kernel.stop()  # stopping a kernel that never started is fine
    with pytest.raises(ValueError, match="mailbox_size"):
        BlockingKernel(mailbox_size=0).start()


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
    with pytest.raises(KernelStopped):
        kernel.ref(Echo, "b")
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
