"""The state side of an activation: what the store read or wrote, applied in one place.

``StateOwner`` is the base of ``Activation``: it holds a stateful agent's committed
state, the revision (or event sequence number) its next write compares against, its
claim's fencing token and whether a reload is due, and it turns what ``Persistence``
returns or raises into those fields and into lifecycle decisions (a lost claim
deactivates). ``Persistence`` itself never touches an activation.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from ._agent import load_state
from ._errors import Conflict, Fenced, OutcomeUnknown, Unavailable
from ._persistence import NotWritten

if TYPE_CHECKING:
    from ._agent import Agent
    from ._envelope import Envelope
    from ._ids import AgentId
    from ._persistence import StateSpec, Stored, Written
    from ._registry import AgentType
    from ._runtime import Runtime

__all__ = ["StateOwner"]


class StateOwner:
    """State fields and the methods that apply what the store read or wrote.

    Attributes:
        state_value: the committed state (``state``).
        state_rev: revision of the state key the state came from (plain state).
        token: fencing token: the create revision of this activation's claim (0: none).
        seq: event-sourced types: the last event sequence number folded in.
        stale: a write's outcome is unknown: reload before the next message.
    """

    __slots__ = ("seq", "stale", "state_rev", "state_value", "token")

    state_value: Any
    state_rev: int
    token: int
    seq: int
    stale: bool
    # Defined by Activation, used here.
    id: AgentId
    atype: AgentType
    runtime: Runtime
    agent: Agent | None
    current: Envelope | None

    @property
    def state(self) -> Any:
        """The agent's state as last loaded or written (stateful types; see ``loaded``)."""
        return self.state_value

    def request_deactivation(self) -> None:
        raise NotImplementedError  # Activation's

    def loaded(self, stored: Stored) -> None:
        """Hold ``stored`` as the agent's committed state (what handlers read as
        ``self.state``) and the revision or sequence number its next write compares
        against; the state is fresh (no reload is due)."""
        self.state_value = stored.state
        self.state_rev = stored.revision
        self.seq = stored.seq
        self.stale = False
        if self.agent is not None:
            load_state(self.agent, stored.state)

    def lost_claim(self) -> None:
        """The store found this activation's claim lost: never release it (it may be
        another kernel's now) and deactivate."""
        self.token = 0
        self.request_deactivation()

    async def release(self) -> None:
        """Give up the claim, if this activation holds one (best effort)."""
        token, self.token = self.token, 0
        if token:
            await self.runtime.store().release(self.id, token)

    async def reload(self, *, linearizable: bool = True) -> None:
        """Re-read the state (``Agent.reload``; before the next message after a write
        whose outcome is unknown, ``stale``).

        Raises:
            Unavailable: the backend could not be reached (a stale state stays stale).
            DecodeError: the stored state or an event does not decode.
        """
        store = self.runtime.store()
        self.loaded(await store.load(self.id, self._spec(), linearizable=linearizable))

    async def save(self, new_state: Any) -> None:
        """``Agent.save``: compare-and-swap over the revision read (``Persistence.save``).

        Raises:
            Conflict, Fenced, OutcomeUnknown, Unavailable, ValueTooLarge, TypeError: as
                ``Agent.save`` documents.
        """
        store = self.runtime.store()
        await self._write(
            store.save(self.id, self._spec(), new_state, token=self.token, revision=self.state_rev)
        )

    async def emit(self, events: tuple[Any, ...]) -> None:
        """``Agent.emit``: append after the last sequence number folded in; on a lost
        race, catch up (reload) before raising ``Conflict``.

        Raises:
            Conflict, Fenced, OutcomeUnknown, Unavailable, ValueTooLarge, TypeError: as
                ``Agent.emit`` documents.
        """
        current = self.current
        correlation = (0, 0) if current is None else (current.correlation_id, current.id)
        store = self.runtime.store()
        write = store.emit(
            self.id,
            self._spec(),
            events,
            state=self.state_value,
            seq=self.seq,
            token=self.token,
            correlation=correlation,
        )
        try:
            await self._write(write)
        except Conflict as exc:
            try:
                await self.reload()  # someone appended first: catch up
            except Unavailable as again:
                self.stale = True
                raise exc from again
            raise

    async def _write(self, write: Awaitable[Written]) -> None:
        """Await a state write and apply what it found: the state written or stored now,
        the claim lost (deactivate), or an unknown outcome (reload before the next
        message)."""
        try:
            written = await write
        except NotWritten as refused:  # the answer showed what is stored: adopt it
            self.loaded(refused.stored)
            if not refused.owned:
                self.lost_claim()
            raise refused.error from refused.__cause__
        except Fenced:
            self.lost_claim()
            raise
        except OutcomeUnknown:
            self.stale = True
            raise
        self.loaded(written.stored)
        if not written.owned:
            self.lost_claim()  # written, but the claim was lost since

    def _spec(self) -> StateSpec:
        spec = self.atype.state_spec
        assert spec is not None  # only stateful types read or write state
        return spec
