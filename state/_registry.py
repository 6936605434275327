"""Backends by URL: ``connect("etcd://h1:2379,h2:2379")``.

Schemes map to classes through the ``kerna.state_backends`` entry point group, which
the built-in backends use too, so a third-party package adds ``consul://`` (say) by
declaring an entry point. Modules are imported only when their scheme is used.
"""

from __future__ import annotations

from kerna._schemes import known_schemes, load_scheme, scheme_of

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
    """Every known scheme and the ``module:Class`` that serves it (entry points are
    read once per process: ``kerna._schemes.entry_point_values``)."""
    return known_schemes(_BUILTIN, GROUP)


def backend_class(url: str) -> type[StateBackend]:
    """The backend class serving ``url``'s scheme, imported on demand.

    Raises:
        ConfigError: malformed URL, unknown scheme, or the backend's extra is missing.
    """
    cls: type[StateBackend] = load_scheme(
        scheme_of(url, "state URL"), schemes(), StateBackend, what="state backend", extras=_EXTRAS
    )
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
