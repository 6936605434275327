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
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from aetcd import rpc

from kerna._errors import (
    Compacted,
    ConfigError,
    DecodeError,
    KernaError,
    LeaseLost,
    OutcomeUnknown,
    StateError,
    Unavailable,
)

from ._backend import StateBackend
from ._types import Compare, Delete, KeyValue, Op, Page, Put, TxnResult, WatchEvent

__all__ = ["EtcdBackend"]

log = logging.getLogger("kerna.state.etcd")
_grpc: Any = importlib.import_module("grpc")  # aetcd's dependency; untyped, hence Any

_T = TypeVar("_T")
_DEFAULT_PORT = 2379
_BACKOFF_MIN = 0.05
_BACKOFF_MAX = 0.5
_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
)
_TARGETS = {
    "version": (rpc.Compare.VERSION, "version"),
    "create": (rpc.Compare.CREATE, "create_revision"),
    "mod": (rpc.Compare.MOD, "mod_revision"),
    "value": (rpc.Compare.VALUE, "value"),
    "lease": (rpc.Compare.LEASE, "lease"),
}
_RESULTS = {
    "==": rpc.Compare.EQUAL,
    "!=": rpc.Compare.NOT_EQUAL,
    "<": rpc.Compare.LESS,
    ">": rpc.Compare.GREATER,
}


@dataclass(frozen=True)
class _Options:
    timeout: float
    probe_interval: float
    probe_timeout: float
    ca_cert: bytes | None
    cert_key: bytes | None
    cert_cert: bytes | None
    username: str | None
    password: str | None


class _NotConnected(Exception):
    """The channel could not reach its member: nothing was sent."""


@dataclass(frozen=True)
class _Fault:
    """What went wrong with one attempt, and what that allows."""

    reason: str
    maybe_applied: bool  # the request may have reached etcd and taken effect
    broken: bool  # the connection is no good: close it, move to the next member


def _cancelled() -> bool:
    """Whether the current task is being cancelled (as opposed to a gRPC call being
    cancelled under it because its channel was closed, which also raises
    ``CancelledError``)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class _Conn:
    """One gRPC channel to one member, with its stubs; closed once, never reopened."""

    def __init__(self, endpoint: str, options: _Options) -> None:
        self.endpoint = endpoint
        self._options = options
        if options.ca_cert or options.cert_cert:
            credentials = _grpc.ssl_channel_credentials(
                root_certificates=options.ca_cert,
                private_key=options.cert_key,
                certificate_chain=options.cert_cert,
            )
            self.channel = rpc.secure_channel(endpoint, credentials, options=_CHANNEL_OPTIONS)
        else:
            self.channel = rpc.insecure_channel(endpoint, options=_CHANNEL_OPTIONS)
        self.kv = rpc.KVStub(self.channel)
        self.lease = rpc.LeaseStub(self.channel)
        self.watch = rpc.WatchStub(self.channel)
        self.maintenance = rpc.MaintenanceStub(self.channel)
        self.closed = False
        self.connected = False  # it was ready once
        self._token: tuple[tuple[str, str], ...] = ()
        self._auth_lock = asyncio.Lock()

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata: the auth token, and "only a member with a leader may answer"
        (etcd rejects such a request unapplied, or cancels such a stream, when the
        member has lost its leader)."""
        return (("hasleader", "true"), *self._token)

    @property
    def probe_metadata(self) -> tuple[tuple[str, str], ...]:
        """The auth token alone: a probe asks whether the member answers at all."""
        return self._token

    async def ready(self, timeout: float) -> None:
        """Wait until the channel is connected (and authenticated).

        Raises:
            _NotConnected: the member refused or did not answer within ``timeout``.
        """
        ready = _grpc.ChannelConnectivity.READY
        failed = (_grpc.ChannelConnectivity.TRANSIENT_FAILURE, _grpc.ChannelConnectivity.SHUTDOWN)
        state = self.channel.get_state(True)
        if state != ready:
            try:
                async with asyncio.timeout(timeout):
                    while state != ready:
                        if state in failed:
                            raise _NotConnected(f"cannot connect to {self.endpoint}")
                        await self.channel.wait_for_state_change(state)
                        state = self.channel.get_state(True)
            except TimeoutError:
                raise _NotConnected(f"{self.endpoint} did not accept a connection") from None
        self.connected = True
        if self._options.username is not None and not self._token:
            async with self._auth_lock:  # one Authenticate (a raft proposal) per token
                if not self._token:
                    request = rpc.AuthenticateRequest(
                        name=self._options.username, password=self._options.password
                    )
                    auth = rpc.AuthStub(self.channel)
                    response = await auth.Authenticate(request, timeout=timeout)
                    self._token = (("token", response.token),)

    def forget_token(self) -> None:
        self._token = ()

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self.channel.close()


def _parse_endpoints(url: str) -> tuple[str, ...]:
    scheme, _, rest = url.partition("://")
    if scheme.lower() != "etcd" or not _:
        raise ConfigError(f"etcd URL must look like 'etcd://host:port[,host:port...]', got {url!r}")
    if rest.endswith("/"):
        rest = rest[:-1]
    for bad, what in (("/", "a path"), ("?", "a query"), ("#", "a fragment"), ("@", "credentials")):
        if bad in rest:
            hint = " (use the username/password options)" if bad == "@" else ""
            raise ConfigError(f"etcd URL {url!r} must not contain {what}{hint}")
    if not rest:
        raise ConfigError(f"etcd URL {url!r} names no endpoint: 'etcd://host:port[,host:port...]'")
    endpoints = []
    for item in rest.split(","):
        host, port = item, str(_DEFAULT_PORT)
        if item.startswith("["):  # [ipv6]:port
            close = item.find("]")
            tail = item[close + 1 :] if close > 0 else "?"
            if tail and not tail.startswith(":"):
                raise ConfigError(f"etcd URL {url!r}: bad endpoint {item!r}")
            host, port = item[: close + 1], tail[1:] or str(_DEFAULT_PORT)
        elif ":" in item:
            host, _, port = item.rpartition(":")
        if not host or host == "[]":
            raise ConfigError(f"etcd URL {url!r}: endpoint {item!r} has no host")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"etcd URL {url!r}: endpoint {item!r} has a bad port {port!r}")
        endpoints.append(f"{host}:{int(port)}")
    return tuple(endpoints)


def _positive(options: dict[str, object], name: str, default: float) -> float:
    value = options.pop(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"etcd option {name} must be a number of seconds > 0, got {value!r}")
    return float(value)


def _pem(options: dict[str, object], name: str) -> bytes | None:
    value = options.pop(name, None)
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike):
        raise ConfigError(f"etcd option {name} must be a file path, got {value!r}")
    try:
        with open(value, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"etcd option {name}: cannot read {os.fspath(value)!r}: {exc}") from exc


def _text(options: dict[str, object], name: str) -> str | None:
    value = options.pop(name, None)
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"etcd option {name} must be a non-empty string, got {value!r}")
    return value


_KNOWN = "timeout, probe_interval, probe_timeout, ca_cert, cert_key, cert_cert, username, password"


def _parse_options(given: Mapping[str, object]) -> _Options:
    options = dict(given)
    timeout = _positive(options, "timeout", 5.0)
    probe_interval = _positive(options, "probe_interval", 1.0)
    probe_timeout = _positive(options, "probe_timeout", 2.0)
    ca_cert, cert_key, cert_cert = (_pem(options, n) for n in ("ca_cert", "cert_key", "cert_cert"))
    username, password = _text(options, "username"), _text(options, "password")
    if options:
        raise ConfigError(f"unknown etcd options: {', '.join(sorted(options))} (known: {_KNOWN})")
    if (cert_key is None) != (cert_cert is None):
        raise ConfigError("etcd options cert_key and cert_cert go together (client certificate)")
    if (username is None) != (password is None):
        raise ConfigError("etcd options username and password go together")
    return _Options(
        timeout, probe_interval, probe_timeout, ca_cert, cert_key, cert_cert, username, password
    )


def _prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix`` (etcd's
    ``range_end``); ``b"\\0"`` means "no end"."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _key(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise DecodeError(f"etcd key {raw!r} is not UTF-8") from None


def _kv(raw: Any) -> KeyValue:
    return KeyValue(
        _key(raw.key), raw.value, raw.create_revision, raw.mod_revision, raw.version, raw.lease
    )


def _event(raw: Any) -> WatchEvent:
    kv = raw.kv
    if raw.type == rpc.Event.DELETE:
        return WatchEvent("delete", KeyValue(_key(kv.key), b"", 0, kv.mod_revision, 0, 0))
    return WatchEvent("put", _kv(kv))


def _compare(c: Compare) -> Any:
    target, field = _TARGETS[c.target]
    expected_type = bytes if c.target == "value" else int
    if type(c.value) is not expected_type:
        raise TypeError(f"compare {c.target} of {c.key!r} with {c.value!r}")
    return rpc.Compare(key=c.key.encode(), target=target, result=_RESULTS[c.op], **{field: c.value})


def _request_op(op: Op) -> Any:
    if isinstance(op, Put):
        return rpc.RequestOp(
            request_put=rpc.PutRequest(key=op.key.encode(), value=op.value, lease=op.lease)
        )
    if isinstance(op, Delete):
        key = op.key.encode()
        end = (_prefix_end(key) if key else b"\0") if op.prefix else b""
        if op.prefix and not key:
            key = b"\0"
        return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key, range_end=end))
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=op.key.encode()))


def _classify(exc: Any, sent: bool) -> _Fault:
    """Turn a gRPC error into a fault to retry or report, or raise the kerna error it
    definitely means (such an answer came from etcd: nothing ambiguous about it)."""
    code, details = exc.code(), exc.details() or ""
    codes = _grpc.StatusCode
    if code == codes.UNAVAILABLE:
        if not details.startswith("etcdserver:"):  # a transport failure
            unsent = "failed to connect" in details
            return _Fault(details, maybe_applied=sent and not unsent, broken=True)
        # etcd rejects unapplied when the member has no leader; its timeouts, "leader
        # changed" and "stopped" may follow a proposal that will still be applied.
        return _Fault(details, maybe_applied=sent and "no leader" not in details, broken=True)
    if code == codes.DEADLINE_EXCEEDED:
        return _Fault(f"no answer in time ({details})", maybe_applied=sent, broken=True)
    if code == codes.RESOURCE_EXHAUSTED and "too many requests" in details:
        return _Fault(details, maybe_applied=False, broken=False)
    if code == codes.UNKNOWN and "proposal dropped" in details:
        return _Fault(details, maybe_applied=False, broken=True)
    if code == codes.UNAUTHENTICATED and "invalid auth token" in details:
        return _Fault(details, maybe_applied=False, broken=False)
    if code == codes.NOT_FOUND and "lease not found" in details:
        raise LeaseLost(f"etcd: {details} (expired or revoked)")
    if code == codes.OUT_OF_RANGE and "compacted" in details:
        raise Compacted(f"etcd: {details}")
    if "authentication failed" in details or "authentication is not enabled" in details:
        raise ConfigError(f"etcd rejected the username/password options: {details}")
    if code == codes.INVALID_ARGUMENT:
        raise ValueError(f"etcd rejected the request: {details}")
    if code == codes.PERMISSION_DENIED:
        raise StateError(f"etcd denied the request: {details}")
    if code == codes.RESOURCE_EXHAUSTED:  # e.g. the space quota alarm
        raise Unavailable(f"etcd refused the request: {details}")
    return _Fault(f"{code.name}: {details}", maybe_applied=sent, broken=True)


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

    # -- connections -------------------------------------------------------------------

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
    ) -> _T:
        """Run ``send(conn, attempt_timeout)`` on the current member, moving on to the
        next member on failure, until it answers or ``timeout`` has passed.

        An attempt that may have been applied is repeated only if ``idempotent``;
        otherwise it raises ``OutcomeUnknown``. Each attempt gets at most
        ``probe_timeout``: a member that takes longer is taken for wedged. That bounds
        how long a write can hang on a follower that forwarded it to a leader that just
        died (etcd drops such a proposal and never answers it): without the bound, a
        write would wait for the whole ``timeout`` before the caller could re-read and
        try again.
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
                fault = _classify(exc, sent)
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
                self._probe_loop(), name=f"kerna.state.etcd probe {self.url}"
            )

    async def _probe_loop(self) -> None:
        """Every ``probe_interval``, ask the current member for its status; one that
        does not answer within ``probe_timeout`` is dropped (see the module docstring)."""
        timeout = self._options.probe_timeout
        while True:
            await asyncio.sleep(self._options.probe_interval)
            conn = self._conn
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
                await self._drop(conn, f"failed the liveness probe ({reason})")

    # -- primitives --------------------------------------------------------------------

    async def get(self, key: str, *, linearizable: bool = True) -> KeyValue | None:
        request = rpc.RangeRequest(key=key.encode(), serializable=not linearizable)

        async def send(conn: _Conn, timeout: float) -> KeyValue | None:
            response = await conn.kv.Range(request, timeout=timeout, metadata=conn.metadata)
            return _kv(response.kvs[0]) if response.kvs else None

        return await self._request("get", send, idempotent=True)

    async def range(
        self, prefix: str, *, start_after: str | None = None, limit: int = 1000
    ) -> Page:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        start = prefix.encode() or b"\0"
        end = _prefix_end(start) if prefix else b"\0"
        if start_after is not None and start_after >= prefix:
            start = start_after.encode() + b"\0"

        async def send(conn: _Conn, timeout: float) -> Page:
            request = rpc.RangeRequest(key=start, range_end=end, limit=limit)
            if end != b"\0" and start >= end:  # past the prefix: only the revision
                request = rpc.RangeRequest(key=end, count_only=True)
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

        return await self._request("txn", send, idempotent=not writes)

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
        while not self._backend._closed:
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
        conn = self._backend._current()
        timeout = self._backend._options.probe_timeout
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
        if self._backend._closed:
            return
        if conn is not None:
            await self._backend._drop(conn, f"watch on {self._prefix!r} lost: {reason}")
        await self._backend._pause(self._delay)
        self._delay = min(self._delay * 2, _BACKOFF_MAX)
