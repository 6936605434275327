"""The etcd backend's resumable watch streams and its liveness probe.

``_WatchStream`` is the etcd side of one ``EtcdBackend.watch`` iterator; ``_probe_loop``
is the task, owned by the backend and started with its first watch, that drops a member
which stops answering (a wedged member keeps its watches open and silent). Both move
the backend to its next member through its ``_drop``; see ``kerna.state._etcd``'s
module docstring for why.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aetcd import rpc

from kerna._errors import Compacted, StateError

from ._etcd_conn import (
    _BACKOFF_MAX,
    _BACKOFF_MIN,
    _cancelled,
    _classify,
    _Conn,
    _grpc,
    _NotConnected,
)
from ._etcd_wire import _event, _prefix_end
from ._types import WatchEvent

if TYPE_CHECKING:
    from ._etcd import EtcdBackend


class _WatchStream:
    """The etcd side of one ``watch`` iterator: a stream that is re-created, on the
    current member and from the revision after the last one delivered, whenever its
    connection is lost. Events of one revision arrive in one response (etcd does not
    split a revision unless asked to), so resuming at a revision boundary loses and
    repeats nothing."""

    def __init__(self, backend: EtcdBackend, prefix: str, from_revision: int) -> None:
        self._backend = backend
        self._prefix = prefix
        self._key = prefix.encode() or b"\0"
        self._end = _prefix_end(self._key) if prefix else b"\0"
        self._last = from_revision - 1  # every event up to here was delivered
        self._conn: _Conn | None = None
        self._call: Any = None
        self._delay = _BACKOFF_MIN

    def cancel(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None

    async def next_batch(self) -> list[WatchEvent] | None:
        """The next events (those of one etcd response), or None once the backend is
        closed.

        Raises:
            Compacted: the revision to resume from was compacted.
            StateError: etcd cancelled the watch for another reason (permissions).
            ConfigError: etcd rejected the credentials.
        """
        while not self._backend.closed:
            if self._call is None:
                await self._open()
                continue
            try:
                response = await self._call.read()
            except asyncio.CancelledError:
                if _cancelled():
                    raise
                await self._lost("its connection was closed")
                continue
            except rpc.AioRpcError as exc:
                await self._lost(f"the stream failed: {_classify(exc, sent=False).reason}")
                continue
            if response is _grpc.aio.EOF:
                await self._lost("the stream ended")
                continue
            self._check(response)
            events = [_event(e) for e in response.events if e.kv.mod_revision > self._last]
            if events:
                self._last = events[-1].revision
                self._delay = _BACKOFF_MIN
                return events
        return None

    def _check(self, response: Any) -> None:
        if response.compact_revision:
            self.cancel()
            raise Compacted(
                f"etcd watch on {self._prefix!r} cannot resume at revision {self._last + 1}:"
                f" compacted (oldest kept: {response.compact_revision})",
                response.compact_revision,
            )
        if response.canceled:  # not for a lost leader or connection: those end the stream
            self.cancel()
            reason = response.cancel_reason or "no reason given"
            raise StateError(f"etcd cancelled the watch on {self._prefix!r}: {reason}")

    async def _open(self) -> None:
        """Create the stream on the current member (or, failing, drop that member and
        pause before the caller tries again)."""
        conn = self._backend.connect_now()
        timeout = self._backend.options.probe_timeout
        call: Any = None
        try:
            await conn.ready(timeout)
            call = conn.watch.Watch(metadata=conn.metadata)
            create = rpc.WatchCreateRequest(
                key=self._key, range_end=self._end, start_revision=self._last + 1
            )
            async with asyncio.timeout(timeout):
                await call.write(rpc.WatchRequest(create_request=create))
                response = await call.read()
        except asyncio.CancelledError:
            if call is not None:
                call.cancel()
            if _cancelled():
                raise
            reason = "its connection was closed"
        except TimeoutError:
            reason = "it did not answer the watch request in time"
        except _NotConnected as exc:
            reason = str(exc)
        except rpc.AioRpcError as exc:
            reason = f"it refused the watch: {_classify(exc, sent=False).reason}"
        else:
            if response is not _grpc.aio.EOF and response.created:
                self._conn, self._call = conn, call
                self._check(response)
                return
            reason = "it ended the watch stream"
        if call is not None:
            call.cancel()
        self._conn = conn
        await self._lost(reason)

    async def _lost(self, reason: str) -> None:
        """The stream is gone: drop its member (if still current) and pause a little."""
        conn, self._conn = self._conn, None
        self.cancel()
        if self._backend.closed:
            return
        if conn is not None:
            await self._backend.drop(conn, f"watch on {self._prefix!r} lost: {reason}")
        await self._backend.pause(self._delay)
        self._delay = min(self._delay * 2, _BACKOFF_MAX)


async def _probe_loop(backend: EtcdBackend) -> None:
    """Every ``probe_interval``, ask the current member for its status; one that
    does not answer within ``probe_timeout`` is dropped (see ``kerna.state._etcd``)."""
    timeout = backend.options.probe_timeout
    while True:
        await asyncio.sleep(backend.options.probe_interval)
        conn = backend.connection
        if conn is None:
            continue
        try:
            await conn.maintenance.Status(
                rpc.StatusRequest(), timeout=timeout, metadata=conn.probe_metadata
            )
        except asyncio.CancelledError:
            if _cancelled():
                raise
            continue  # closed under us by someone who found it broken
        except Exception as exc:
            reason = exc.details() if isinstance(exc, rpc.AioRpcError) else repr(exc)
            await backend.drop(conn, f"failed the liveness probe ({reason})")
