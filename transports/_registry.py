"""Transports by URL: ``open_transport("tcp://127.0.0.1:7100")``.

Schemes map to classes through the ``kerna.transports`` entry point group, which the
built-in transports use too, so a third-party package adds ``unix://`` (say) by
declaring an entry point. A module is imported only when its scheme is used.
"""

from __future__ import annotations

import functools
import importlib
from importlib.metadata import entry_points
from typing import Any

from kerna._errors import ConfigError

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
    """Every known scheme and the ``module:Class`` that serves it."""
    found = dict(_BUILTIN)
    found.update(_entry_points())
    return found


@functools.cache
def _entry_points() -> tuple[tuple[str, str], ...]:
    """The group's entry points, read once per process (call ``cache_clear()`` after
    installing a transport package at run time)."""
    return tuple((ep.name, ep.value) for ep in entry_points(group=GROUP))


def _scheme(url: str) -> str:
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"transport URL must look like 'scheme://...', got {url!r}")
    scheme = url.split("://", 1)[0]
    if not scheme or not scheme.replace("+", "").isalnum():
        raise ConfigError(f"transport URL {url!r} has an invalid scheme {scheme!r}")
    return scheme.lower()


def transport_class(url: str) -> type[Transport]:
    """The transport class serving ``url``'s scheme, imported on demand.

    Raises:
        ConfigError: malformed URL, unknown scheme, or the transport's extra is missing.
    """
    scheme = _scheme(url)
    target = schemes().get(scheme)
    if target is None:
        known = ", ".join(sorted(schemes()))
        raise ConfigError(f"no transport for scheme {scheme!r} (known: {known})")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = _EXTRAS.get(scheme)
        hint = f"pip install 'kerna[{extra}]'" if extra else "install the package that provides it"
        raise ConfigError(f"transport {scheme!r} needs a missing library ({exc}): {hint}") from exc
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Transport)):
        raise ConfigError(f"entry point {target!r} for {scheme!r} is not a Transport")
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
