"""pykka's side: ``ThreadingActor`` (one thread and one unbounded queue per actor).

pykka has no event loop, so these run in plain threads. W1 uses ``tell``; W2 uses
``ask`` (blocking) from one caller thread for latency; for concurrency one caller
thread keeps 64 asks in flight with ``ask(..., block=False)`` futures (pykka's fastest
form measured here: about 3x the rate of 64 caller threads doing blocking asks, which
lose to GIL hand-offs; see ``CONCURRENCY_MODE``). W3 has no pub/sub in pykka: a
publish is one ``tell`` per subscriber actor (cheaper than ``ActorRegistry.broadcast``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pykka

from ._common import Ping, Pong, ThreadTally, percentile

__all__ = ["CONCURRENCY_MODE", "w1", "w2_concurrent", "w2_sequential", "w3", "w4_activate"]

CONCURRENCY_MODE = "futures"
"""How W2's concurrent callers are made: ``"threads"`` (one blocking caller thread per
caller) or ``"futures"`` (one thread keeping ``callers`` asks in flight)."""


class PCounter(pykka.ThreadingActor):
    """Counts its messages; sets its tally's event at the target (one tally per actor,
    so no lock is needed)."""

    use_daemon_thread = True

    def __init__(self, tally: ThreadTally) -> None:
        super().__init__()
        self.tally = tally

    def on_receive(self, message: Any) -> None:
        tally = self.tally
        tally.count += 1
        if tally.count == tally.target:
            tally.done.set()


class PEcho(pykka.ThreadingActor):
    """Replies ``Pong(n)`` to ``Ping(n)``."""

    use_daemon_thread = True

    def on_receive(self, message: Any) -> Pong:
        return Pong(message.n)


def _stop(refs: list[pykka.ActorRef[Any]]) -> None:
    for ref in refs:
        ref.stop(block=False)
    for ref in refs:
        ref.actor_stopped.wait(10)


def w1(n: int) -> float:
    """One sender thread, one actor, ``n`` tells; messages handled per second."""
    tally = ThreadTally(n)
    ref = PCounter.start(tally)
    t0 = time.perf_counter()
    for i in range(n):
        ref.tell(Ping(i))
    tally.wait("pykka w1")
    elapsed = time.perf_counter() - t0
    _stop([ref])
    return n / elapsed


def w2_sequential(n: int) -> tuple[float, float]:
    """``n`` sequential blocking asks; (p50, p99) latency in microseconds."""
    ref = PEcho.start()
    clock = time.perf_counter
    lat: list[float] = []
    for i in range(n):
        t0 = clock()
        ref.ask(Ping(i))
        lat.append(clock() - t0)
    _stop([ref])
    return percentile(lat, 50) * 1e6, percentile(lat, 99) * 1e6


def w2_concurrent(callers: int, per_caller: int, mode: str = CONCURRENCY_MODE) -> float:
    """``callers`` concurrent askers of one actor, ``per_caller`` asks each; req/s."""
    ref = PEcho.start()
    total = callers * per_caller
    if mode == "threads":
        start = threading.Barrier(callers + 1)

        def caller() -> None:
            start.wait()
            for i in range(per_caller):
                ref.ask(Ping(i))

        threads = [threading.Thread(target=caller, daemon=True) for _ in range(callers)]
        for t in threads:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
    else:
        t0 = time.perf_counter()
        window = [ref.ask(Ping(i), block=False) for i in range(callers)]
        for i in range(callers, total):
            window[i % callers].get()
            window[i % callers] = ref.ask(Ping(i), block=False)
        for future in window:
            future.get()
    elapsed = time.perf_counter() - t0
    _stop([ref])
    return total / elapsed


def w3(events: int, subscribers: int) -> float:
    """Publish ``events`` to ``subscribers`` actors (a tell to each); deliveries/s."""
    tallies = [ThreadTally(events) for _ in range(subscribers)]
    refs = [PCounter.start(tally) for tally in tallies]
    t0 = time.perf_counter()
    for i in range(events):
        message = Ping(i)
        for ref in refs:
            ref.tell(message)
    for tally in tallies:
        tally.wait("pykka w3")
    elapsed = time.perf_counter() - t0
    _stop(refs)
    return events * subscribers / elapsed


def w4_activate(n: int) -> tuple[float, Callable[[], None]]:
    """Start ``n`` actors with one tell each; seconds until all handled, and cleanup."""
    tallies = [ThreadTally(1) for _ in range(n)]
    refs: list[pykka.ActorRef[Any]] = []
    t0 = time.perf_counter()
    for i, tally in enumerate(tallies):
        ref = PCounter.start(tally)
        refs.append(ref)
        ref.tell(Ping(i))
    for tally in tallies:
        tally.wait("pykka w4")
    elapsed = time.perf_counter() - t0
    return elapsed, lambda: _stop(refs)
