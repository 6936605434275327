"""Bulkheads: at most N calls to one target at once, so one slow dependency cannot take
every worker; callers beyond N wait for a slot, in order, within their own deadline."""

from __future__ import annotations

import asyncio

import msgspec

from kerna import AskTimeout

__all__ = ["Bulkhead", "BulkheadStats"]


class BulkheadStats(msgspec.Struct, frozen=True):
    """One bulkhead's gauges and counters (``Resilience.bulkhead_stats``).

    Attributes:
        limit: calls admitted at once.
        active: calls running now.
        waiting: callers waiting for a slot now.
        peak: the most calls ever running at once.
        timed_out: callers whose deadline passed while they waited (not called).
    """

    limit: int
    active: int
    waiting: int
    peak: int
    timed_out: int


class Bulkhead:
    """The concurrency limit of one target."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.slots = asyncio.Semaphore(limit)
        self.active = 0
        self.waiting = 0
        self.peak = 0
        self.timed_out = 0

    async def enter(self, time_left: float | None) -> None:
        """Take a slot, waiting at most ``time_left`` seconds (None: no bound).

        Raises:
            AskTimeout: no slot came free before the caller's deadline.
        """
        if self.slots.locked() or self.waiting:
            self.waiting += 1
            try:
                async with asyncio.timeout(time_left):
                    await self.slots.acquire()
            except TimeoutError:
                self.timed_out += 1
                raise AskTimeout(
                    f"bulkhead of {self.name}: all {self.limit} slots stayed busy until the "
                    "deadline; not called",
                    target=None,
                    timeout=time_left or 0.0,
                ) from None
            finally:
                self.waiting -= 1
        else:
            await self.slots.acquire()
        self.active += 1
        self.peak = max(self.peak, self.active)

    def leave(self) -> None:
        self.active -= 1
        self.slots.release()

    def stats(self) -> BulkheadStats:
        return BulkheadStats(self.limit, self.active, self.waiting, self.peak, self.timed_out)
