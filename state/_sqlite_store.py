"""The store behind ``sqlite://`` backends: one thread per database, its job queue and
its watchers.

``_Store`` is what every ``SqliteBackend`` of one file shares within the process: the
thread that runs ``_Db`` jobs in batches (group commit) and publishes their watch
events once committed. Backends submit jobs and await their futures from any loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from kerna._errors import ConfigError, StateError, Unavailable

from ._sqlite_db import MEMORY, _Db, _translate
from ._types import WatchEvent

log = logging.getLogger("kerna.state.sqlite")
T = TypeVar("T")

_MAX_BATCH = 256  # jobs committed together at most


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
    batch (``Unavailable``, or ``StoreFailed`` for a file turned read-only); nothing of
    it was published. Before a write batch begins, the database file is checked to be
    the one opened (``_Db.check_files``): a deleted or replaced file fails the batch
    with ``StoreFailed``.

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
                raise ConfigError(f"sqlite:///{self.path} backend is closed")
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
                log.exception("sqlite:///%s: batch failed", self.path)
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(Unavailable(f"sqlite:///{self.path}: {exc!r}"))
        self.db.close()
        self.closed.set_result(None)

    def _run_batch(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        db = self.db
        if any(job.writes for job in jobs) or db.lease_due():
            try:
                db.check_files()
            except StateError as exc:
                # The file is gone: refuse the writes (and expire nothing); what is
                # still open can be read.
                for job in jobs:
                    if job.writes:
                        job.future.set_exception(type(exc)(str(exc)))  # one per caller
                self._run_reads([job for job in jobs if not job.writes])
            else:
                self._run_writes(jobs)
            return
        self._run_reads(jobs)

    def _run_reads(self, jobs: list[_Job]) -> None:
        """Jobs that write nothing, without a transaction."""
        db = self.db
        for job in jobs:
            try:
                result = job.fn(db)
            except sqlite3.Error as exc:
                job.future.set_exception(_translate(exc, self.path))
            except Exception as exc:
                job.future.set_exception(exc)
            else:
                self._resolve(job, result)

    def _run_writes(self, jobs: list[_Job]) -> None:
        """Jobs that may write (or a due lease to expire): one transaction, a savepoint
        per job, one commit."""
        db = self.db
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
