"""The Kernel's stored state, read from outside the agents: the backend, a type's event
logs, and live mirrors of a type's states.

A mixin of ``Kernel`` (``kerna._kernel``), kept apart so that the facade stays about
starting, stopping, registering and sending; everything here reads the store the
runtime's ``Persistence`` (``kerna._persistence``) writes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kerna.state import StateBackend
from kerna.state._eventlog import EventLog
from kerna.state._layout import unescape
from kerna.state._replica import Replica

from ._errors import UnknownAgent
from ._registry import type_name

if TYPE_CHECKING:
    from ._agent import Agent
    from ._persistence import Persistence
    from ._runtime import Runtime

__all__ = ["KernelState"]


class KernelState:
    """A ``Kernel``'s stored state (see the module docstring)."""

    _runtime: Runtime

    def event_log(self, agent_type: type[Agent] | str, key: str) -> EventLog[Any]:
        """The event log of the event-sourced agent ``AgentId(agent_type, key)``: its
        audit trail (``events()``, with correlation and causation ids) and time travel
        (``state_at(seq)``), read from the kernel's backend under its ``state_prefix``.

        Raises:
            UnknownAgent: the type is not registered here.
            TypeError: the type is not event-sourced, or ``key`` is not a str.
        """
        name = type_name(self._runtime.types, agent_type)
        atype = self._runtime.types.get(name)
        if atype is None:
            raise UnknownAgent(f"no agent type {name!r} is registered", agent_type=name)
        if not isinstance(key, str):
            raise TypeError(f"agent key must be a str, got {type(key).__qualname__}")
        spec = atype.state_spec
        if spec is None or spec.sourcing is None:
            raise TypeError(f"agent type {name!r} is not event-sourced")
        store = self._runtime.store()
        return EventLog(store.backend, spec.sourcing, name, key, layout=store.layout)

    def _store(self) -> Persistence:
        """The kernel's link to its state backend (tests inspect claims through it)."""
        return self._runtime.store()

    @property
    def state_backend(self) -> StateBackend:
        """The state backend (available once started)."""
        return self._runtime.store().backend

    def replica(self, agent_type: type[Agent] | str) -> Replica[Any]:
        """A local mirror of every stored state of ``agent_type`` (keyed by agent key),
        kept fresh by a watch: writes from any kernel on the same backend show up.

        Use it as an async context manager (``async with kernel.replica(Counter) as r``);
        ``r.get(key)`` returns the decoded state or None. For an event-sourced type the
        stored state is its latest snapshot, so the replica can be up to
        ``snapshot_every`` events behind the log (``event_log`` reads the log itself).

        Raises:
            UnknownAgent: the type is not registered here.
            TypeError: the type declares no state.
        """
        name = type_name(self._runtime.types, agent_type)
        atype = self._runtime.types.get(name)
        if atype is None:
            raise UnknownAgent(f"no agent type {name!r} is registered", agent_type=name)
        spec = atype.state_spec
        if spec is None:
            raise TypeError(f"agent type {name!r} declares no state")
        store = self._runtime.store()
        prefix = store.layout.states_of(name)
        return Replica(
            store.backend,
            prefix,
            decode=store.state_decoder(spec, name),
            key_of=lambda k: unescape(k[len(prefix) :]),
        )
