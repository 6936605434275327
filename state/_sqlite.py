"""``sqlite:///state.db``: durable embedded state for one process, no server.

The same semantics as ``memory://`` and etcd (one global revision, per-key
create/mod revisions and versions, transactions, watches from past revisions, leases,
compaction), kept in a SQLite file through the standard library's ``sqlite3``.

URLs follow SQLAlchemy's convention: ``sqlite:///state.db`` (three slashes) is a path
relative to the working directory when ``connect`` is called, ``sqlite:////var/lib/state.db``
(four) an absolute one, so ``f"sqlite:///{path}"`` is right for either; ``sqlite://`` and
``sqlite:///:memory:`` are a private, non-durable database (for tests). A host
(``sqlite://h/x.db``), an empty path (``sqlite:///``) or a query is a ``ConfigError``
naming the URL. Options
(keyword arguments of ``connect``): ``max_history`` (watch history kept, in events,
default 100,000; older revisions are compacted automatically, as on ``memory://``) and
``synchronous`` (``"full"``, the default, or ``"normal"``).

Durability. The database runs in WAL mode with ``synchronous=FULL``: a caller's
``await`` returns only after ``COMMIT`` returned, and with FULL the commit has been
fsync'ed, so an acknowledged write survives ``kill -9`` of the process and also a power
loss or kernel crash. ``synchronous="normal"`` skips that fsync: acknowledged writes
still survive the process being killed (the WAL is in the OS page cache), but the last
ones may be lost with the machine. Concurrent writers share commits: transactions
queued while one commits are evaluated in order and committed together (each in its
own savepoint, so one failing does not undo the others), which amortizes the fsync.

Threads. Every ``sqlite3`` call runs on one thread per database, never on an event
loop: callers queue jobs and await them.

Leases do not survive a restart: their holder was a process that is gone. The file
lock admits one process at a time, so every lease found when the database is opened
belongs to a process that exited or was killed; opening revokes them all (deleting
their keys, with events in the watch history), so that a restarted process takes over
its predecessor's activation claims, locks and elections at once instead of waiting
out their TTL. While the process runs, lease deadlines are ``time.monotonic()`` values:
a wall-clock jump does not expire them.

Single process. Watches are fed by the writers of this process: a write by another
process would not reach them, so the database is opened in SQLite's exclusive locking
mode and a second process (or a foreign connection) gets a ``ConfigError``. Within one
process, every ``connect`` to the same file shares one store (as ``memory://name``
does), so kernels in one process may share a file and see each other's writes.

Errors. The database's directory must be writable (SQLite creates ``state.db-wal``
next to the file): a read-only directory, file or file system is a ``ConfigError`` at
open, and a write that fails because the file turned read-only is a ``StoreFailed``,
both naming the file and the reason; ``StoreFailed`` is permanent (not ``Unavailable``:
retrying does not help until an operator acts). Before each write batch the database
file and its WAL are checked (a ``stat`` each) to still be the files opened: a
database deleted or replaced while open fails every later write with ``StoreFailed``
rather than acknowledging writes that are gone with the file. A corrupt file is a
``DecodeError``; other I/O errors (a full disk) are ``Unavailable``. SQLite's errors are
told apart by their primary result code (``SQLITE_IOERR_LOCK`` is an ``SQLITE_IOERR``).

This module holds ``SqliteBackend`` (the event-loop side); the store's thread, its job
queue and watchers are in ``_sqlite_store``, the schema and SQL in ``_sqlite_db``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

from kerna._errors import ConfigError

from ._backend import StateBackend
from ._sqlite_db import MEMORY, _Db
from ._sqlite_store import _Store, _Watcher
from ._types import Compare, KeyValue, Op, Page, TxnResult, WatchEvent

__all__ = ["SqliteBackend"]

log = logging.getLogger("kerna.state.sqlite")
T = TypeVar("T")

_CLOSED: Any = object()
_EXPIRY_RETRY = 1.0  # seconds before retrying a lease expiry that could not be written


_FORMS = (
    "sqlite:///relative/path.db (from the working directory), sqlite:////absolute/path.db,"
    " sqlite:// or sqlite:///:memory: (a private in-memory database)"
)


def _parse_url(url: str) -> str:
    """The database path of ``url`` (absolute, symlinks resolved), or ``:memory:``.

    SQLAlchemy's forms: ``sqlite:///`` + a path, relative to the working directory
    (``sqlite:///data/state.db``) or absolute with its own leading slash
    (``sqlite:////var/lib/state.db``), so ``f"sqlite:///{path}"`` is right for either;
    ``sqlite://`` and ``sqlite:///:memory:`` are in memory (``sqlite://:memory:``, the
    form of earlier kerna versions, too). A host is an error, as in SQLAlchemy.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "sqlite":
        raise ConfigError(f"not a sqlite URL: {url!r}")
    if "?" in rest:
        raise ConfigError(f"sqlite URL takes options as keyword arguments, not a query: {url!r}")
    if rest in ("", "/" + MEMORY, MEMORY):
        return MEMORY
    host, slash, path = rest.partition("/")
    if host or not slash:
        raise ConfigError(f"invalid sqlite URL {url!r}: a sqlite URL has no host; use {_FORMS}")
    if not path:
        raise ConfigError(f"sqlite URL {url!r} has no database path; use {_FORMS}")
    if os.path.isdir(path):
        raise ConfigError(f"sqlite path {path} ({url!r}) is a directory, not a database file")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ConfigError(f"sqlite path {path} ({url!r}): directory {parent} does not exist")
    return os.path.realpath(path)


class SqliteBackend(StateBackend):
    """Durable single-process backend on a SQLite file (see the module docstring).

    Created with ``await kerna.state.connect("sqlite:///state.db", **options)``
    (or ``SqliteBackend.from_url``), closed with ``aclose``.
    """

    def __init__(self, store: _Store, url: str) -> None:
        self._store = store
        self._closed = False
        self._watchers: set[_Watcher] = set()
        self._expiry: asyncio.TimerHandle | None = None
        self.url = url

    @classmethod
    async def from_url(cls, url: str, **options: object) -> SqliteBackend:
        """Open (creating if needed) the database at ``url``.

        Args:
            url: ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, or
                ``sqlite://`` (in memory); see the module docstring.
            max_history: watch history kept, in events (default 100,000).
            synchronous: ``"full"`` (default: fsync at every commit) or ``"normal"``.

        Raises:
            ConfigError: bad URL or option, missing or read-only directory, read-only
                file, file in use by another process or not openable.
            DecodeError: the file is corrupt or not a kerna state database.
        """
        path = _parse_url(url)
        max_history = options.pop("max_history", 100_000)
        synchronous = options.pop("synchronous", "full")
        if options:
            raise ConfigError(f"unknown sqlite:// options: {', '.join(sorted(options))}")
        if not isinstance(max_history, int) or isinstance(max_history, bool) or max_history < 1:
            raise ConfigError(f"max_history must be an int >= 1, got {max_history!r}")
        if synchronous not in ("full", "normal"):
            raise ConfigError(f"synchronous must be 'full' or 'normal', got {synchronous!r}")
        store = await _Store.acquire(path, max_history, str(synchronous))
        backend = cls(store, url)
        backend._arm_expiry()  # leases of another connection to the store expire when idle
        return backend

    def _check_open(self) -> _Store:
        if self._closed:
            raise ConfigError(f"{self.url} backend is closed")
        return self._store

    async def _call(self, fn: Callable[[_Db], T], *, writes: bool) -> T:
        return await asyncio.wrap_future(self._check_open().submit(fn, writes=writes))

    async def get(self, key: str, *, linearizable: bool = True) -> KeyValue | None:
        return await self._call(lambda db: db.fetch(key), writes=False)

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
        return await self._call(lambda db: db.range(prefix, start_after, end, limit), writes=False)

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        compares, success, failure = tuple(compares), tuple(success), tuple(failure)
        return await self._call(lambda db: db.txn(compares, success, failure), writes=True)

    async def watch(self, prefix: str, from_revision: int) -> AsyncIterator[WatchEvent]:
        store = self._check_open()
        watcher = _Watcher(prefix, from_revision, asyncio.get_running_loop())

        def start(db: _Db) -> int:
            upto = db.watch_start(from_revision)
            watcher.min_revision = max(from_revision, upto + 1)
            return upto

        upto = await asyncio.wrap_future(store.submit(start, writes=False, watcher=watcher))
        self._watchers.add(watcher)
        try:
            if self._closed:  # closed while the watch started: aclose did not see it
                return
            after: tuple[int, int] | None = (from_revision, -1)
            while after is not None and after[0] <= upto and not self._closed:
                events, after = await self._call(
                    functools.partial(_Db.history, prefix=prefix, after=after, upto=upto),
                    writes=False,
                )
                for event in events:
                    yield event
            while True:
                batch = await watcher.queue.get()
                if batch is _CLOSED:
                    return
                for event in batch:
                    yield event
        finally:
            store.remove_watcher(watcher)
            self._watchers.discard(watcher)

    async def lease_grant(self, ttl: float) -> int:
        if not ttl > 0:
            raise ValueError(f"lease ttl must be > 0 seconds, got {ttl!r}")
        lease_id = await self._call(lambda db: db.grant(ttl), writes=True)
        self._arm_expiry()
        return lease_id

    async def lease_keepalive(self, lease_id: int) -> float:
        ttl = await self._call(lambda db: db.keepalive(lease_id), writes=True)
        self._arm_expiry()
        return ttl

    async def lease_revoke(self, lease_id: int) -> None:
        await self._call(lambda db: db.revoke_now(lease_id), writes=True)

    async def compact(self, revision: int) -> None:
        await self._call(lambda db: db.compact(revision), writes=True)

    def _arm_expiry(self, *, after_expiry: bool = False) -> None:
        """One loop timer per backend, set for the earliest lease deadline, so that keys
        of an expired lease disappear (with watch events) even when nobody calls.

        ``after_expiry``: the timer just ran; a deadline still past means the expiry
        could not be written (the file is read-only or gone): try again in a second,
        not in a busy loop.
        """
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        deadline = self._store.db.next_deadline  # a float written by the store's thread
        if self._closed or math.isinf(deadline):
            return
        delay = max(0.0, deadline - time.monotonic()) + 0.001
        if after_expiry and delay <= 0.001:
            delay = _EXPIRY_RETRY
        self._expiry = asyncio.get_running_loop().call_later(delay, self._on_expiry)

    def _on_expiry(self) -> None:
        self._expiry = None
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        try:
            # A job that reads nothing: the store expires due leases before any job.
            future = self._store.submit(lambda db: None, writes=False)
        except ConfigError:
            return

        def done(f: concurrent.futures.Future[None]) -> None:
            if not f.cancelled() and f.exception() is not None:
                log.warning("%s: lease expiry failed: %s", self.url, f.exception())
            try:
                loop.call_soon_threadsafe(functools.partial(self._arm_expiry, after_expiry=True))
            except RuntimeError:  # the loop is closed
                pass

        future.add_done_callback(done)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        for watcher in tuple(self._watchers):
            self._store.remove_watcher(watcher)
            watcher.push(_CLOSED)
        closed = self._store.release_nowait()
        if closed is not None:
            await asyncio.wrap_future(closed)
