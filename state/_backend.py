"""The StateBackend abstract base class and the operations built once on top of it.

A backend implements eight primitives (``get``, ``range``, ``txn``, ``watch``,
``lease_grant``, ``lease_keepalive``, ``lease_revoke``, ``compact``) plus ``aclose``. Everything
else (conditional put, create-if-absent, delete, full scans, kept-alive leases, locks,
leader election) is written once here, in terms of those, so every backend behaves
the same.

Errors: a backend raises ``Unavailable`` when it cannot reach its store (and the
operation did not happen, or it cannot tell: see ``ambiguous``), ``Compacted`` when a
watch starts before the oldest revision kept, ``LeaseLost`` for an unknown lease.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence

from kerna._errors import Conflict

from ._types import Compare, Delete, Get, KeyValue, Op, Page, Put, TxnResult, WatchEvent

__all__ = ["StateBackend"]


class StateBackend(abc.ABC):
    """A key-value store with revisions, transactions, watches and leases.

    Keys are ``str``; values are ``bytes``. Implementations register under a URL scheme
    in the ``kerna.state_backends`` entry point group and are created with
    ``kerna.state.connect(url)``.
    """

    url: str = ""

    @classmethod
    @abc.abstractmethod
    async def from_url(cls, url: str, **options: object) -> StateBackend:
        """Create and connect a backend for ``url``.

        Raises:
            ConfigError: the URL or an option is invalid.
            Unavailable: the store cannot be reached.
        """

    # -- primitives --------------------------------------------------------------------

    @abc.abstractmethod
    async def get(self, key: str, *, linearizable: bool = True) -> KeyValue | None:
        """The current value of ``key``, or None.

        ``linearizable=False`` allows a possibly stale local read where the backend has
        one (etcd's serializable read); other backends ignore it.
        """

    @abc.abstractmethod
    async def range(
        self,
        prefix: str,
        *,
        start_after: str | None = None,
        end: str | None = None,
        limit: int = 1000,
    ) -> Page:
        """Up to ``limit`` keys starting with ``prefix``, in key order, between
        ``start_after`` and ``end`` (both exclusive) when given.

        Args:
            prefix: only keys starting with it (``""``: every key).
            start_after: only keys after it: the last key of the previous page.
            end: only keys before it: a bounded page. A reader that knows where the
                keys it wants end bounds each page by them, so that the store touches
                only those keys (with an open range, etcd 3.4 counts every key left
                under the prefix for each page, which makes paging through a long
                prefix quadratic). An ``end`` at or before the start gives an empty
                page.
            limit: at most this many keys (>= 1).

        Returns:
            The keys, the store's revision, and ``more``: whether keys follow within
            the bounds (continue with ``start_after=page.kvs[-1].key``).

        Raises:
            ValueError: ``limit`` < 1.
            Unavailable: the store cannot be reached.
        """

    @abc.abstractmethod
    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        """Atomically: if every compare holds run ``success``, else ``failure``.

        A transaction that writes increments the revision once; every write in it
        carries that revision.
        """

    @abc.abstractmethod
    def watch(self, prefix: str, from_revision: int) -> AsyncIterator[WatchEvent]:
        """Changes to keys under ``prefix`` from ``from_revision`` on, in revision order.

        The iterator survives reconnects (it resumes after the last revision it
        yielded); it raises ``Compacted`` if ``from_revision`` (or the resume point) is
        older than the oldest revision kept. It ends when the backend is closed.
        """

    @abc.abstractmethod
    async def lease_grant(self, ttl: float) -> int:
        """Create a lease of ``ttl`` seconds; returns its id (> 0)."""

    @abc.abstractmethod
    async def lease_keepalive(self, lease_id: int) -> float:
        """Refresh a lease; returns its new remaining TTL in seconds.

        Raises:
            LeaseLost: the lease expired or was revoked.
        """

    @abc.abstractmethod
    async def lease_revoke(self, lease_id: int) -> None:
        """End a lease now, deleting every key attached to it; unknown ids are ignored."""

    @abc.abstractmethod
    async def compact(self, revision: int) -> None:
        """Forget the history before ``revision``: watches from earlier revisions then
        raise ``Compacted``. Current values are kept."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release connections and end open watches; idempotent."""

    async def __aenter__(self) -> StateBackend:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- built on top, identical for every backend -------------------------------------

    async def put(
        self, key: str, value: bytes, *, expected: int | None = None, lease: int = 0
    ) -> int:
        """Write ``value``; returns the write's revision.

        Args:
            expected: None writes unconditionally; 0 requires the key to be absent
                (create-if-absent); n requires the key's ``mod_revision`` to be n.
            lease: attach the key to this lease.

        Raises:
            Conflict: the expectation did not hold.
        """
        compares = () if expected is None else (Compare.mod_is(key, expected),)
        result = await self.txn(compares, (Put(key, value, lease),))
        if not result.succeeded:
            what = "exists" if expected == 0 else f"is not at revision {expected}"
            raise Conflict(f"{key!r} {what}")
        return result.revision

    async def create(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Create ``key`` if absent; returns the revision. Raises ``Conflict`` if present."""
        return await self.put(key, value, expected=0, lease=lease)

    async def delete(self, key: str, *, expected: int | None = None) -> bool:
        """Delete ``key``; True if it existed. ``expected`` as for ``put`` (not 0).

        Raises:
            Conflict: the key is not at the expected revision.
        """
        compares = () if expected is None else (Compare.mod_is(key, expected),)
        result = await self.txn(compares, (Get(key), Delete(key)))
        if not result.succeeded:
            raise Conflict(f"{key!r} is not at revision {expected}")
        return result.gets[0] is not None

    async def scan(self, prefix: str, *, page_size: int = 1000) -> AsyncIterator[KeyValue]:
        """Every key under ``prefix``, page by page, in key order."""
        start_after: str | None = None
        while True:
            page = await self.range(prefix, start_after=start_after, limit=page_size)
            for kv in page.kvs:
                yield kv
            if not page.more or not page.kvs:
                return
            start_after = page.kvs[-1].key
