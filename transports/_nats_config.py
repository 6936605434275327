"""A nats transport's configuration: its URL and options checked once, into a
``NatsConfig`` (what the transport keeps, and the options it connects nats-py with).

Every error is a ``ConfigError`` that names the option and the value it got; the
options are checked in the order ``NatsTransport`` lists them.
"""

from __future__ import annotations

import re
import secrets
import ssl
from typing import Any
from urllib.parse import urlsplit

import msgspec

from kerna._errors import ConfigError

__all__ = ["DEFAULT_PORT", "NatsConfig", "nats_config", "node_subject", "valid_node_name"]

DEFAULT_PORT = 4222
# A subject token: no '.', '*', '>' or whitespace (NATS's own rules), kept short.
_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}\Z")
_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64})*\Z")


class NatsConfig(msgspec.Struct, frozen=True):
    """What ``nats_config`` checked (see ``NatsTransport`` for each option)."""

    server: str  # host:port, without credentials
    node_name: str
    subject_prefix: str
    ping_interval: float
    connect_timeout: float
    probe_timeout: float
    receive_queue: int
    sender_header: bool
    schema: bytes
    client_options: dict[str, Any]  # nats-py's connect(**client_options)


def valid_node_name(name: str) -> bool:
    """Whether ``name`` can be a node's name (one subject token)."""
    return _NAME.match(name) is not None


def node_subject(prefix: str, node: str) -> str:
    """The subject the node named ``node`` listens on."""
    return f"{prefix}.node.{node}"


def _positive(name: str, value: object) -> float:
    """``value`` as a float.

    Raises:
        ConfigError: it is not a number > 0 (the message names ``name``).
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{name} must be a number > 0, got {value!r}")
    return float(value)


def nats_config(
    url: str,
    *,
    name: str | None,
    subject_prefix: str,
    ping_interval: float,
    max_outstanding_pings: int,
    connect_timeout: float,
    reconnect_time_wait: float,
    probe_timeout: float,
    schema: bytes | str,
    tls: ssl.SSLContext | None,
    tls_hostname: str | None,
    user: str | None,
    password: str | None,
    token: str | None,
    creds: str | None,
    pending_size: int,
    receive_queue: int,
    sender_header: bool,
) -> NatsConfig:
    """Check a nats transport's URL and options.

    Raises:
        ConfigError: a malformed URL or a bad option.
    """
    parts = urlsplit(url)
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise ConfigError(f"nats URL {url!r} has a bad port: {exc}") from exc
    if parts.scheme.lower() != "nats" or not parts.hostname:
        raise ConfigError(f"nats URL must look like 'nats://host:port/node-name', got {url!r}")
    if parts.query or parts.fragment:
        raise ConfigError(f"nats URL {url!r}: pass options as arguments, not in the URL")
    path_name = parts.path.strip("/") or None
    if path_name is not None and name is not None and path_name != name:
        raise ConfigError(f"nats URL {url!r} names node {path_name!r} but name={name!r}")
    node = path_name or name or f"node-{secrets.token_hex(6)}"
    if not valid_node_name(node):
        raise ConfigError(
            f"nats node name {node!r} must be 1-128 letters, digits, '-' or '_' "
            "(it is a subject token)"
        )
    if not isinstance(subject_prefix, str) or not _PREFIX.match(subject_prefix):
        raise ConfigError(f"subject_prefix must be dot-separated tokens, got {subject_prefix!r}")
    if tls is not None and not isinstance(tls, ssl.SSLContext):
        raise ConfigError(f"tls must be an ssl.SSLContext, got {type(tls).__qualname__}")
    if isinstance(max_outstanding_pings, bool) or not isinstance(max_outstanding_pings, int):
        raise ConfigError(f"max_outstanding_pings must be an int, got {max_outstanding_pings!r}")
    if max_outstanding_pings < 1:
        raise ConfigError(f"max_outstanding_pings must be >= 1, got {max_outstanding_pings}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    server = f"{host}:{port}"
    ping = _positive("ping_interval", ping_interval)
    connect = _positive("connect_timeout", connect_timeout)
    probe = _positive("probe_timeout", probe_timeout)
    client_options: dict[str, Any] = {
        "servers": [f"nats://{parts.netloc.rsplit('@', 1)[0]}@{server}"]
        if "@" in parts.netloc
        else [f"nats://{server}"],
        "name": f"kerna {node}",
        "ping_interval": ping,
        "max_outstanding_pings": max_outstanding_pings,
        "connect_timeout": connect,
        "reconnect_time_wait": _positive("reconnect_time_wait", reconnect_time_wait),
        # The first connect fails fast: a refused one is tried twice, a wrong
        # password or certificate once; start then lets nats-py reconnect for good.
        "allow_reconnect": False,
        "max_reconnect_attempts": 1,
        "pending_size": int(_positive("pending_size", pending_size)),
        # A publish that waits for a full socket is bounded (then reported, not hung).
        "flush_timeout": connect,
        "tls": tls,
        "tls_hostname": tls_hostname,
        "user": user,
        "password": password,
        "token": token,
        "user_credentials": creds,
    }
    if isinstance(receive_queue, bool) or not isinstance(receive_queue, int):
        raise ConfigError(f"receive_queue must be an int >= 1, got {receive_queue!r}")
    if receive_queue < 1:
        raise ConfigError(f"receive_queue must be an int >= 1, got {receive_queue!r}")
    if not isinstance(sender_header, bool):
        raise ConfigError(f"sender_header must be True or False, got {sender_header!r}")
    if not isinstance(schema, bytes | str):
        raise ConfigError(f"schema must be bytes or str, got {type(schema).__qualname__}")
    return NatsConfig(
        server=server,
        node_name=node,
        subject_prefix=subject_prefix,
        ping_interval=ping,
        connect_timeout=connect,
        probe_timeout=probe,
        receive_queue=receive_queue,
        sender_header=sender_header,
        schema=schema.encode() if isinstance(schema, str) else schema,
        client_options=client_options,
    )
