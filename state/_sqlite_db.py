"""The database side of a ``sqlite://`` store: schema, SQL and counters, on its thread.

``_Db`` runs every ``sqlite3`` call of one store (opening, schema checks, reads,
writes, leases, compaction) and is confined to the store's thread
(``kerna.state._sqlite_store``); it knows nothing of event loops. See
``kerna.state._sqlite`` for the durability and threading design.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Final, TypeVar

from kerna._errors import (
    Compacted,
    ConfigError,
    DecodeError,
    LeaseLost,
    StateError,
    StoreFailed,
    Unavailable,
)

from ._types import Compare, Delete, Get, KeyValue, Op, Page, Put, TxnResult, WatchEvent

log = logging.getLogger("kerna.state.sqlite")
T = TypeVar("T")

SCHEMA_VERSION: Final = 1
APPLICATION_ID: Final = 0x6B65726E  # "kern" in the file header: marks a kerna database
MEMORY: Final = ":memory:"
_WATCH_PAGE = 1000  # history rows per read when a watch replays its backlog
_LOCK_TIMEOUT = 1.0  # seconds to wait for the file lock when opening
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


def _prefix_where(
    prefix: str, start_after: str | None = None, end: str | None = None
) -> tuple[str, tuple[bytes, ...]]:
    """A ``WHERE`` fragment selecting keys that start with ``prefix`` (and come after
    ``start_after``, before ``end``) as one key range: a single lower bound and at most
    one upper bound, so that SQLite seeks the index to the lower bound and stops at the
    upper one instead of scanning from the prefix (paged reads stay linear)."""
    low = _enc(prefix)
    lower = "key >= ?"
    if start_after is not None and _enc(start_after) >= low:
        low, lower = _enc(start_after), "key > ?"
    stripped = _enc(prefix).rstrip(b"\xff")  # never in UTF-8, but keep the bound right anyway
    high = stripped[:-1] + bytes([stripped[-1] + 1]) if stripped else None
    if end is not None and (high is None or _enc(end) < high):
        high = _enc(end)
    if high is None:
        return lower, (low,)
    return f"{lower} AND key < ?", (low, high)


def _lease_lost(lease_id: int) -> LeaseLost:
    return LeaseLost(f"lease {lease_id} not found (expired or revoked)")


def _primary(exc: sqlite3.Error) -> int:
    """SQLite's primary result code of ``exc`` (the low byte of the extended code: an
    ``SQLITE_IOERR_LOCK`` is an ``SQLITE_IOERR``), 0 if it carries none."""
    code: int = getattr(exc, "sqlite_errorcode", 0)
    return code & 0xFF


def _unwritable(path: str) -> str | None:
    """Why this process cannot write ``path`` or create its ``-wal`` next to it (None:
    as far as the file system says, it can)."""
    directory = os.path.dirname(path)
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return f"{directory} is on a read-only file system"
    except OSError:
        pass
    if not os.access(directory, os.W_OK | os.X_OK):
        return (
            f"directory {directory} is not writable (SQLite creates"
            f" {os.path.basename(path)}-wal there)"
        )
    if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
        return "the file is not writable (its permissions or an immutable flag)"
    return None


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


_PERMANENT = (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM, sqlite3.SQLITE_AUTH)


def _translate(exc: sqlite3.Error, path: str) -> StateError:
    """A sqlite3 error met while serving an operation, as a kerna error: corruption is
    a ``DecodeError``; a file or directory that turned read-only is a ``StoreFailed``
    (an operator must act); the rest (I/O errors, a full disk) is ``Unavailable``."""
    code = _primary(exc)
    err: StateError
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        err = DecodeError(f"{path}: the database is corrupt ({exc})")
    elif code in _PERMANENT or code in (sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN):
        reason = _unwritable(path)
        if reason is None and code not in _PERMANENT:
            err = Unavailable(f"{path}: {exc}")
        else:
            reason = reason or "the database is read-only"
            err = StoreFailed(f"{path}: writes fail: {reason} ({exc})")
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
        # (path, st_dev, st_ino) of the database file and its WAL as opened: a write
        # batch first checks that the paths still lead to them (see check_files).
        self.files: tuple[tuple[str, int, int], ...] = ()

    @property
    def db(self) -> sqlite3.Connection:
        assert self.conn is not None
        return self.conn

    # -- open and close ----------------------------------------------------------------

    def open(self) -> None:
        """Connect, lock, check or create the schema, end the leases found.

        Raises:
            ConfigError: the file cannot be opened (the message says why: a read-only
                file, directory or file system...), or another process has it open.
            DecodeError: the file is corrupt or not a kerna state database.
        """
        if self.path != MEMORY and (reason := _unwritable(self.path)) is not None:
            raise ConfigError(f"cannot open {self.path} for writing: {reason}")
        try:
            self.conn = sqlite3.connect(self.path, timeout=_LOCK_TIMEOUT, isolation_level=None)
            self._open()
        except sqlite3.Error as exc:
            self.close()
            code = _primary(exc)
            if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise ConfigError(
                    f"{self.path} is in use by another process (sqlite:// state is single-process)"
                ) from exc
            if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
                raise DecodeError(
                    f"{self.path} is not a SQLite database or is corrupt: {exc}"
                ) from exc
            reason = None if self.path == MEMORY else _unwritable(self.path)
            if reason is not None or code in (sqlite3.SQLITE_CANTOPEN, *_PERMANENT):
                raise ConfigError(f"cannot open {self.path}: {reason or exc}") from exc
            raise Unavailable(f"cannot open {self.path}: {exc}") from exc
        except BaseException:
            self.close()
            raise
        if self.path != MEMORY:
            self.files = tuple(
                (p, st.st_dev, st.st_ino)
                for p in (self.path, f"{self.path}-wal")
                if (st := _stat(p)) is not None
            )

    def check_files(self) -> None:
        """Before a write batch: the database file and its WAL are still the ones
        opened. One ``stat`` each, so that a file deleted or replaced under the open
        connection does not keep acknowledging writes that are gone with it.

        Raises:
            StoreFailed: a path no longer leads to the file opened.
        """
        for path, dev, ino in self.files:
            try:
                st = _stat(path)
            except OSError:  # cannot tell (a permission change?): do not block writes
                continue
            if st is None:
                what = "was deleted"
            elif (st.st_dev, st.st_ino) != (dev, ino):
                what = "was replaced by another file"
            else:
                continue
            raise StoreFailed(
                f"{path} {what} while the database was open: writes are refused (they"
                f" would be lost with it); restart on the restored file {self.path}"
            )

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
            self.end_leases()
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

    def range(self, prefix: str, start_after: str | None, end: str | None, limit: int) -> Page:
        where, params = _prefix_where(prefix, start_after, end)
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
        return self.next_deadline <= time.monotonic()

    def expire_due(self) -> None:
        """Revoke every lease whose deadline passed, oldest id first, each at its own
        revision (as ``memory://`` does)."""
        if not self.lease_due():
            return
        rows = self.db.execute(
            "SELECT id FROM leases WHERE deadline <= ? ORDER BY id", (time.monotonic(),)
        ).fetchall()
        for (lease_id,) in rows:
            self.revoke(lease_id)
        self.refresh_deadline()

    def end_leases(self) -> None:
        """At open: revoke every lease in the file, oldest id first, each at its own
        revision (as expiry would), deleting its keys with events in the history.

        The file lock admits one process, so the holder of any lease found here was a
        process that is gone (it exited or was killed): nobody can keep it alive, and
        waiting out its TTL would only keep its claims, locks and elections from their
        next holder. (Deadlines are ``time.monotonic()`` values, which mean nothing to
        another process either.)
        """
        rows = self.db.execute("SELECT id FROM leases ORDER BY id").fetchall()
        for (lease_id,) in rows:
            self.revoke(lease_id)
        self.refresh_deadline()
        if rows:
            log.info("%s: ended %d leases of a previous process", self.path, len(rows))

    def grant(self, ttl: float) -> int:
        deadline = time.monotonic() + ttl
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
            "UPDATE leases SET deadline = ? WHERE id = ?", (time.monotonic() + ttl, lease_id)
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
