"""sqlite:// writes against raw ``sqlite3`` with the same durability settings.

Both sides use a fresh database file per run in the same directory (same filesystem),
WAL, ``synchronous=FULL`` (an fsync per commit), exclusive locking mode, one transaction
per write. The floor is a plain single-connection loop, no thread, no event loop, on a
schema like kerna's (``kv`` and ``history`` tables ``WITHOUT ROWID``, the ``kv`` lease
index, a ``meta`` row holding the revision). One floor write is::

    BEGIN IMMEDIATE
    SELECT mod_rev FROM kv WHERE key = ?        -- the compare (a 2nd SELECT when fenced)
    INSERT OR REPLACE INTO kv ...               -- the new value at revision + 1
    INSERT INTO history ...                     -- the watch history row
    UPDATE meta SET value = ? WHERE name = 'revision'
    COMMIT

kerna: ``backend.put(key, value, expected=rev)`` (one compare), and an agent's ``save``
(claim and state compares), sequentially and from 32 writers at once. kerna's store
runs SQL on its own thread and commits every queued write together (group commit), so
its 32-writer figure is compared with the floor's single-connection loop, which is all
one connection can do.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sqlite3
import time
from pathlib import Path

import msgspec

from kerna import Kernel
from kerna.state import connect

from ._common import percentile, run_async
from ._state_models import PAD, Doc, Write, Writer

__all__ = [
    "SQL_SCHEMA",
    "kerna_put_latency",
    "kerna_put_throughput",
    "kerna_save_latency",
    "kerna_save_throughput",
    "raw_latency",
]

WARMUP = 10
_runs = itertools.count()

SQL_SCHEMA = (
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE kv (key BLOB PRIMARY KEY, value BLOB NOT NULL, create_rev INTEGER NOT NULL,"
    " mod_rev INTEGER NOT NULL, version INTEGER NOT NULL, lease INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE INDEX kv_lease ON kv (lease) WHERE lease != 0",
    "CREATE TABLE history (revision INTEGER NOT NULL, seq INTEGER NOT NULL, key BLOB NOT NULL,"
    " deleted INTEGER NOT NULL, value BLOB NOT NULL, create_rev INTEGER NOT NULL,"
    " version INTEGER NOT NULL, lease INTEGER NOT NULL, PRIMARY KEY (revision, seq))"
    " WITHOUT ROWID",
    "INSERT INTO meta VALUES ('revision', 1)",
)


def _path(directory: Path, what: str) -> Path:
    return directory / f"{what}-{next(_runs)}.db"


def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.unlink(f"{path}{suffix}")
        except FileNotFoundError:
            pass


def _result(lat: list[float]) -> dict[str, float]:
    return {"p50": percentile(lat, 50) * 1e6, "p99": percentile(lat, 99) * 1e6}


# -- the floor -------------------------------------------------------------------------


class _RawDb:
    """One sqlite3 connection, kerna's pragmas, kerna-like tables."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        db = self.db
        db.execute("PRAGMA locking_mode = EXCLUSIVE")
        if db.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
            raise RuntimeError(f"{path}: no WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA fullfsync = ON")
        db.execute("BEGIN IMMEDIATE")
        for statement in SQL_SCHEMA:
            db.execute(statement)
        db.execute("COMMIT")
        self.revision = 1
        self.encode = msgspec.msgpack.Encoder().encode
        self.claim = b"raw/act/w"
        self.write(self.claim, b"claim", expected=0, fenced=False)
        self.token = self.revision

    def write(self, key: bytes, value: bytes, *, expected: int, fenced: bool) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        if fenced:
            row = db.execute("SELECT create_rev FROM kv WHERE key = ?", (self.claim,)).fetchone()
            if row is None or row[0] != self.token:
                raise RuntimeError("floor claim lost")
        row = db.execute("SELECT mod_rev, create_rev, version FROM kv WHERE key = ?", (key,))
        old = row.fetchone()
        if (0 if old is None else old[0]) != expected:
            raise RuntimeError("floor compare failed")
        rev = self.revision + 1
        create, version = (rev, 1) if old is None else (old[1], old[2] + 1)
        db.execute(
            "INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?, ?, 0)",
            (key, value, create, rev, version),
        )
        db.execute(
            "INSERT INTO history VALUES (?, 0, ?, 0, ?, ?, ?, 0)",
            (rev, key, value, create, version),
        )
        db.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (rev,))
        db.execute("COMMIT")
        self.revision = rev

    def close(self) -> None:
        self.db.close()


def raw_latency(directory: Path, n: int, *, fenced: bool) -> dict[str, float]:
    """``n`` sequential writes on one connection: p50/p99 (µs) and writes/s."""
    path = _path(directory, "raw")
    raw = _RawDb(path)
    try:
        key = b"raw/state/w"
        rev = 0
        for i in range(WARMUP):
            raw.write(key, raw.encode(Doc(i, PAD)), expected=rev, fenced=fenced)
            rev = raw.revision
        clock = time.perf_counter
        lat: list[float] = []
        start = clock()
        for i in range(n):
            t0 = clock()
            raw.write(key, raw.encode(Doc(i, PAD)), expected=rev, fenced=fenced)
            rev = raw.revision
            lat.append(clock() - t0)
        rate = n / (clock() - start)
    finally:
        raw.close()
        _remove(path)
    return {**_result(lat), "rate": rate}


# -- kerna -------------------------------------------------------------------------------


def kerna_put_latency(directory: Path, n: int) -> dict[str, float]:
    """``n`` sequential ``backend.put(key, value, expected=rev)`` (µs)."""
    path = _path(directory, "put")

    async def main() -> dict[str, float]:
        encode = msgspec.msgpack.Encoder().encode
        backend = await connect(f"sqlite:///{path}")
        try:
            key, rev = "kerna/state/w", 0
            for i in range(WARMUP):
                rev = await backend.put(key, encode(Doc(i, PAD)), expected=rev)
            clock = time.perf_counter
            lat: list[float] = []
            for i in range(n):
                t0 = clock()
                rev = await backend.put(key, encode(Doc(i, PAD)), expected=rev)
                lat.append(clock() - t0)
        finally:
            await backend.aclose()
        return _result(lat)

    try:
        return run_async(main, "asyncio")
    finally:
        _remove(path)


def kerna_put_throughput(directory: Path, writers: int, per_writer: int) -> float:
    """``writers`` coroutines, each ``per_writer`` puts on its own key; writes/s."""
    path = _path(directory, "put-tp")

    async def main() -> float:
        encode = msgspec.msgpack.Encoder().encode
        backend = await connect(f"sqlite:///{path}")

        async def writer(i: int) -> None:
            key, rev = f"kerna/state/w{i}", 0
            for j in range(per_writer):
                rev = await backend.put(key, encode(Doc(j, PAD)), expected=rev)

        try:
            await backend.put("kerna/warm", b"x")
            t0 = time.perf_counter()
            await asyncio.gather(*(writer(i) for i in range(writers)))
            elapsed = time.perf_counter() - t0
        finally:
            await backend.aclose()
        return writers * per_writer / elapsed

    try:
        return run_async(main, "asyncio")
    finally:
        _remove(path)


def kerna_save_latency(directory: Path, n: int) -> dict[str, float]:
    """``n`` sequential asks to one agent that saves: the ``save`` call and the ask (µs)."""
    path = _path(directory, "save")

    async def main() -> dict[str, float]:
        async with Kernel(state=f"sqlite:///{path}") as kernel:
            kernel.register(Writer)
            ref = kernel.ref(Writer, "w")
            for _ in range(WARMUP):
                await ref.ask(Write())
            Writer.save_times.clear()
            clock = time.perf_counter
            asks: list[float] = []
            for _ in range(n):
                t0 = clock()
                await ref.ask(Write())
                asks.append(clock() - t0)
            saves = list(Writer.save_times)
            Writer.save_times.clear()
            Writer.issued.clear()
        save = _result(saves)
        return {"save_p50": save["p50"], "save_p99": save["p99"], **_result(asks)}

    try:
        return run_async(main, "asyncio")
    finally:
        _remove(path)


def kerna_save_throughput(directory: Path, writers: int, per_writer: int) -> float:
    """``writers`` agents, each asked ``per_writer`` times by its own caller; writes/s."""
    path = _path(directory, "save-tp")

    async def main() -> float:
        async with Kernel(state=f"sqlite:///{path}") as kernel:
            kernel.register(Writer)
            refs = [kernel.ref(Writer, f"w{i}") for i in range(writers)]
            await asyncio.gather(*(ref.ask(Write()) for ref in refs))

            async def caller(i: int) -> None:
                for _ in range(per_writer):
                    await refs[i].ask(Write())

            t0 = time.perf_counter()
            await asyncio.gather(*(caller(i) for i in range(writers)))
            elapsed = time.perf_counter() - t0
            Writer.save_times.clear()
            Writer.issued.clear()
        return writers * per_writer / elapsed

    try:
        return run_async(main, "asyncio")
    finally:
        _remove(path)
