"""``sqlite:///path/state.db``: durable embedded state for one process, no server.

The same semantics as ``memory://`` and etcd (one global revision, per-key
create/mod revisions and versions, transactions, watches from past revisions, leases,
compaction), kept in a SQLite file through the standard library's ``sqlite3``.

URLs: ``sqlite:///abs/path/state.db`` (three slashes, an absolute path, taken literally)
or ``sqlite://:memory:`` (a private, non-durable database, for tests). Relative paths
are refused rather than resolved against whatever the working directory is. Options
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
loop: callers queue jobs and await them. Lease deadlines are wall-clock times stored in
the database, so leases survive a restart, and those that passed while the process was
down expire when the database is opened (deleting their keys, with events in the watch
history); a wall-clock jump forwards expires leases early.

Single process. Watches are fed by the writers of this process: a write by another
process would not reach them, so the database is opened in SQLite's exclusive locking
mode and a second process (or a foreign connection) gets a ``ConfigError``. Within one
process, every ``connect`` to the same file shares one store (as ``memory://name``
does), so kernels in one process may share a file and see each other's writes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Final, TypeVar

from kerna._errors import (
    Compacted,
    ConfigError,
    DecodeError,
    LeaseLost,
    StateError,
    Unavailable,
)

from ._backend import StateBackend
from ._types import Compare, Delete, Get, KeyValue, Op, Page, Put, TxnResult, WatchEvent

__all__ = ["SqliteBackend"]

log = logging.getLogger("kerna.state.sqlite")
T = TypeVar("T")

SCHEMA_VERSION: Final = 1
APPLICATION_ID: Final = 0x6B65726E  # "kern" in the file header: marks a kerna database
MEMORY: Final = ":memory:"
_MAX_BATCH = 256  # jobs committed together at most
_WATCH_PAGE = 1000  # history rows per read when a watch replays its backlog
_LOCK_TIMEOUT = 1.0  # seconds to wait for the file lock when opening
_CLOSED: Any = object()
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

_SCHEMA = (
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    # Keys are UTF-8 blobs ('surrogatepass'), so that SQLite's byte order is Python's
    # str order and any str (NUL, lone surrogates) round-trips.
    "CREATE TABLE kv (key BLOB PRIMARY KEY, value BLOB NOT NULL,"
    " create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL, version INTEGER NOT NULL,"
    " lease INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE INDEX kv_lease ON kv (lease) WHERE lease != 0",
    "CREATE TABLE history (revision INTEGER NOT NULL, seq INTEGER NOT NULL,"
    " key BLOB NOT NULL, deleted INTEGER NOT NULL, value BLOB NOT NULL,"
    " create_rev INTEGER NOT NULL, version INTEGER NOT NULL, lease INTEGER NOT NULL,"
    " PRIMARY KEY (revision, seq)) WITHOUT ROWID",
    "CREATE TABLE leases (id INTEGER PRIMARY KEY AUTOINCREMENT, ttl REAL NOT NULL,"
    " deadline REAL NOT NULL)",
    "CREATE INDEX leases_deadline ON leases (deadline)",
    f"INSERT INTO meta VALUES ('schema_version', {SCHEMA_VERSION}), ('revision', 1),"
    " ('compacted', 0)",
    f"PRAGMA application_id = {APPLICATION_ID}",
)


def _enc(key: str) -> bytes:
    return key.encode("utf-8", "surrogatepass")


def _dec(key: bytes) -> str:
    return key.decode("utf-8", "surrogatepass")


def _prefix_where(prefix: str) -> tuple[str, tuple[bytes, ...]]:
    """A ``WHERE`` fragment selecting keys that start with ``prefix``, as a key range."""
    low = _enc(prefix)
    stripped = low.rstrip(b"\xff")  # never in UTF-8, but keep the bound right anyway
    if not stripped:
        return "key >= ?", (low,)
    return "key >= ? AND key < ?", (low, stripped[:-1] + bytes([stripped[-1] + 1]))


def _lease_lost(lease_id: int) -> LeaseLost:
    return LeaseLost(f"lease {lease_id} not found (expired or revoked)")


def _translate(exc: sqlite3.Error, path: str) -> StateError:
    """A sqlite3 error met while serving an operation, as a kerna error."""
    name = getattr(exc, "sqlite_errorname", "")
    err: StateError
    if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
        err = DecodeError(f"{path}: the database is corrupt ({exc})")
    else:
        err = Unavailable(f"{path}: {exc}")
    err.__cause__ = exc
    return err


class _Db:
    """The database side of a store. Thread-confined: only the store's thread calls it.

    ``revision``, ``compacted``, ``history_count`` and ``next_deadline`` mirror the
    database (the first two are written to ``meta`` just before each commit).
    ``events`` collects the watch events of the job being run; the store publishes
    them once the commit returned.
    """

    def __init__(self, path: str, max_history: int, synchronous: str) -> None:
        self.path = path
        self.max_history = max_history
        self.synchronous = synchronous
        self.conn: sqlite3.Connection | None = None
        self.revision = 1
        self.compacted = 0
        self.history_count = 0
        self.next_deadline = math.inf
        self.saved = (1, 0)  # (revision, compacted) as stored in meta
        self.seq = 0
        self.events: list[WatchEvent] = []

    @property
    def db(self) -> sqlite3.Connection:
        assert self.conn is not None
        return self.conn

    # -- open and close ----------------------------------------------------------------

    def open(self) -> None:
        """Connect, lock, check or create the schema, expire overdue leases.

        Raises:
            ConfigError: the file cannot be opened, or another process has it open.
            DecodeError: the file is corrupt or not a kerna state database.
        """
        try:
            self.conn = sqlite3.connect(self.path, timeout=_LOCK_TIMEOUT, isolation_level=None)
            self._open()
        except sqlite3.Error as exc:
            self.close()
            name = getattr(exc, "sqlite_errorname", "")
            if name in ("SQLITE_BUSY", "SQLITE_LOCKED"):
                raise ConfigError(
                    f"{self.path} is in use by another process (sqlite:// state is single-process)"
                ) from exc
            if name in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
                raise DecodeError(
                    f"{self.path} is not a SQLite database or is corrupt: {exc}"
                ) from exc
            if name in ("SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_READONLY", "SQLITE_AUTH"):
                raise ConfigError(f"cannot open {self.path}: {exc}") from exc
            raise Unavailable(f"cannot open {self.path}: {exc}") from exc
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        db = self.db
        if self.path != MEMORY:
            # Before the first access: hold the file lock for the connection's life and
            # keep the WAL index in process memory (no -shm file). Refuses other processes.
            db.execute("PRAGMA locking_mode = EXCLUSIVE")
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        fresh = app_id == 0 and not tables
        if not fresh and (app_id != APPLICATION_ID or "meta" not in tables):
            raise DecodeError(f"{self.path} is a SQLite database but not a kerna state database")
        if self.path != MEMORY:
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise ConfigError(f"{self.path}: cannot use WAL mode (got {mode!r})")
        db.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
        if self.synchronous == "full":
            db.execute("PRAGMA fullfsync = ON")  # macOS: flush the drive's cache too
        db.execute("BEGIN IMMEDIATE")  # takes the exclusive lock now
        try:
            if fresh:
                for statement in _SCHEMA:
                    db.execute(statement)
            meta = dict(db.execute("SELECT name, value FROM meta"))
            version = meta.get("schema_version")
            if version != SCHEMA_VERSION:
                raise DecodeError(
                    f"{self.path} has kerna schema version {version!r}; this kerna reads"
                    f" version {SCHEMA_VERSION}"
                )
            self.load()
            self.expire_due()
            self.commit()
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def load(self) -> None:
        """Read the mirrored counters from the database."""
        meta = dict(self.db.execute("SELECT name, value FROM meta"))
        self.revision, self.compacted = meta["revision"], meta["compacted"]
        self.saved = (self.revision, self.compacted)
        self.history_count = self.db.execute("SELECT count(*) FROM history").fetchone()[0]
        self.refresh_deadline()

    def close(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            try:
                conn.close()
            except sqlite3.Error:
                log.warning("closing %s failed", self.path, exc_info=True)

    # -- transactions ------------------------------------------------------------------

    def begin(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        if (self.revision, self.compacted) != self.saved:
            self.db.executemany(
                "UPDATE meta SET value = ? WHERE name = ?",
                ((self.revision, "revision"), (self.compacted, "compacted")),
            )
        self.db.execute("COMMIT")
        self.saved = (self.revision, self.compacted)

    def abort(self) -> None:
        """After a failed batch: roll back and re-read the counters."""
        if self.conn is None:
            return
        try:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            self.load()
        except sqlite3.Error:
            log.exception("%s: rollback after a failed commit failed", self.path)

    def run_job(
        self, fn: Callable[[_Db], T]
    ) -> tuple[T | None, Exception | None, list[WatchEvent]]:
        """Run ``fn`` inside the open transaction, in a savepoint.

        Overdue leases expire first (kept even if ``fn`` fails). If ``fn`` raises, its
        changes are rolled back and the exception is returned. A sqlite error that ended
        the whole transaction propagates: the batch is lost.
        """
        self.events = []
        self.expire_due()
        kept = len(self.events)
        mirrored = (self.revision, self.compacted, self.history_count, self.next_deadline)
        self.db.execute("SAVEPOINT job")
        try:
            result = fn(self)
        except Exception as exc:
            if not self.db.in_transaction:
                raise
            self.db.execute("ROLLBACK TO job")
            self.db.execute("RELEASE job")
            self.revision, self.compacted, self.history_count, self.next_deadline = mirrored
            if isinstance(exc, sqlite3.Error):
                exc = _translate(exc, self.path)
            return None, exc, self.events[:kept]
        self.db.execute("RELEASE job")
        return result, None, self.events

    # -- reads -------------------------------------------------------------------------

    def fetch(self, key: str) -> KeyValue | None:
        row = self.db.execute(
            "SELECT value, create_rev, mod_rev, version, lease FROM kv WHERE key = ?",
            (_enc(key),),
        ).fetchone()
        return None if row is None else KeyValue(key, *row)

    def range(self, prefix: str, start_after: str | None, limit: int) -> Page:
        where, params = _prefix_where(prefix)
        if start_after is not None:
            where += " AND key > ?"
            params += (_enc(start_after),)
        rows = self.db.execute(
            "SELECT key, value, create_rev, mod_rev, version, lease FROM kv"
            f" WHERE {where} ORDER BY key LIMIT ?",
            (*params, limit + 1),
        ).fetchall()
        kvs = tuple(KeyValue(_dec(r[0]), *r[1:]) for r in rows[:limit])
        return Page(kvs, self.revision, len(rows) > limit)

    def watch_start(self, from_revision: int) -> int:
        """Check that history from ``from_revision`` is kept; the current revision."""
        if from_revision <= 0 or from_revision < self.compacted:
            raise Compacted(
                f"revision {from_revision} is compacted (oldest kept: {self.compacted})",
                self.compacted,
            )
        return self.revision

    def history(
        self, prefix: str, after: tuple[int, int], upto: int
    ) -> tuple[list[WatchEvent], tuple[int, int] | None]:
        """History events under ``prefix`` after position ``after`` (revision, seq) up
        to revision ``upto``; and where to continue (None: done)."""
        if after[0] < self.compacted:
            raise Compacted(
                f"revision {after[0]} was compacted while the watch replayed it"
                f" (oldest kept: {self.compacted})",
                self.compacted,
            )
        where, params = _prefix_where(prefix)
        rows = self.db.execute(
            "SELECT revision, seq, key, deleted, value, create_rev, version, lease"
            f" FROM history WHERE (revision, seq) > (?, ?) AND revision <= ? AND {where}"
            " ORDER BY revision, seq LIMIT ?",
            (*after, upto, *params, _WATCH_PAGE),
        ).fetchall()
        events = [
            WatchEvent("delete", KeyValue(_dec(key), b"", 0, rev, 0, 0))
            if deleted
            else WatchEvent("put", KeyValue(_dec(key), value, create, rev, version, lease))
            for rev, _, key, deleted, value, create, version, lease in rows
        ]
        more = (rows[-1][0], rows[-1][1]) if len(rows) == _WATCH_PAGE else None
        return events, more

    # -- writes ------------------------------------------------------------------------

    def bump(self) -> None:
        self.revision += 1
        self.seq = 0

    def emit(self, event: WatchEvent) -> None:
        kv = event.kv
        self.db.execute(
            "INSERT INTO history VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                self.revision,
                self.seq,
                _enc(kv.key),
                event.kind == "delete",
                kv.value,
                kv.create_revision,
                kv.version,
                kv.lease,
            ),
        )
        self.seq += 1
        self.history_count += 1
        self.events.append(event)

    def trim(self) -> None:
        """Automatic compaction: past ``max_history`` events, keep about half (whole
        revisions: a watch from the compaction point sees all of its events)."""
        if self.history_count <= self.max_history:
            return
        keep = max(1, self.max_history // 2)
        (cut,) = self.db.execute(
            "SELECT revision FROM history ORDER BY revision, seq LIMIT 1 OFFSET ?",
            (self.history_count - keep,),
        ).fetchone()
        self.compact(cut)

    def compact(self, revision: int) -> None:
        revision = min(revision, self.revision)
        if revision > self.compacted:
            cursor = self.db.execute("DELETE FROM history WHERE revision < ?", (revision,))
            self.history_count -= cursor.rowcount
            self.compacted = revision

    def put(self, op: Put) -> None:
        old = self.fetch(op.key)
        if old is None:
            kv = KeyValue(op.key, op.value, self.revision, self.revision, 1, op.lease)
        else:
            kv = KeyValue(
                op.key, op.value, old.create_revision, self.revision, old.version + 1, op.lease
            )
        self.db.execute(
            "INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?, ?, ?)",
            (_enc(op.key), op.value, kv.create_revision, kv.mod_revision, kv.version, op.lease),
        )
        self.emit(WatchEvent("put", kv))

    def remove(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.db.execute("DELETE FROM kv WHERE key = ?", (_enc(key),))
            self.emit(WatchEvent("delete", KeyValue(key, b"", 0, self.revision, 0, 0)))

    def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]
    ) -> TxnResult:
        # Compare.holds is the shared definition: every backend compares the same way.
        succeeded = all(c.holds(self.fetch(c.key)) for c in compares)
        ops = success if succeeded else failure
        for op in ops:
            if isinstance(op, Put) and op.lease and self.lease_ttl(op.lease) is None:
                raise _lease_lost(op.lease)
        writes = any(isinstance(op, Put | Delete) for op in ops)
        if writes:
            self.bump()
        before = len(self.events)
        gets: list[KeyValue | None] = []
        for op in ops:
            if isinstance(op, Get):
                gets.append(self.fetch(op.key))
            elif isinstance(op, Put):
                self.put(op)
            elif op.prefix:
                where, params = _prefix_where(op.key)
                rows = self.db.execute(f"SELECT key FROM kv WHERE {where} ORDER BY key", params)
                self.remove([_dec(r[0]) for r in rows.fetchall()])
            elif self.fetch(op.key) is not None:
                self.remove([op.key])
        if writes and len(self.events) == before:
            self.revision -= 1  # deletes of absent keys change nothing
        self.trim()
        return TxnResult(succeeded, self.revision, tuple(gets))

    # -- leases ------------------------------------------------------------------------

    def lease_ttl(self, lease_id: int) -> float | None:
        if not _INT64_MIN <= lease_id <= _INT64_MAX:
            return None  # cannot be stored, so it was never granted
        row = self.db.execute("SELECT ttl FROM leases WHERE id = ?", (lease_id,)).fetchone()
        return None if row is None else float(row[0])

    def refresh_deadline(self) -> None:
        (deadline,) = self.db.execute("SELECT min(deadline) FROM leases").fetchone()
        self.next_deadline = math.inf if deadline is None else deadline

    def lease_due(self) -> bool:
        return self.next_deadline <= time.time()

    def expire_due(self) -> None:
        """Revoke every lease whose deadline passed, oldest id first, each at its own
        revision (as ``memory://`` does)."""
        if not self.lease_due():
            return
        rows = self.db.execute(
            "SELECT id FROM leases WHERE deadline <= ? ORDER BY id", (time.time(),)
        ).fetchall()
        for (lease_id,) in rows:
            self.revoke(lease_id)
        self.refresh_deadline()

    def grant(self, ttl: float) -> int:
        deadline = time.time() + ttl
        cursor = self.db.execute(
            "INSERT INTO leases (ttl, deadline) VALUES (?, ?)", (ttl, deadline)
        )
        self.next_deadline = min(self.next_deadline, deadline)
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def keepalive(self, lease_id: int) -> float:
        ttl = self.lease_ttl(lease_id)
        if ttl is None:
            raise _lease_lost(lease_id)
        self.db.execute(
            "UPDATE leases SET deadline = ? WHERE id = ?", (time.time() + ttl, lease_id)
        )
        self.refresh_deadline()
        return ttl

    def revoke(self, lease_id: int) -> None:
        if not _INT64_MIN <= lease_id <= _INT64_MAX:
            return
        if not self.db.execute("DELETE FROM leases WHERE id = ?", (lease_id,)).rowcount:
            return
        rows = self.db.execute("SELECT key FROM kv WHERE lease = ? ORDER BY key", (lease_id,))
        keys = [_dec(r[0]) for r in rows.fetchall()]
        if keys:
            self.bump()
            self.remove(keys)
            self.trim()

    def revoke_now(self, lease_id: int) -> None:
        self.revoke(lease_id)
        self.refresh_deadline()


class _Watcher:
    __slots__ = ("loop", "min_revision", "prefix", "queue")

    def __init__(self, prefix: str, min_revision: int, loop: asyncio.AbstractEventLoop) -> None:
        self.prefix = prefix
        self.min_revision = min_revision  # set from the store's thread before first use
        self.loop = loop
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def push(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the watcher's loop is closed: nobody is listening
            pass


class _Job:
    __slots__ = ("fn", "future", "stop", "watcher", "writes")

    def __init__(
        self, fn: Callable[[_Db], Any], writes: bool, watcher: _Watcher | None, stop: bool = False
    ) -> None:
        self.fn = fn
        self.writes = writes
        self.stop = stop  # the last job: close the database and end the thread
        self.watcher = watcher  # add it to the store's watchers once this job committed
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()


_stores: dict[str, _Store] = {}
_stores_lock = threading.Lock()


class _Store:
    """One open database: its thread, its job queue and its watchers.

    The thread takes every job queued (up to ``_MAX_BATCH``) and runs them in order.
    Reads alone run without a transaction; as soon as one job writes (or a lease is
    due) they all run in one ``BEGIN IMMEDIATE ... COMMIT``, each in a savepoint, and
    only after ``COMMIT`` returned are their events published and their callers
    resumed (in job order, events first, so a caller that awaited a write finds its
    event already queued for its watchers). A failed commit fails every job of the
    batch with ``Unavailable``; nothing of it was published.

    A watcher is added to ``watchers`` after the job that registered it committed, and
    only takes events above the revision that job saw: history up to it is read from
    the database, everything later arrives live, nothing twice.
    """

    def __init__(self, path: str, max_history: int, synchronous: str) -> None:
        self.path = path
        self.options = (max_history, synchronous)
        self.db = _Db(path, max_history, synchronous)
        self.refs = 0
        self.lock = threading.Lock()
        self.closing = False
        self.jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self.watchers: set[_Watcher] = set()
        self.opened: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.closed: concurrent.futures.Future[None] = concurrent.futures.Future()
        # Never cancelled by an awaiting caller's cancellation: others share them.
        self.opened.set_running_or_notify_cancel()
        self.closed.set_running_or_notify_cancel()
        name = "kerna-sqlite:" + os.path.basename(path)
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    @classmethod
    async def acquire(cls, path: str, max_history: int, synchronous: str) -> _Store:
        """The open store of ``path`` (shared within the process), opening it if needed."""
        if path == MEMORY:
            store = cls(path, max_history, synchronous)
            store.refs = 1
            store.thread.start()
        else:
            with _stores_lock:
                store = _stores.get(path) or cls(path, max_history, synchronous)
                if store.refs and store.options != (max_history, synchronous):
                    raise ConfigError(
                        f"{path} is already open in this process with max_history,"
                        f" synchronous = {store.options}; got {(max_history, synchronous)}"
                    )
                if not store.refs:
                    _stores[path] = store
                    store.thread.start()
                store.refs += 1
        try:
            await asyncio.wrap_future(store.opened)
        except BaseException:
            store.release_nowait()
            raise
        return store

    def release_nowait(self) -> concurrent.futures.Future[None] | None:
        """Drop one reference; the last one stops the thread (returns its future)."""
        with _stores_lock:
            self.refs -= 1
            if self.refs > 0:
                return None
            if _stores.get(self.path) is self:
                del _stores[self.path]
        with self.lock:
            if not self.closing:
                self.closing = True
                self.jobs.put(_Job(_Db.close, False, None, stop=True))
        return self.closed

    def submit(
        self, fn: Callable[[_Db], T], *, writes: bool, watcher: _Watcher | None = None
    ) -> concurrent.futures.Future[T]:
        job = _Job(fn, writes, watcher)
        with self.lock:
            if self.closing:
                raise ConfigError(f"sqlite://{self.path} backend is closed")
            self.jobs.put(job)
        return job.future

    def remove_watcher(self, watcher: _Watcher) -> None:
        with self.lock:
            self.watchers.discard(watcher)

    def _publish(self, events: list[WatchEvent]) -> None:
        with self.lock:
            watchers = tuple(self.watchers)
        for watcher in watchers:
            matching = [
                e
                for e in events
                if e.revision >= watcher.min_revision and e.kv.key.startswith(watcher.prefix)
            ]
            if matching:
                watcher.push(matching)

    # -- the thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self.db.open()
        except BaseException as exc:
            with self.lock:
                self.closing = True
            self.opened.set_exception(exc)
            self.closed.set_result(None)
            return
        self.opened.set_result(None)
        stop = False
        while not stop:
            batch = [self.jobs.get()]
            while len(batch) < _MAX_BATCH:
                try:
                    batch.append(self.jobs.get_nowait())
                except queue.Empty:
                    break
            stop = any(job.stop for job in batch)
            live = [j for j in batch if not j.stop and j.future.set_running_or_notify_cancel()]
            try:
                self._run_batch(live)
            except Exception as exc:  # a bug here must not strand the callers
                log.exception("sqlite://%s: batch failed", self.path)
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(Unavailable(f"sqlite://{self.path}: {exc!r}"))
        self.db.close()
        self.closed.set_result(None)

    def _run_batch(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        db = self.db
        if not any(job.writes for job in jobs) and not db.lease_due():
            for job in jobs:
                try:
                    result = job.fn(db)
                except sqlite3.Error as exc:
                    job.future.set_exception(_translate(exc, self.path))
                except Exception as exc:
                    job.future.set_exception(exc)
                else:
                    self._resolve(job, result)
            return
        outcomes = []
        try:
            db.begin()
            for job in jobs:
                outcomes.append(db.run_job(job.fn))
            db.commit()
        except sqlite3.Error as exc:
            db.abort()
            for job in jobs:
                job.future.set_exception(_translate(exc, self.path))
            return
        for job, (result, error, events) in zip(jobs, outcomes, strict=True):
            if events:
                self._publish(events)
            if error is not None:
                job.future.set_exception(error)
            else:
                self._resolve(job, result)

    def _resolve(self, job: _Job, result: Any) -> None:
        if job.watcher is not None:
            with self.lock:
                self.watchers.add(job.watcher)
        job.future.set_result(result)


def _parse_url(url: str) -> str:
    """The database path of ``url`` (absolute, symlinks resolved), or ``:memory:``."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "sqlite":
        raise ConfigError(f"not a sqlite URL: {url!r}")
    if "?" in rest:
        raise ConfigError(f"sqlite URL takes options as keyword arguments, not a query: {url!r}")
    if rest == MEMORY:
        return MEMORY
    if not rest.startswith("/"):
        raise ConfigError(
            "sqlite URL needs an absolute path, with three slashes:"
            f" 'sqlite:///abs/path/state.db' (or 'sqlite://:memory:'), got {url!r}"
        )
    if os.path.isdir(rest):
        raise ConfigError(f"sqlite path {rest} is a directory, not a database file")
    parent = os.path.dirname(rest)
    if not os.path.isdir(parent):
        raise ConfigError(f"sqlite path {rest}: directory {parent} does not exist")
    return os.path.realpath(rest)


class SqliteBackend(StateBackend):
    """Durable single-process backend on a SQLite file (see the module docstring).

    Created with ``await kerna.state.connect("sqlite:///path/state.db", **options)``
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
            url: ``sqlite:///abs/path/state.db`` or ``sqlite://:memory:``.
            max_history: watch history kept, in events (default 100,000).
            synchronous: ``"full"`` (default: fsync at every commit) or ``"normal"``.

        Raises:
            ConfigError: bad URL or option, missing directory, file in use by another
                process or not openable.
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
        backend._arm_expiry()  # leases restored from the file expire even when idle
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
        self, prefix: str, *, start_after: str | None = None, limit: int = 1000
    ) -> Page:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        return await self._call(lambda db: db.range(prefix, start_after, limit), writes=False)

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

    def _arm_expiry(self) -> None:
        """One loop timer per backend, set for the earliest lease deadline, so that keys
        of an expired lease disappear (with watch events) even when nobody calls."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        deadline = self._store.db.next_deadline  # a float written by the store's thread
        if self._closed or math.isinf(deadline):
            return
        delay = max(0.0, deadline - time.time()) + 0.001
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
                loop.call_soon_threadsafe(self._arm_expiry)
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
