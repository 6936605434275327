"""Transports by URL: ``open_transport("tcp://127.0.0.1:7100")``.

Schemes map to classes through the ``kerna.transports`` entry point group, which the
built-in transports use too, so a third-party package adds ``unix://`` (say) by
declaring an entry point. A module is imported only when its scheme is used.
"""

from __future__ import annotations

from typing import Any

from kerna._errors import ConfigError
from kerna._schemes import known_schemes, load_scheme, scheme_of

from ._base import Transport

__all__ = ["open_transport", "schemes", "transport_class"]

GROUP = "kerna.transports"
# Which extra provides the client library of a built-in scheme.
_EXTRAS = {"nats": "nats"}
# Built-ins, also declared as entry points; kept here so a source checkout without an
# installed distribution (no metadata) still finds them.
_BUILTIN = {
    "inproc": "kerna.transports._inproc:InprocTransport",
    "tcp": "kerna.transports._tcp:TcpTransport",
    "nats": "kerna.transports._nats:NatsTransport",
}


def schemes() -> dict[str, str]:
    """Every known scheme and the ``module:Class`` that serves it (entry points are
    read once per process: ``kerna._schemes.entry_point_values``)."""
    return known_schemes(_BUILTIN, GROUP)


def transport_class(url: str) -> type[Transport]:
    """The transport class serving ``url``'s scheme, imported on demand.

    Raises:
        ConfigError: malformed URL, unknown scheme, or the transport's extra is missing.
    """
    cls: type[Transport] = load_scheme(
        scheme_of(url, "transport URL"), schemes(), Transport, what="transport", extras=_EXTRAS
    )
    return cls


def open_transport(url: str, **options: Any) -> Transport:
    """A transport for ``url`` (not started: ``await t.start(on_frame, on_peer_lost)``).

    Raises:
        ConfigError: malformed URL, unknown scheme, missing extra, bad option.
    """
    cls = transport_class(url)
    try:
        return cls(url, **options)
    except TypeError as exc:
        raise ConfigError(f"bad option for transport {url!r}: {exc}") from exc
