"""Idle deactivation: the agents idle past their type's ``idle_timeout`` leave.

The collector visits only the activations that may be due (Orleans' activation
collector works the same way): when an activation's worker exits, the activation goes
into a bucket of its type by the time it becomes due (``last_active + idle_timeout``,
rounded up to a quarter of the timeout). One loop timer fires when the earliest bucket
is due; a due bucket is visited in slices of ``SLICE`` activations per loop callback,
so a hundred thousand agents falling due together never hold the loop for long, and a
type with a short timeout never makes the kernel visit the agents of another type.

An agent is thus deactivated between ``idle_timeout`` and 1.25 x ``idle_timeout``
after its worker last ran. An activation busy again since it was bucketed is skipped
when its bucket comes (its worker re-buckets it when it exits). Each activation is in
at most one live bucket (``Activation.idle_bucket``); entries it left behind in older
buckets are skipped, and there is at most one per quarter-timeout of activity.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._activation import Activation
    from ._registry import AgentType
    from ._runtime import Runtime

__all__ = ["SLICE", "IdleCollector"]

SLICE = 1000  # activations visited per loop callback
_QUARTERS = 4  # buckets per idle timeout


class IdleCollector:
    """The kernel's idle deactivation (see the module docstring)."""

    __slots__ = ("_buckets", "_closed", "_due", "_order", "_runtime", "_timer", "_timer_when")

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        # Per type: bucket number -> activations that become due by its end.
        self._buckets: dict[AgentType, dict[int, list[Activation]]] = {}
        # (due time, tie-breaker, type, bucket number) of every live bucket.
        self._due: list[tuple[float, int, AgentType, int]] = []
        self._order = itertools.count()
        self._timer: asyncio.Handle | None = None
        self._timer_when = math.inf
        self._closed = False

    def idle(self, act: Activation) -> None:
        """``act``'s worker exited at ``act.last_active``: bucket it by when it is due."""
        atype = act.atype
        timeout = atype.idle_timeout
        if timeout is None or self._closed or act.closed:
            return
        quantum = timeout / _QUARTERS
        due = act.last_active + timeout
        number = math.ceil(due / quantum)
        if number * quantum < due:  # float rounding: a bucket never ends before its due
            number += 1
        if act.idle_bucket == number:
            return
        act.idle_bucket = number
        buckets = self._buckets.get(atype)
        if buckets is None:
            buckets = self._buckets[atype] = {}
        bucket = buckets.get(number)
        if bucket is None:
            buckets[number] = [act]
            when = number * quantum
            heapq.heappush(self._due, (when, next(self._order), atype, number))
            if when < self._timer_when:
                self._arm(when)
        else:
            bucket.append(act)

    def close(self) -> None:
        """Stop collecting (the kernel is stopping); idempotent."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._buckets.clear()
        self._due.clear()

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_when = when
        self._timer = self._runtime.loop.call_at(when, self._visit)

    def _visit(self) -> None:
        """Visit due buckets, at most ``SLICE`` activations in this callback."""
        self._timer = None
        self._timer_when = math.inf
        loop = self._runtime.loop
        now = loop.time()
        budget = SLICE
        due = self._due
        while due and due[0][0] <= now and budget > 0:
            _, _, atype, number = due[0]
            bucket = self._buckets[atype][number]
            take = bucket[-budget:]
            del bucket[-budget:]
            budget -= len(take)
            if not bucket:
                heapq.heappop(due)
                del self._buckets[atype][number]
            for act in take:
                if act.idle_bucket == number:
                    self._collect(act, now)
        if due:
            if due[0][0] <= now:  # more is due: let other callbacks run first
                self._timer = loop.call_soon(self._visit)
                self._timer_when = now
            else:
                self._arm(due[0][0])

    def _collect(self, act: Activation, now: float) -> None:
        act.idle_bucket = 0
        if act.closed or act.task is not None or act.mailbox:
            return  # busy again: its worker re-buckets it when it exits
        if act.pending:  # deferred replies to send: idle only once they are sent
            act.last_active = now
            self.idle(act)
            return
        timeout = act.atype.idle_timeout
        assert timeout is not None
        if now < act.last_active + timeout:  # the timer fired a hair early
            self.idle(act)
            return
        if act.atype.has_on_stop and act.agent is not None:
            act.request_deactivation()
        else:
            self._runtime.retire(act)  # nothing to run: leave without a task
