"""kerna.testing: helpers for the tests of kerna's users and extension authors.

- ``StateBackendSuite``: the conformance suite of ``kerna.state.StateBackend``, the one
  kerna's own backends pass; a third-party backend runs it by subclassing it in its
  tests (``help(StateBackendSuite)`` shows how). It needs pytest (the ``test`` extra);
  it is imported on first use, so ``import kerna.testing`` alone does not import pytest.
  A class to subclass rather than a pytest plugin (anyio's way for its harness): the
  backend author says which store it runs on, and nothing is registered in the pytest
  session of every project that merely has kerna installed.
- ``TransportSuite``: the conformance suite of ``kerna.transports.Transport``, which
  kerna's transports pass; a third-party transport subclasses it the same way
  (``help(TransportSuite)``: a ``make_transport`` factory fixture is all it needs).
  Imported on first use too.
- ``VirtualClock``: virtual time for a kernel's event loop (trio's ``MockClock``), so
  that timers, ask timeouts, idle deactivation and restart backoff take no real time
  and happen the same way every run (``help(VirtualClock)`` shows how).
- ``watch_events``: the first events of a watch, bounded by a timeout.
"""

import importlib
import typing

from ._clock import VirtualClock
from ._watch import watch_events

if typing.TYPE_CHECKING:
    from ._state_suite import StateBackendSuite
    from ._transport_suite import TransportFactory, TransportSuite

__all__ = [
    "StateBackendSuite",
    "TransportFactory",
    "TransportSuite",
    "VirtualClock",
    "watch_events",
]

# names whose module needs pytest: imported on first use
_NEEDS_PYTEST = {
    "StateBackendSuite": "_state_suite",
    "TransportFactory": "_transport_suite",
    "TransportSuite": "_transport_suite",
}

if not typing.TYPE_CHECKING:  # hidden from mypy, which would otherwise accept any name

    def __getattr__(name: str) -> object:
        module = _NEEDS_PYTEST.get(name)
        if module is None:
            raise AttributeError(f"module 'kerna.testing' has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
