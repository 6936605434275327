"""``memory://``: the embedded backend, with etcd's semantics in one process.

``memory://`` is private to whoever connects; ``memory://name`` is shared by every
connection to that name in the process (kernels in the same process can then see each
other's writes). Revisions, transactions, watches from past revisions, leases with TTL
and compaction behave as on etcd. The history kept for watches is bounded
(``max_history`` events, default 100,000): older revisions are compacted
automatically, and a watch that starts before them gets ``Compacted``.

Thread-safe: a store may be shared by kernels on different event loops (for example a
``BlockingKernel``); watchers are woken on their own loop.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from kerna._errors import Compacted, ConfigError, LeaseLost

from ._backend import StateBackend
from ._types import Compare, Delete, Get, KeyValue, Op, Page, Put, TxnResult, WatchEvent

__all__ = ["MemoryBackend"]

_named: dict[str, _Store] = {}
_named_lock = threading.Lock()
_CLOSED: Any = object()


def _now() -> float:
    """The running loop's clock (what the expiry timers and the kernel's keepalives run
    on: ``time.monotonic`` for asyncio's loops, virtual time under
    ``kerna.testing.VirtualClock``), or ``time.monotonic`` outside a loop."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


class _Lease:
    __slots__ = ("deadline", "keys", "ttl")

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.deadline = _now() + ttl
        self.keys: set[str] = set()


class _Watcher:
    __slots__ = ("loop", "prefix", "queue")

    def __init__(self, prefix: str, loop: asyncio.AbstractEventLoop) -> None:
        self.prefix = prefix
        self.loop = loop
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def push(self, item: Any) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self.queue.put_nowait(item)
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class _Store:
    """The data of one memory store; every method runs under ``lock``."""

    def __init__(self, max_history: int) -> None:
        self.lock = threading.RLock()
        self.data: dict[str, KeyValue] = {}
        self.sorted_keys: list[str] = []
        self.revision = 1  # etcd starts at 1 too
        self.compacted = 0  # history below this revision is gone
        self.history: list[WatchEvent] = []
        self.history_revs: list[int] = []
        self.max_history = max_history
        self.leases: dict[int, _Lease] = {}
        self.lease_ids = itertools.count(1)
        self.watchers: set[_Watcher] = set()

    # All helpers below assume the lock is held.

    def expire_leases(self) -> None:
        now = _now()
        expired = [lid for lid, lease in self.leases.items() if lease.deadline <= now]
        for lid in expired:
            self.revoke(lid)

    def revoke(self, lease_id: int) -> None:
        lease = self.leases.pop(lease_id, None)
        if lease is None or not lease.keys:
            return
        self.revision += 1
        events = [self.remove(key) for key in sorted(lease.keys) if key in self.data]
        self.publish(events)

    def remove(self, key: str) -> WatchEvent:
        old = self.data.pop(key)
        del self.sorted_keys[bisect.bisect_left(self.sorted_keys, key)]
        if old.lease and old.lease in self.leases:
            self.leases[old.lease].keys.discard(key)
        return WatchEvent("delete", KeyValue(key, b"", 0, self.revision, 0, 0))

    def write(self, op: Put) -> WatchEvent:
        if op.lease and op.lease not in self.leases:
            raise LeaseLost(f"lease {op.lease} not found (expired or revoked)")
        old = self.data.get(op.key)
        if old is None:
            bisect.insort(self.sorted_keys, op.key)
            kv = KeyValue(op.key, op.value, self.revision, self.revision, 1, op.lease)
        else:
            if old.lease and old.lease != op.lease and old.lease in self.leases:
                self.leases[old.lease].keys.discard(op.key)
            kv = KeyValue(
                op.key, op.value, old.create_revision, self.revision, old.version + 1, op.lease
            )
        if op.lease:
            self.leases[op.lease].keys.add(op.key)
        self.data[op.key] = kv
        return WatchEvent("put", kv)

    def publish(self, events: list[WatchEvent]) -> None:
        if not events:
            return
        self.history.extend(events)
        self.history_revs.extend(e.revision for e in events)
        if len(self.history) > self.max_history:
            keep_from = self.history_revs[len(self.history) - max(1, self.max_history // 2)]
            cut = bisect.bisect_left(self.history_revs, keep_from)  # whole revisions only
            self.compacted = keep_from
            del self.history[:cut], self.history_revs[:cut]
        for watcher in tuple(self.watchers):
            matching = [e for e in events if e.kv.key.startswith(watcher.prefix)]
            if matching:
                watcher.push(matching)

    def keys_with_prefix(
        self,
        prefix: str,
        start_after: str | None,
        limit: int | None = None,
        end: str | None = None,
    ) -> list[str]:
        """Keys under ``prefix`` after ``start_after`` and before ``end``, at most
        ``limit`` of them."""
        keys = self.sorted_keys
        lo = bisect.bisect_left(keys, prefix)
        if start_after is not None and start_after >= prefix:
            lo = max(lo, bisect.bisect_right(keys, start_after))
        hi = len(keys) if end is None else bisect.bisect_left(keys, end)
        if limit is not None:
            hi = min(hi, lo + limit)
        if hi <= lo:
            return []
        out = keys[lo:hi]
        if out and not out[-1].startswith(prefix):  # the slice ran past the prefix
            out = [k for k in out if k.startswith(prefix)]
        return out


class MemoryBackend(StateBackend):
    """In-process backend (see the module docstring).

    Args:
        name: share the store with every other ``MemoryBackend`` of that name.
        max_history: watch history kept before automatic compaction.
    """

    def __init__(self, name: str | None = None, *, max_history: int = 100_000) -> None:
        if max_history < 1:
            raise ConfigError(f"max_history must be >= 1, got {max_history!r}")
        if name:
            with _named_lock:
                store = _named.get(name)
                if store is None:
                    store = _named[name] = _Store(max_history)
        else:
            store = _Store(max_history)
        self._store = store
        self._closed = False
        self._watchers: set[_Watcher] = set()
        self._expiry: asyncio.TimerHandle | None = None
        self.url = f"memory://{name or ''}"

    @classmethod
    async def from_url(cls, url: str, **options: object) -> MemoryBackend:
        rest = url.split("://", 1)[1]
        if "/" in rest or "?" in rest:
            raise ConfigError(f"memory URL takes only a name: 'memory://name', got {url!r}")
        max_history = options.pop("max_history", 100_000)
        if options:
            raise ConfigError(f"unknown memory:// options: {', '.join(sorted(options))}")
        if not isinstance(max_history, int):
            raise ConfigError(f"max_history must be an int, got {max_history!r}")
        return cls(rest or None, max_history=max_history)

    def _check_open(self) -> _Store:
        if self._closed:
            raise ConfigError(f"{self.url} backend is closed")
        return self._store

    async def get(self, key: str, *, linearizable: bool = True) -> KeyValue | None:
        store = self._check_open()
        with store.lock:
            store.expire_leases()
            return store.data.get(key)

    async def range(
        self,
        prefix: str,
        *,
        start_after: str | None = None,
        end: str | None = None,
        limit: int = 1000,
    ) -> Page:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        store = self._check_open()
        with store.lock:
            store.expire_leases()
            keys = store.keys_with_prefix(prefix, start_after, limit + 1, end)
            kvs = tuple(store.data[k] for k in keys[:limit])
            return Page(kvs, store.revision, len(keys) > limit)

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        store = self._check_open()
        with store.lock:
            store.expire_leases()
            succeeded = all(c.holds(store.data.get(c.key)) for c in compares)
            ops = success if succeeded else failure
            if any(isinstance(op, Put) and op.lease and op.lease not in store.leases for op in ops):
                lease = next(
                    op.lease
                    for op in ops
                    if isinstance(op, Put) and op.lease and op.lease not in store.leases
                )
                raise LeaseLost(f"lease {lease} not found (expired or revoked)")
            writes = any(isinstance(op, Put | Delete) for op in ops)
            if writes:
                store.revision += 1
            events: list[WatchEvent] = []
            gets: list[KeyValue | None] = []
            for op in ops:
                if isinstance(op, Get):
                    gets.append(store.data.get(op.key))
                elif isinstance(op, Put):
                    events.append(store.write(op))
                else:
                    keys = store.keys_with_prefix(op.key, None) if op.prefix else [op.key]
                    events.extend(store.remove(k) for k in keys if k in store.data)
            if writes and not events:
                store.revision -= 1  # deletes of absent keys change nothing
            store.publish(events)
            return TxnResult(succeeded, store.revision, tuple(gets))

    async def watch(self, prefix: str, from_revision: int) -> AsyncIterator[WatchEvent]:
        if self._closed:
            return  # a watch ends when its backend is closed
        store = self._store
        watcher = _Watcher(prefix, asyncio.get_running_loop())
        with store.lock:
            if from_revision < store.compacted or (from_revision <= 0):
                raise Compacted(
                    f"revision {from_revision} is compacted (oldest kept: {store.compacted})",
                    store.compacted,
                )
            start = bisect.bisect_left(store.history_revs, from_revision)
            backlog = [e for e in store.history[start:] if e.kv.key.startswith(prefix)]
            store.watchers.add(watcher)
            self._watchers.add(watcher)
        try:
            for event in backlog:
                yield event
            while True:
                batch = await watcher.queue.get()
                if batch is _CLOSED:
                    return
                for event in batch:
                    if event.revision >= from_revision:  # a watch from a future revision
                        yield event
        finally:
            with store.lock:
                store.watchers.discard(watcher)
            self._watchers.discard(watcher)

    async def lease_grant(self, ttl: float) -> int:
        if not ttl > 0:
            raise ValueError(f"lease ttl must be > 0 seconds, got {ttl!r}")
        store = self._check_open()
        with store.lock:
            lease_id = next(store.lease_ids)
            store.leases[lease_id] = _Lease(ttl)
        self._arm_expiry()
        return lease_id

    def _arm_expiry(self) -> None:
        """One loop timer per backend, set for the earliest lease deadline, so that keys
        of an expired lease disappear (with watch events) even when nobody calls."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        with self._store.lock:
            deadlines = [lease.deadline for lease in self._store.leases.values()]
        if deadlines and not self._closed:
            delay = max(0.0, min(deadlines) - _now()) + 0.001
            self._expiry = asyncio.get_running_loop().call_later(delay, self._on_expiry)

    def _on_expiry(self) -> None:
        self._expiry = None
        with self._store.lock:
            self._store.expire_leases()
        self._arm_expiry()

    async def lease_keepalive(self, lease_id: int) -> float:
        store = self._check_open()
        with store.lock:
            store.expire_leases()
            lease = store.leases.get(lease_id)
            if lease is None:
                raise LeaseLost(f"lease {lease_id} not found (expired or revoked)")
            lease.deadline = _now() + lease.ttl
        self._arm_expiry()
        return lease.ttl

    async def lease_revoke(self, lease_id: int) -> None:
        store = self._check_open()
        with store.lock:
            store.revoke(lease_id)

    async def compact(self, revision: int) -> None:
        store = self._check_open()
        with store.lock:
            revision = min(revision, store.revision)
            cut = bisect.bisect_left(store.history_revs, revision)
            del store.history[:cut], store.history_revs[:cut]
            store.compacted = max(store.compacted, revision)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._expiry is not None:
            self._expiry.cancel()
        for watcher in tuple(self._watchers):
            watcher.push(_CLOSED)
