"""Fault injection around a real backend: ``FaultyBackend`` delegates every call to a
real ``StateBackend`` (``memory://`` in the tests) and fails the calls a test scripts.

A script lists what the next data calls (``get``, ``range``, ``txn``) do, in order:

- ``"applied"`` (txn only): the transaction runs on the real backend, then the call
  raises ``OutcomeUnknown``, as when etcd applied a write whose answer was lost;
- ``"lost"``: raises ``OutcomeUnknown`` without running (the answer and the request
  were lost);
- ``"down"``: raises ``Unavailable`` without running (the store cannot be reached);
- ``"ok"``: runs normally.

Calls past the end of the script run normally. ``keepalive_down`` makes every
``lease_keepalive`` raise ``Unavailable`` (a partition that only the lease notices);
``grant_down`` does the same to ``lease_grant``, after waiting for ``grant_gate`` when
one is set (a grant held on its way to an unreachable store); ``grants`` counts the
grants asked for, ``grant_asked`` is set on each, ``grant_refused`` on each refused;
``grant_plan`` ("down" or "ok" per grant, past the gate) overrides ``grant_down`` for
the next grants; ``revoke_down`` makes ``lease_revoke`` raise ``Unavailable``.
``hold_delete`` names a key whose deleting txn sets ``delete_reached``, waits for
``delete_gate`` (when one is set: a write on its way), is applied on the real backend,
then sets ``delete_applied`` and waits for ``delete_answer`` before it returns (a write
applied whose answer is slow to come back). ``hold_put`` names a key whose writing txn
waits for ``put_gate`` before it is applied. ``refused`` is set when a txn comparing
``watch_key`` does not succeed (a claim found taken, say). ``delete_seen`` is set when
a watch of this backend delivers the deletion of ``follow_delete`` (the node watching
through it sees that key go: a released claim, say).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Sequence

import pytest

from kerna import OutcomeUnknown, Unavailable
from kerna.state import (
    Compare,
    Delete,
    KeyValue,
    Op,
    Page,
    Put,
    StateBackend,
    TxnResult,
    WatchEvent,
)
from kerna.state._memory import MemoryBackend

__all__ = ["FaultyBackend"]


class FaultyBackend(StateBackend):
    """A real backend whose next data calls fail as scripted (see the module docstring)."""

    def __init__(self, inner: StateBackend) -> None:
        self.inner = inner
        self.url = f"faulty+{inner.url}"
        self.script: deque[str] = deque()
        self.calls: list[str] = []  # every data call, in order: "get", "range", "txn"
        self.ranges: list[tuple[str, str | None, str | None]] = []  # (prefix, start_after, end)
        self.keepalive_down = False
        self.keepalives_ok = 0
        self.keepalive_ok = asyncio.Event()  # set on each successful keepalive
        self.keepalive_refused = asyncio.Event()  # set on each keepalive refused
        self.revoke_down = False
        self.grants = 0
        self.grant_down = False
        self.grant_plan: deque[str] = deque()
        self.grant_asked = asyncio.Event()
        self.grant_refused = asyncio.Event()
        self.grant_gate: asyncio.Event | None = None
        self.hold_delete: str | None = None
        self.delete_reached = asyncio.Event()
        self.delete_gate: asyncio.Event | None = None
        self.delete_applied = asyncio.Event()
        self.delete_answer = asyncio.Event()
        self.hold_put: str | None = None
        self.put_gate = asyncio.Event()
        self.watch_key: str | None = None
        self.refused = asyncio.Event()
        self.follow_delete: str | None = None
        self.delete_seen = asyncio.Event()
        self.late_delete: str | None = None  # its watchers see this key's deletion...
        self.late_gate = asyncio.Event()  # ...only once this is set (their watch waits)
        self.late_held = asyncio.Event()  # set when that deletion reached a watch

    @classmethod
    async def from_url(cls, url: str, **options: object) -> FaultyBackend:
        raise NotImplementedError("wrap a connected backend: FaultyBackend(backend)")

    def plan(self, *steps: str) -> None:
        """What the next data calls do (appended to what is still planned)."""
        for step in steps:
            if step not in ("applied", "lost", "down", "ok"):
                raise ValueError(f"unknown fault {step!r}")
        self.script.extend(steps)

    def _next(self, call: str) -> str:
        self.calls.append(call)
        step = self.script.popleft() if self.script else "ok"
        if step == "applied" and call != "txn":
            raise AssertionError(f"'applied' scripted for a {call}")
        if step == "lost":
            raise OutcomeUnknown(f"injected: {call} lost (may or may not have been applied)")
        if step == "down":
            raise Unavailable(f"injected: store down for this {call}")
        return step

    async def get(self, key: str, *, linearizable: bool = True) -> KeyValue | None:
        self._next("get")
        return await self.inner.get(key, linearizable=linearizable)

    async def range(
        self,
        prefix: str,
        *,
        start_after: str | None = None,
        end: str | None = None,
        limit: int = 1000,
    ) -> Page:
        self._next("range")
        self.ranges.append((prefix, start_after, end))
        return await self.inner.range(prefix, start_after=start_after, end=end, limit=limit)

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        step = self._next("txn")
        held = self.hold_delete
        holding = held is not None and any(
            isinstance(op, Delete) and op.key == held for op in success
        )
        if holding:
            self.delete_reached.set()
            if self.delete_gate is not None:
                await self.delete_gate.wait()
        if self.hold_put is not None and any(
            isinstance(op, Put) and op.key == self.hold_put for op in success
        ):
            await self.put_gate.wait()
        result = await self.inner.txn(compares, success, failure)
        if holding:
            self.delete_applied.set()
            await self.delete_answer.wait()
        if not result.succeeded and any(c.key == self.watch_key for c in compares):
            self.refused.set()
        if step == "applied":
            raise OutcomeUnknown(f"injected: txn applied at {result.revision}, answer lost")
        return result

    async def watch(self, prefix: str, from_revision: int) -> AsyncIterator[WatchEvent]:
        async for event in self.inner.watch(prefix, from_revision):
            if event.kind == "delete" and event.kv.key == self.late_delete:
                self.late_held.set()
                await self.late_gate.wait()  # this watch lags behind the others
            if event.kind == "delete" and event.kv.key == self.follow_delete:
                self.delete_seen.set()  # its watcher applies it before any waiter runs
            yield event

    async def lease_grant(self, ttl: float) -> int:
        self.grants += 1
        self.grant_asked.set()
        if self.grant_gate is not None:
            await self.grant_gate.wait()
        down = self.grant_plan.popleft() == "down" if self.grant_plan else self.grant_down
        if down:
            self.grant_refused.set()
            raise Unavailable("injected: a lease grant cannot reach the store")
        return await self.inner.lease_grant(ttl)

    async def lease_keepalive(self, lease_id: int) -> float:
        if self.keepalive_down:
            self.keepalive_refused.set()
            raise Unavailable("injected: keepalive cannot reach the store")
        ttl = await self.inner.lease_keepalive(lease_id)
        self.keepalives_ok += 1
        self.keepalive_ok.set()
        return ttl

    async def lease_revoke(self, lease_id: int) -> None:
        if self.revoke_down:
            raise Unavailable("injected: a lease revoke cannot reach the store")
        await self.inner.lease_revoke(lease_id)

    async def compact(self, revision: int) -> None:
        await self.inner.compact(revision)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
async def faulty() -> AsyncIterator[FaultyBackend]:
    """A ``FaultyBackend`` around a private ``memory://`` store."""
    backend = FaultyBackend(MemoryBackend())
    try:
        yield backend
    finally:
        await backend.aclose()
