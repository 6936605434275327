"""Backends by URL: ``connect("etcd://h1:2379,h2:2379")``.

Schemes map to classes through the ``kerna.state_backends`` entry point group, which
the built-in backends use too, so a third-party package adds ``consul://`` (say) by
declaring an entry point. Modules are imported only when their scheme is used.
"""

from __future__ import annotations

import functools
import importlib
from importlib.metadata import entry_points

from kerna._errors import ConfigError

from ._backend import StateBackend

__all__ = ["backend_class", "connect", "schemes"]

GROUP = "kerna.state_backends"
# Which extra provides the client library of a built-in scheme.
_EXTRAS = {"etcd": "etcd", "consul": "consul"}
# Built-ins, also declared as entry points; kept here so a source checkout without an
# installed distribution (no metadata) still finds them.
_BUILTIN = {
    "memory": "kerna.state._memory:MemoryBackend",
    "sqlite": "kerna.state._sqlite:SqliteBackend",
    "etcd": "kerna.state._etcd:EtcdBackend",
}


def schemes() -> dict[str, str]:
    """Every known scheme and the ``module:Class`` that serves it."""
    found = dict(_BUILTIN)
    found.update(_entry_points())
    return found


@functools.cache
def _entry_points() -> tuple[tuple[str, str], ...]:
    """The group's entry points, read once per process: reading them costs milliseconds
    and every ``connect`` (every kernel start) asks. After installing a backend package at
    run time, call ``_entry_points.cache_clear()``."""
    return tuple((ep.name, ep.value) for ep in entry_points(group=GROUP))


def _split(url: str) -> str:
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"state URL must look like 'scheme://...', got {url!r}")
    scheme = url.split("://", 1)[0]
    if not scheme or not scheme.replace("+", "").isalnum():
        raise ConfigError(f"state URL {url!r} has an invalid scheme {scheme!r}")
    return scheme.lower()


def backend_class(url: str) -> type[StateBackend]:
    """The backend class serving ``url``'s scheme, imported on demand.

    Raises:
        ConfigError: malformed URL, unknown scheme, or the backend's extra is missing.
    """
    scheme = _split(url)
    target = schemes().get(scheme)
    if target is None:
        known = ", ".join(sorted(schemes()))
        raise ConfigError(f"no state backend for scheme {scheme!r} (known: {known})")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = _EXTRAS.get(scheme)
        hint = f"pip install 'kerna[{extra}]'" if extra else "install the package that provides it"
        raise ConfigError(
            f"state backend {scheme!r} needs a missing library ({exc}): {hint}"
        ) from exc
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, StateBackend)):
        raise ConfigError(f"entry point {target!r} for {scheme!r} is not a StateBackend")
    return cls


async def connect(url: str, **options: object) -> StateBackend:
    """Create and connect the backend for ``url``.

    Examples: ``memory://`` (private), ``memory://shared-name``, ``sqlite:///state.db``
    (relative to the working directory), ``sqlite:////var/lib/kerna/state.db``
    (absolute), ``etcd://10.0.0.1:2379,10.0.0.2:2379``.

    Raises:
        ConfigError: malformed URL, unknown scheme, missing extra, bad option.
        Unavailable: the store cannot be reached.
    """
    return await backend_class(url).from_url(url, **options)
