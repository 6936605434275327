"""Classes by URL scheme, through an entry point group: what ``kerna.state``'s and
``kerna.transports``' registries share (a leaf module: imports only ``kerna._errors``).
"""

from __future__ import annotations

import functools
import importlib
from importlib.metadata import entry_points
from typing import Any

from ._errors import ConfigError

__all__ = ["entry_point_values", "known_schemes", "load_scheme", "scheme_of"]


@functools.cache
def entry_point_values(group: str) -> tuple[tuple[str, str], ...]:
    """The ``(name, "module:Class")`` entry points of ``group``, read once per process
    and group: reading them costs milliseconds and every kernel start asks. After
    installing a package at run time, call ``entry_point_values.cache_clear()``."""
    return tuple((ep.name, ep.value) for ep in entry_points(group=group))


def known_schemes(builtin: dict[str, str], group: str) -> dict[str, str]:
    """Every scheme a registry knows: its built-ins (also declared as entry points, kept
    so that a source checkout without installed metadata finds them) and ``group``'s
    entry points, which win."""
    found = dict(builtin)
    found.update(entry_point_values(group))
    return found


def scheme_of(url: str, label: str) -> str:
    """The lower-cased scheme of ``url`` (``label``: "state URL", "transport URL").

    Raises:
        ConfigError: not ``scheme://...``, or an invalid scheme.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"{label} must look like 'scheme://...', got {url!r}")
    scheme = url.split("://", 1)[0]
    if not scheme or not scheme.replace("+", "").isalnum():
        raise ConfigError(f"{label} {url!r} has an invalid scheme {scheme!r}")
    return scheme.lower()


def load_scheme(
    scheme: str,
    known: dict[str, str],
    base: type,
    *,
    what: str,
    extras: dict[str, str],
) -> type[Any]:
    """Import the ``module:Class`` that ``known`` names for ``scheme``, a ``base``
    subclass (``what``: "state backend", "transport", for the errors).

    Raises:
        ConfigError: unknown scheme, a missing library (naming the extra to install),
            or the entry point is not a ``base``.
    """
    target = known.get(scheme)
    if target is None:
        names = ", ".join(sorted(known))
        raise ConfigError(f"no {what} for scheme {scheme!r} (known: {names})")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = extras.get(scheme)
        hint = f"pip install 'kerna[{extra}]'" if extra else "install the package that provides it"
        raise ConfigError(f"{what} {scheme!r} needs a missing library ({exc}): {hint}") from exc
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(f"entry point {target!r} for {scheme!r} is not a {base.__name__}")
    return cls
