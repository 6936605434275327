"""The etcd backend's connections: one gRPC channel per member, options, and faults.

What ``EtcdBackend`` (``kerna.state._etcd``) builds its endpoint failover and its
retries on: parsing the URL's endpoints and the keyword options, ``_Conn`` (one channel
to one member, connected and authenticated on demand), and ``_classify``, which decides
whether a failed gRPC call may be retried, is ambiguous, or means a definite kerna
error.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aetcd import rpc

from kerna._errors import (
    Compacted,
    ConfigError,
    LeaseLost,
    StateError,
    Unavailable,
    ValueTooLarge,
)

_grpc: Any = importlib.import_module("grpc")  # aetcd's dependency; untyped, hence Any

_DEFAULT_PORT = 2379
_BACKOFF_MIN = 0.05
_BACKOFF_MAX = 0.5
_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
)
# etcd's gRPC server takes messages up to --max-request-bytes plus this much.
_GRPC_OVERHEAD = 512 * 1024
_LARGER_THAN_MAX = re.compile(r"larger than max \((\d+) vs\. (\d+)\)")


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


def _too_large(details: str, size: Callable[[], int] | None) -> ValueTooLarge:
    """etcd refused a request for its size: up to ``_GRPC_OVERHEAD`` over its limit
    etcd answers "request is too large" (naming neither size); past that its gRPC server
    refuses the message, naming both ("larger than max (size vs. limit + overhead)")."""
    match = _LARGER_THAN_MAX.search(details)
    if match:
        request, limit = int(match[1]), max(0, int(match[2]) - _GRPC_OVERHEAD)
    else:
        request, limit = (size() if size is not None else 0), 0
    what = f"{limit} bytes" if limit else "1.5 MiB = 1572864 bytes by default"
    return ValueTooLarge(
        f"etcd refused a request of {request} bytes: it is over etcd's request limit"
        f" (--max-request-bytes, {what}); it was not applied: store less per write"
        f" ({details})",
        request,
        limit,
    )


def _classify(exc: Any, sent: bool, size: Callable[[], int] | None = None) -> _Fault:
    """Turn a gRPC error into a fault to retry or report, or raise the kerna error it
    definitely means (such an answer came from etcd: nothing ambiguous about it).
    ``size`` gives the request's size, for a request refused as too large."""
    code, details = exc.code(), exc.details() or ""
    codes = _grpc.StatusCode
    if (code == codes.INVALID_ARGUMENT and "request is too large" in details) or (
        code == codes.RESOURCE_EXHAUSTED
        and _LARGER_THAN_MAX.search(details)
        and not details.startswith("Received message")  # a reply over our own limit
    ):
        raise _too_large(details, size)
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
