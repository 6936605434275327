"""Per type timing: how long messages wait in mailboxes and how long handlers take.

Only with ``Kernel(timing=N)``: the messages whose id is a multiple of ``N`` are timed
(ids count up per kernel, so that is one message in ``N``, spread over the types as
their traffic is; ``kerna node`` times one in 16 by default and its ``/metrics``
exports both as Prometheus histograms). Off (0, the default), the delivery path pays
one ``is None`` test per put and per message handled; on, a modulo per put and, for a
timed message, three clock reads and two bucket searches.
benchmarks/RESULTS-timing.md measures it on W1-W3: timing every message costs about
half of W1's and W3's throughput (a handler there takes about a microsecond); one in
16 much less (the numbers are in that file). The histograms' counts are of timed
messages: rates come from ``TypeStats.handled`` (``kerna_messages_handled_total``).

Wait time runs from the moment a mailbox took the message (a parked sender's included:
it waited too) to the start of its handler; handling time from that start to the
handler's return or raise (a handler that deferred its reply counts until it returned,
not until it replied). An event shares one envelope among its subscribers: each
subscriber's wait is measured from the last mailbox that took it, which a fan-out does
in one pass.

``Kernel.watch_timings(fn)`` has ``fn`` called with each timed observation, as it is
made (``kerna.plugins.Metrics`` feeds OpenTelemetry histograms so): a timed message
then pays one call per watcher; an untimed one nothing.
"""

from __future__ import annotations

import bisect
import functools
import logging
from collections.abc import Callable, Iterable

import msgspec

__all__ = ["BOUNDS", "Histogram", "TypeTiming", "TypeTimings", "Watcher"]

log = logging.getLogger("kerna.kernel")

Watcher = Callable[[str, str, float], None]
"""``watcher(type name, "wait" | "handling", seconds)`` (``Kernel.watch_timings``)."""

# Seconds: from sub-millisecond in-process handlers to a slow model call.
BOUNDS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Histogram(msgspec.Struct, frozen=True):
    """A snapshot of one histogram (``Kernel.timings()``).

    Attributes:
        bounds: the buckets' upper bounds in seconds, increasing (a last bucket, above
            every bound, is implied).
        counts: observations per bucket (not cumulative): ``len(bounds) + 1`` of them,
            the last one above every bound.
        count: all observations.
        sum: their sum in seconds.
    """

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    count: int
    sum: float

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding the ``q`` quantile (an estimate, as
        Prometheus' ``histogram_quantile`` without interpolation); None when empty;
        the largest bound when it lies above every bound."""
        if not self.count:
            return None
        rank = q * self.count
        seen = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            seen += n
            if seen >= rank:
                return bound
        return self.bounds[-1]


class TypeTimings(msgspec.Struct, frozen=True):
    """Mailbox wait and handling time of one agent type (``Kernel.timings()``)."""

    wait: Histogram
    handling: Histogram


class _Buckets:
    __slots__ = ("count", "counts", "sum", "watchers")

    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS) + 1)
        self.count = 0
        self.sum = 0.0
        self.watchers: tuple[Callable[[float], None], ...] = ()

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BOUNDS, seconds)] += 1
        self.count += 1
        self.sum += seconds
        if self.watchers:
            self._tell(seconds)

    def _tell(self, seconds: float) -> None:
        for watcher in self.watchers:
            try:
                watcher(seconds)
            except Exception:
                # In a worker, between two messages: a broken watcher must not fail
                # the agent. It is dropped, once, loudly.
                log.exception("timing watcher %r raised: it is removed", watcher)
                self.watchers = tuple(w for w in self.watchers if w is not watcher)

    def snapshot(self) -> Histogram:
        return Histogram(BOUNDS, tuple(self.counts), self.count, self.sum)


class TypeTiming:
    """The live histograms of one agent type (``AgentType.timing`` when timing is on).

    Args:
        every: time the messages whose id is a multiple of ``every``.
    """

    __slots__ = ("every", "handling", "name", "wait")

    def __init__(self, every: int, name: str = "", watchers: Iterable[Watcher] = ()) -> None:
        self.every = every
        self.name = name
        self.wait = _Buckets()
        self.handling = _Buckets()
        for watcher in watchers:
            self.watch(watcher)

    def watch(self, watcher: Watcher) -> None:
        """Call ``watcher(type name, "wait" | "handling", seconds)`` at each timing."""
        for kind, buckets in (("wait", self.wait), ("handling", self.handling)):
            buckets.watchers = (*buckets.watchers, functools.partial(watcher, self.name, kind))

    def snapshot(self) -> TypeTimings:
        return TypeTimings(self.wait.snapshot(), self.handling.snapshot())
