"""Replica: an in-memory mirror of a key prefix, kept fresh by the backend's watch.

Reads are local dict lookups. The replica loads the prefix once, then follows the
watch from the revision after that read; it applies each change only if it is newer
than what it holds, so replaying an overlap is harmless. If the backend compacted the
history the watch needs (after a long disconnect), the replica reloads the whole prefix
and continues: it converges, it does not lose updates. ``await wait_for(revision)``
gives read-your-writes for a write made under this prefix.

Use it as an async context manager; its watch task is owned by the replica and ends
with it::

    async with Replica(backend, "kerna/state/Counter/", decode=Count.decode) as replica:
        rev = await backend.put("kerna/state/Counter/c1", data)
        await replica.wait_for(rev)
        replica.get("kerna/state/Counter/c1")
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from kerna._errors import Compacted, Unavailable

from ._backend import StateBackend
from ._tasks import cancel_and_wait
from ._types import KeyValue, WatchEvent

__all__ = ["Replica"]

T = TypeVar("T")
log = logging.getLogger("kerna.state.replica")


def _identity(data: bytes) -> Any:
    return data


class Replica(Generic[T]):
    """A local, watch-fed copy of every key under ``prefix``.

    Args:
        backend: the state backend.
        prefix: the key prefix to mirror.
        decode: turns stored bytes into values (default: keep the bytes). A value that
            fails to decode is logged with its key and left out; the replica goes on.
        on_change: called as ``on_change(key, value_or_None)`` for every applied change.
        key_of: maps a stored key to the key that ``get`` and ``items`` use (default:
            the stored key itself).
    """

    def __init__(
        self,
        backend: StateBackend,
        prefix: str,
        *,
        decode: Callable[[bytes], T] = _identity,
        on_change: Callable[[str, T | None], None] | None = None,
        key_of: Callable[[str], str] | None = None,
    ) -> None:
        self.backend = backend
        self.prefix = prefix
        self._key_of = key_of or (lambda key: key)
        self._decode = decode
        self._on_change = on_change
        self._kvs: dict[str, KeyValue] = {}
        self._values: dict[str, T] = {}
        self.revision = 0
        self.resyncs = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Replica[T]:
        await self._load()
        self._task = asyncio.get_running_loop().create_task(
            self._follow(), name=f"kerna-replica:{self.prefix}"
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop following the watch (waits for the watch task to end)."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        for _, waiter in self._waiters:
            if not waiter.done():
                waiter.cancel()
        self._waiters.clear()

    # -- reads ---------------------------------------------------------------------------

    def get(self, key: str) -> T | None:
        return self._values.get(key)

    def kv(self, stored_key: str) -> KeyValue | None:
        """The raw entry (with its revisions) at a stored key."""
        return self._kvs.get(stored_key)

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __len__(self) -> int:
        return len(self._values)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(list(self._values.items()))

    async def wait_for(self, revision: int, timeout: float | None = None) -> None:
        """Return once the replica has applied ``revision`` (a write under its prefix).

        Raises:
            TimeoutError: not within ``timeout`` seconds.
        """
        if self.revision >= revision:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((revision, waiter))
        try:
            async with asyncio.timeout(timeout):
                await waiter
        finally:
            if not waiter.done():
                waiter.cancel()

    # -- machinery -------------------------------------------------------------------------

    async def _load(self) -> None:
        """(Re)read the whole prefix; returns with ``revision`` at the read."""
        page = await self.backend.range(self.prefix, limit=1)
        start_revision = page.revision
        seen: set[str] = set()
        async for kv in self.backend.scan(self.prefix):
            seen.add(kv.key)
            self._apply_put(kv)
        for key in [k for k in self._kvs if k not in seen]:
            if self._kvs[key].mod_revision <= start_revision:
                self._apply_delete(key)
        self._advance(start_revision)

    async def _follow(self) -> None:
        backoff = 0.05
        while True:
            try:
                async for event in self.backend.watch(self.prefix, self.revision + 1):
                    self._apply(event)
                    backoff = 0.05
                return  # the backend was closed
            except Compacted:
                log.warning("replica of %r fell behind compaction; reloading", self.prefix)
                self.resyncs += 1
                await self._reload_with_retry()
            except Unavailable as exc:
                log.warning("replica of %r: %s; retrying in %.2fs", self.prefix, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _reload_with_retry(self) -> None:
        delay = 0.05
        while True:
            try:
                await self._load()
                return
            except Unavailable:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _apply(self, event: WatchEvent) -> None:
        if event.kind == "put":
            self._apply_put(event.kv)
        else:
            current = self._kvs.get(event.kv.key)
            if current is not None and current.mod_revision < event.revision:
                self._apply_delete(event.kv.key)
        self._advance(event.revision)

    def _apply_put(self, kv: KeyValue) -> None:
        current = self._kvs.get(kv.key)
        if current is not None and current.mod_revision >= kv.mod_revision:
            return
        key = self._key_of(kv.key)
        try:
            value = self._decode(kv.value)
        except Exception as exc:
            log.error(
                "replica: %r at revision %d does not decode: %s", kv.key, kv.mod_revision, exc
            )
            self._kvs.pop(kv.key, None)
            self._values.pop(key, None)
            return
        self._kvs[kv.key] = kv
        self._values[key] = value
        if self._on_change is not None:
            self._on_change(key, value)

    def _apply_delete(self, stored_key: str) -> None:
        key = self._key_of(stored_key)
        self._kvs.pop(stored_key, None)
        self._values.pop(key, None)
        if self._on_change is not None:
            self._on_change(key, None)

    def _advance(self, revision: int) -> None:
        if revision <= self.revision:
            return
        self.revision = revision
        if self._waiters:
            ready = [w for r, w in self._waiters if r <= revision]
            self._waiters = [(r, w) for r, w in self._waiters if r > revision]
            for waiter in ready:
                if not waiter.done():
                    waiter.set_result(None)
