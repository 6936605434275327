"""``etcd://h1:2379,h2:2379``: the etcd v3 backend (extra ``etcd``: aetcd).

kerna speaks etcd's gRPC API through aetcd's bindings (``aetcd.rpc``: the messages and
stubs). It does not use ``aetcd.Client``, whose shape does not fit a fail-closed store:
it has no TLS, no range limits, no lease compares, hides a transaction's revision and
multiplexes every watch on one stream that cannot be torn down alone.

What this module adds on top, and why:

* **Endpoints.** A gRPC channel talks to one member. The backend keeps the endpoint
  list and one current connection; a connection failure closes it and the next
  request or watch connects to the next member, round robin.
* **Ambiguity.** A transaction whose request may have reached etcd but whose answer
  was lost (a timeout, a dropped connection, a leader failover) may or may not have
  been applied. It is never retried: it raises ``OutcomeUnknown`` (an ``Unavailable``
  with ``ambiguous = True``) so that the caller re-reads. A failure known to happen
  before etcd applied anything (no connection, "no leader", "too many requests") is
  retried on the next member within ``timeout``, and so is every idempotent call
  (reads, lease keepalive and revoke, compaction; an orphaned lease grant expires).
  One attempt waits at most ``probe_timeout``: a follower that forwarded a write to a
  leader that just died never answers it, and the caller should learn that soon.
* **Watches.** A watch stream dies with its member and does not resume by itself: the
  iterator re-creates it, on the current member, from the last revision it yielded
  + 1, so nothing is lost or repeated; it raises ``Compacted`` when that revision is
  gone. Streams ask for a member with a leader (etcd then cancels them when the member
  loses its leader).
* **Liveness probe.** A SIGSTOPped (or wedged) member keeps its TCP connections open
  and its watches silent, and gRPC keepalive does not notice soon enough. From the
  first watch on, a task owned by the backend calls ``Status`` on the current member
  every ``probe_interval``; when no answer comes within ``probe_timeout`` the
  connection is closed, which ends its calls, and the watches move to the next member.
* **Leases.** etcd counts lease TTLs in whole seconds: a TTL is rounded up. Keeping a
  lease alive is the caller's job (aetcd has no background keepalive).

This module holds ``EtcdBackend`` (failover, retries, the primitives); its parts live
in ``_etcd_conn`` (channels, options, classifying gRPC errors), ``_etcd_wire``
(conversions to and from etcd's messages) and ``_etcd_watch`` (watch streams and the
liveness probe).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

from aetcd import rpc

from kerna._errors import (
    Compacted,
    ConfigError,
    KernaError,
    LeaseLost,
    OutcomeUnknown,
    Unavailable,
)

from ._backend import StateBackend
from ._etcd_conn import (
    _BACKOFF_MAX,
    _BACKOFF_MIN,
    _cancelled,
    _classify,
    _Conn,
    _Fault,
    _grpc,
    _NotConnected,
    _Options,
    _parse_endpoints,
    _parse_options,
)
from ._etcd_watch import _probe_loop, _WatchStream
from ._etcd_wire import _compare, _kv, _prefix_end, _request_op
from ._types import Compare, Delete, KeyValue, Op, Page, Put, TxnResult, WatchEvent

__all__ = ["EtcdBackend"]

log = logging.getLogger("kerna.state.etcd")

_T = TypeVar("_T")


class EtcdBackend(StateBackend):
    """State on an etcd v3 cluster (see the module docstring).

    Create it with ``await kerna.state.connect("etcd://h1:2379,h2:2379", **options)``
    or ``await EtcdBackend.from_url(...)``. Options (all optional):

    * ``timeout``: seconds a request may take in all, retries on other members
      included (5).
    * ``probe_interval``: seconds between liveness probes of the current member (1).
    * ``probe_timeout``: seconds a member may take to answer a probe, to accept a
      connection or to answer one attempt of a request before it counts as wedged:
      a read then moves on to the next member, a transaction raises
      ``OutcomeUnknown`` (2).
    * ``ca_cert``, ``cert_key``, ``cert_cert``: PEM file paths for TLS: the CA to
      verify members with, and a client key and certificate (both or neither).
    * ``username``, ``password``: etcd authentication (both or neither).

    Raises (from every operation):
        Unavailable: no member answered within ``timeout``; nothing was applied.
        OutcomeUnknown: a transaction's answer was lost; it may have been applied.
        ValueTooLarge: etcd refused a transaction over its request limit
            (``--max-request-bytes``, 1.5 MiB by default); nothing was applied.
    """

    def __init__(self, endpoints: Sequence[str], **options: object) -> None:
        """A backend for ``endpoints`` (``"host:port"``; the port defaults to 2379),
        not connected yet: ``from_url`` is the usual way in.

        Raises:
            ConfigError: an endpoint or an option is invalid.
        """
        if isinstance(endpoints, str):
            endpoints = endpoints.split(",")
        self._endpoints = _parse_endpoints("etcd://" + ",".join(endpoints))
        self._options = _parse_options(options)
        self.url = "etcd://" + ",".join(self._endpoints)
        self._conn: _Conn | None = None
        self._next = 0  # index of the endpoint the next connection goes to
        self._closed = False
        self._closing = asyncio.Event()
        self._probe: asyncio.Task[None] | None = None

    @classmethod
    async def from_url(cls, url: str, **options: object) -> EtcdBackend:
        """Connect to the cluster at ``url``.

        Raises:
            ConfigError: the URL or an option is invalid (the message names it), or
                etcd rejected the credentials.
            Unavailable: no member with a leader answered within ``timeout``.
        """
        backend = cls(_parse_endpoints(url), **options)
        connected = False
        try:
            await backend._request("connect", backend._status, idempotent=True)
            connected = True
        finally:
            if not connected:
                await backend.aclose()
        return backend

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The members' ``host:port``, in the order they are tried."""
        return self._endpoints

    @property
    def endpoint(self) -> str | None:
        """The member currently connected to (None between connections)."""
        return None if self._conn is None else self._conn.endpoint

    # -- connections (also used by the watch streams, ``kerna.state._etcd_watch``) -----

    @property
    def closed(self) -> bool:
        """True once ``aclose`` was called."""
        return self._closed

    @property
    def options(self) -> _Options:
        """The connection options parsed from the URL and arguments."""
        return self._options

    @property
    def connection(self) -> _Conn | None:
        """The connection in use now (None between connections)."""
        return self._conn

    def connect_now(self) -> _Conn:
        """The connection in use, opened to the next member if there is none.

        Raises:
            ConfigError: the backend is closed.
        """
        return self._current()

    async def drop(self, conn: _Conn, reason: str) -> None:
        """Give up ``conn`` (see ``_drop``)."""
        await self._drop(conn, reason)

    async def pause(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less if the backend closes meanwhile."""
        await self._pause(delay)

    def _current(self) -> _Conn:
        if self._closed:
            raise ConfigError(f"{self.url} backend is closed")
        if self._conn is None:
            endpoint = self._endpoints[self._next % len(self._endpoints)]
            self._next += 1
            self._conn = _Conn(endpoint, self._options)
        return self._conn

    async def _drop(self, conn: _Conn, reason: str) -> None:
        """Close ``conn`` (ending its calls and watch streams); the next connection goes
        to the next member."""
        if conn is self._conn:
            self._conn = None
            if not self._closed:
                # A member that was never reached is a debug matter: an outage would
                # otherwise log every retry.
                level = logging.WARNING if conn.connected else logging.DEBUG
                log.log(level, "etcd member %s: %s; next member", conn.endpoint, reason)
        await conn.close()

    async def _pause(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less if the backend closes meanwhile."""
        try:
            async with asyncio.timeout(delay):
                await self._closing.wait()
        except TimeoutError:
            pass

    def _unavailable(self, what: str, reason: str) -> Unavailable:
        members = ", ".join(self._endpoints)
        return Unavailable(
            f"etcd at {members} did not complete {what} within {self._options.timeout:g} s"
            f" (last error: {reason})"
        )

    async def _request(
        self,
        what: str,
        send: Callable[[_Conn, float], Awaitable[_T]],
        *,
        idempotent: bool,
        size: Callable[[], int] | None = None,
    ) -> _T:
        """Run ``send(conn, attempt_timeout)`` on the current member, moving on to the
        next member on failure, until it answers or ``timeout`` has passed.

        An attempt that may have been applied is repeated only if ``idempotent``;
        otherwise it raises ``OutcomeUnknown``. Each attempt gets at most
        ``probe_timeout``: a member that takes longer is taken for wedged. That bounds
        how long a write can hang on a follower that forwarded it to a leader that just
        died (etcd drops such a proposal and never answers it): without the bound, a
        write would wait for the whole ``timeout`` before the caller could re-read and
        try again. ``size`` gives the request's size in bytes, for the
        ``ValueTooLarge`` of a request etcd refuses as too large.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._options.timeout
        delay = _BACKOFF_MIN
        failures = 0
        while True:
            conn = self._current()
            remaining = deadline - loop.time()
            sent = False
            try:
                await conn.ready(min(remaining, self._options.probe_timeout))
                sent = True
                remaining = max(deadline - loop.time(), 0.001)
                return await send(conn, min(remaining, self._options.probe_timeout))
            except asyncio.CancelledError:
                if _cancelled():
                    raise
                fault = _Fault(f"connection to {conn.endpoint} closed", sent, broken=True)
            except _NotConnected as exc:
                fault = _Fault(str(exc), maybe_applied=False, broken=True)
            except rpc.AioRpcError as exc:
                fault = _classify(exc, sent, size)
                if "invalid auth token" in fault.reason:
                    conn.forget_token()
            except (KernaError, ValueError, TypeError):
                raise  # a definite answer, raised by ``send`` on purpose
            except Exception as exc:
                if not conn.closed:  # not a call on a channel closed under it: a bug
                    raise
                fault = _Fault(f"connection to {conn.endpoint} closed ({exc})", sent, broken=True)
            if fault.broken:
                await self._drop(conn, fault.reason)
            if fault.maybe_applied and not idempotent:
                raise OutcomeUnknown(
                    f"etcd {what} via {conn.endpoint}: {fault.reason}; it may or may not have"
                    " been applied: read again before retrying"
                )
            failures += 1
            if failures % len(self._endpoints) == 0 or not fault.broken:
                await self._pause(min(delay, deadline - loop.time()))
                delay = min(delay * 2, _BACKOFF_MAX)
            if deadline - loop.time() <= 0.001 or self._closed:
                raise self._unavailable(what, fault.reason)

    async def _status(self, conn: _Conn, timeout: float) -> None:
        await conn.maintenance.Status(rpc.StatusRequest(), timeout=timeout, metadata=conn.metadata)

    def _start_probe(self) -> None:
        if self._probe is None and not self._closed:
            self._probe = asyncio.get_running_loop().create_task(
                _probe_loop(self), name=f"kerna.state.etcd probe {self.url}"
            )

    # -- primitives --------------------------------------------------------------------

    async def get(self, key: str, *, linearizable: bool = True) -> KeyValue | None:
        request = rpc.RangeRequest(key=key.encode(), serializable=not linearizable)

        async def send(conn: _Conn, timeout: float) -> KeyValue | None:
            response = await conn.kv.Range(request, timeout=timeout, metadata=conn.metadata)
            return _kv(response.kvs[0]) if response.kvs else None

        return await self._request("get", send, idempotent=True)

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
        # keys in [low, high), high None: no end (etcd's range_end b"\0"); keys are never
        # empty, so b"\0" is the least key there is
        low = prefix.encode() or b"\0"
        if start_after is not None and start_after >= prefix:
            low = start_after.encode() + b"\0"
        high: bytes | None = _prefix_end(prefix.encode()) if prefix else None
        if high == b"\0":  # a prefix of only 0xff bytes: no end
            high = None
        if end is not None and (high is None or end.encode() < high):
            high = end.encode()
        if high is not None and low >= high:  # nothing in range: only the revision
            request = rpc.RangeRequest(key=low, count_only=True)
        else:
            request = rpc.RangeRequest(key=low, range_end=high or b"\0", limit=limit)

        async def send(conn: _Conn, timeout: float) -> Page:
            response = await conn.kv.Range(request, timeout=timeout, metadata=conn.metadata)
            kvs = tuple(_kv(kv) for kv in response.kvs)
            return Page(kvs, response.header.revision, bool(response.more))

        return await self._request("range", send, idempotent=True)

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        request = rpc.TxnRequest(
            compare=[_compare(c) for c in compares],
            success=[_request_op(op) for op in success],
            failure=[_request_op(op) for op in failure],
        )
        writes = any(isinstance(op, Put | Delete) for op in (*success, *failure))

        async def send(conn: _Conn, timeout: float) -> TxnResult:
            response = await conn.kv.Txn(request, timeout=timeout, metadata=conn.metadata)
            gets = tuple(
                (_kv(r.response_range.kvs[0]) if r.response_range.kvs else None)
                for r in response.responses
                if r.WhichOneof("response") == "response_range"
            )
            return TxnResult(bool(response.succeeded), response.header.revision, gets)

        return await self._request("txn", send, idempotent=not writes, size=request.ByteSize)

    async def watch(self, prefix: str, from_revision: int) -> AsyncIterator[WatchEvent]:
        self._current()  # raises if closed
        if from_revision <= 0:
            raise Compacted(f"revision {from_revision} is compacted (revisions start at 1)", 0)
        self._start_probe()
        stream = _WatchStream(self, prefix, from_revision)
        try:
            while True:
                batch = await stream.next_batch()
                if batch is None:
                    return
                for event in batch:
                    yield event
        finally:
            stream.cancel()

    async def lease_grant(self, ttl: float) -> int:
        if not ttl > 0:
            raise ValueError(f"lease ttl must be > 0 seconds, got {ttl!r}")
        request = rpc.LeaseGrantRequest(TTL=max(1, math.ceil(ttl)))

        async def send(conn: _Conn, timeout: float) -> int:
            response = await conn.lease.LeaseGrant(request, timeout=timeout, metadata=conn.metadata)
            if response.error:
                raise Unavailable(f"etcd did not grant a lease: {response.error}")
            return int(response.ID)

        # An orphan of a lost answer expires by itself: retrying is harmless.
        return await self._request("lease_grant", send, idempotent=True)

    async def lease_keepalive(self, lease_id: int) -> float:
        async def send(conn: _Conn, timeout: float) -> float:
            call = conn.lease.LeaseKeepAlive(timeout=timeout, metadata=conn.metadata)
            try:
                await call.write(rpc.LeaseKeepAliveRequest(ID=lease_id))
                response = await call.read()
            finally:
                call.cancel()
            if response is _grpc.aio.EOF:
                raise _NotConnected(f"{conn.endpoint} ended the keepalive stream")
            if response.TTL <= 0:
                raise LeaseLost(f"lease {lease_id} not found (expired or revoked)")
            return float(response.TTL)

        return await self._request("lease_keepalive", send, idempotent=True)

    async def lease_revoke(self, lease_id: int) -> None:
        async def send(conn: _Conn, timeout: float) -> None:
            request = rpc.LeaseRevokeRequest(ID=lease_id)
            try:
                await conn.lease.LeaseRevoke(request, timeout=timeout, metadata=conn.metadata)
            except rpc.AioRpcError as exc:
                if exc.code() != _grpc.StatusCode.NOT_FOUND:
                    raise

        await self._request("lease_revoke", send, idempotent=True)

    async def compact(self, revision: int) -> None:
        async def send(conn: _Conn, timeout: float) -> None:
            current = await conn.kv.Range(
                rpc.RangeRequest(key=b"\0", count_only=True),
                timeout=timeout,
                metadata=conn.metadata,
            )
            target = min(revision, current.header.revision)
            if target < 1:
                return
            request = rpc.CompactionRequest(revision=target)
            try:
                await conn.kv.Compact(request, timeout=timeout, metadata=conn.metadata)
            except rpc.AioRpcError as exc:
                if exc.code() != _grpc.StatusCode.OUT_OF_RANGE:
                    raise  # else: compacted there already

        await self._request("compact", send, idempotent=True)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        if self._probe is not None:
            self._probe.cancel()
            try:
                await self._probe
            except asyncio.CancelledError:
                if _cancelled():
                    raise
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()  # ends the watch streams on it
