"""Agent state on a state backend: activation claims, loading, compare-and-swap saves,
event appends, and fencing.

One ``Persistence`` per kernel. It holds the kernel's lease (a ``KeptLease``, refreshed
in the background, in ``Claims``) and reads and writes through the backend for the
stateful activations. It knows nothing of activations: each call takes the agent's id,
its ``StateSpec`` and what the activation last read (fencing token, revision or
sequence number), returns what is stored (``Claimed``, ``Stored``, ``Written``) and
raises what went wrong; the activation applies the result to itself and decides what
follows (``Activation.loaded``, ``lost_claim``, ``stale``):

- Activating claims ``{prefix}act/{type}/{key}`` create-if-absent under the kernel's
  lease. The claim's create revision is the activation's fencing token: every state
  write and event append also requires the claim to still be at that revision, so an
  activation whose lease lapsed (its kernel paused or partitioned) gets ``Fenced`` and
  cannot overwrite its successor; it then deactivates. A write that was applied and
  then found its claim lost returns ``Written(owned=False)``: it is saved, and the
  activation deactivates all the same.
- ``save`` is a compare-and-swap on the state key's revision as last read; on a lost
  race it raises ``NotWritten`` carrying a ``Conflict`` and the state stored now, which
  the activation adopts before it raises the ``Conflict`` to the agent. An ``emit``
  that finds its sequence number taken raises ``Conflict``; the activation reloads.
- ``load`` is the one reading path: the state key decoded by ``StateSpec.decode`` for
  plain types, the latest snapshot plus the events after it for event-sourced ones.
  Activation, ``Agent.reload``, the reload after an unknown outcome and the catch-up
  after a lost append all take it; ``Kernel.replica`` decodes with ``StateSpec.decode``.

Writes whose outcome is unknown. When the backend raises ``OutcomeUnknown`` (etcd lost
the answer to a write, e.g. in a leader failover), the same conditional write is sent
once more (its compares make the two attempts exclusive: at most one applies). That
settles the first attempt: a write that etcd commits is ordered after every entry
already in its leader's log, so the first attempt was applied before it (the second
then finds its compare false and reads what the first wrote), or is not in that log
and will not be committed, unless it is still in transit to the leader. A re-read
would settle less: a linearizable read does not wait for a proposal already in the
leader's log, which can apply after the read said "not applied". If the second attempt
fails too, the caller gets ``OutcomeUnknown`` (never a plain ``Unavailable``, which
would say "certainly not applied") and the activation marks itself ``stale``: it
reloads its state, with a linearizable read, before its next message, so that message
sees the write if it was applied and its next write does not conflict with it. A lost
write that applies later still (the rare case above) makes the next write fail its
compare: ``Conflict``, with the state stored now (an ``emit``'s reloads); nothing is
overwritten blindly. A second attempt
of a ``save`` that finds the state changed by someone else cannot tell whether the
first applied before that: ``NotWritten`` carries an ``OutcomeUnknown`` and the state
stored now (adopted, so no reload is needed).

The lease, the claims and the claims whose outcome stays unknown (orphans) are kept by
``Claims`` (``kerna._persistence_claims``); the state reads and writes are here.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from kerna.state import StateBackend, connect
from kerna.state._eventlog import EventLog, EventSourcing
from kerna.state._layout import Layout
from kerna.state._types import Compare, Get, KeyValue, Put

from ._errors import (
    Conflict,
    DecodeError,
    Fenced,
    OutcomeUnknown,
    StateError,
    Unavailable,
    ValueTooLarge,
)
from ._persistence_claims import Claims, again

if TYPE_CHECKING:
    from ._ids import AgentId

__all__ = ["Claimed", "NotWritten", "Persistence", "StateSpec", "Stored", "Written"]


class StateSpec:
    """How one agent type stores its state (built at registration)."""

    __slots__ = ("decoder", "encoder", "initial", "sourcing", "state_type")

    def __init__(
        self, state_type: type[Any], initial: Any, sourcing: EventSourcing[Any] | None
    ) -> None:
        self.state_type = state_type
        self.initial = initial
        self.sourcing = sourcing
        self.encoder = msgspec.msgpack.Encoder()
        self.decoder = msgspec.msgpack.Decoder(state_type)

    def decode(self, data: bytes, where: str) -> Any:
        """The state in a value of the agent's state key: the state itself, or for an
        event-sourced type the state of its snapshot (``where`` names the agent).

        Raises:
            DecodeError: the value does not decode as the state type (or a snapshot).
        """
        if self.sourcing is not None:
            return self.sourcing.decode_snapshot(data, where)[0]
        try:
            return self.decoder.decode(data)
        except msgspec.MsgspecError as exc:
            raise DecodeError(
                f"{where}: the stored state does not decode as {self.state_type.__qualname__}:"
                f" {exc}"
            ) from exc


class Stored(msgspec.Struct, frozen=True, gc=False):
    """An agent's state as stored: what a load read or a write wrote.

    Attributes:
        state: the state.
        revision: plain types: the state key's revision it was read or written at (0:
            nothing stored yet); the next save compares against it.
        seq: event-sourced types: the last event sequence number folded into it.
    """

    state: Any
    revision: int = 0
    seq: int = 0


class Written(msgspec.Struct, frozen=True, gc=False):
    """A write that was applied: ``stored`` is what it wrote.

    ``owned`` is False when the write applied and then its claim was found lost (a
    second attempt of a write whose first outcome was unknown): the agent is saved,
    and the activation deactivates (it no longer owns the agent).
    """

    stored: Stored
    owned: bool = True


class Claimed(msgspec.Struct, frozen=True, gc=False):
    """An activation's claim (``token``: its fencing token) and the state it loaded."""

    token: int
    stored: Stored


class NotWritten(Exception):
    """A save that did not apply, or may not have, whose answer showed what is stored.

    Internal, between ``Persistence.save`` and the activation, which adopts ``stored``,
    deactivates unless ``owned``, then raises ``error`` to the agent: a ``Conflict``
    (the state changed since it was read) or an ``OutcomeUnknown`` (a second attempt
    found it changed since: the first may have applied before that).
    """

    def __init__(self, error: StateError, stored: Stored, *, owned: bool = True) -> None:
        super().__init__(str(error))
        self.error = error
        self.stored = stored
        self.owned = owned


class Persistence:
    """The kernel's link to its state backend (see the module docstring)."""

    def __init__(
        self,
        backend: StateBackend,
        *,
        owned: bool,
        prefix: str,
        lease_ttl: float,
        node_id: str | None = None,
    ) -> None:
        self.backend = backend
        self.owned = owned  # close the backend on stop only if the kernel opened it
        self.layout = Layout(prefix)
        self.claims = Claims(backend, self.layout, lease_ttl, node_id)

    @classmethod
    async def open(
        cls,
        state: str | StateBackend,
        *,
        prefix: str,
        lease_ttl: float,
        node_id: str | None = None,
    ) -> Persistence:
        if isinstance(state, StateBackend):
            return cls(state, owned=False, prefix=prefix, lease_ttl=lease_ttl, node_id=node_id)
        backend = await connect(state)
        return cls(backend, owned=True, prefix=prefix, lease_ttl=lease_ttl, node_id=node_id)

    async def close(self) -> None:
        """Release every claim at once (revoke the lease) and close an owned backend."""
        try:
            await self.claims.close()
        finally:
            if self.owned:
                await self.backend.aclose()

    # -- the kernel's lease and claims ----------------------------------------------------

    @property
    def lease(self) -> int:
        """The id of the lease that holds this kernel's claims (0: none yet)."""
        return self.claims.lease

    def on_lease_lost(self, callback: Callable[[], object]) -> None:
        """Have ``callback()`` called once for each lease of this kernel that is lost
        (``Claims.on_lease_lost``): the stateful activations must stop serving."""
        self.claims.on_lease_lost(callback)

    # -- activation ------------------------------------------------------------------------

    async def activate(
        self, agent: AgentId, spec: StateSpec | None, *, deadline: float | None = None
    ) -> Claimed:
        """Claim the agent for this kernel and load its state (the claim is given up
        again if the load fails); with no ``spec`` (a volatile agent whose cluster
        placement is ``"directory"``), only claim it.

        A plain state is read in the claim's own transaction (``Claims.claim``'s
        ``read``): an activation costs one store round trip. An event-sourced one loads
        its snapshot and the events after it once claimed (``load``). A kernel whose
        lease was lost waits for a new one to claim under, not past ``deadline`` (the
        caller's: ``Claims.claim``).

        Raises:
            OwnedElsewhere: another kernel holds the agent.
            LeaseLost: no lease could be kept to claim it under.
            OutcomeUnknown, Unavailable: the backend could not be reached.
            DecodeError: the stored state or an event does not decode.
        """
        if spec is None:  # a volatile agent placed through the directory: the claim only
            token, _ = await self.claims.claim(agent.type, agent.key, deadline=deadline)
            return Claimed(token, Stored(None))
        read = self.layout.state(agent.type, agent.key) if spec.sourcing is None else None
        token, kv = await self.claims.claim(agent.type, agent.key, read=read, deadline=deadline)
        try:
            stored = await self.load(agent, spec) if read is None else self._stored(agent, spec, kv)
        except BaseException:
            await self.release(agent, token)
            raise
        return Claimed(token, stored)

    async def release(self, agent: AgentId, token: int) -> None:
        """Give up the claim whose fencing token is ``token`` (only if it is still
        that claim); best effort: a claim that cannot be deleted goes with the kernel's
        lease."""
        await self.claims.release(agent.type, agent.key, token)

    # -- reading the state -----------------------------------------------------------------

    async def load(self, agent: AgentId, spec: StateSpec, *, linearizable: bool = True) -> Stored:
        """The agent's stored state (its initial state if none is stored): the state key
        for plain types (a quorum read when ``linearizable``); the latest snapshot plus
        the events after it for event-sourced types (always from the quorum).

        Raises:
            Unavailable: the backend could not be reached.
            DecodeError: the stored state or an event does not decode.
        """
        sourcing = spec.sourcing
        if sourcing is not None:
            state, seq = await self._log(agent, sourcing).load()
            return Stored(state, seq=seq)
        key = self.layout.state(agent.type, agent.key)
        return self._stored(agent, spec, await self.backend.get(key, linearizable=linearizable))

    @staticmethod
    def _stored(agent: AgentId, spec: StateSpec, kv: KeyValue | None) -> Stored:
        """A plain state key's entry (None: absent) as a ``Stored``."""
        if kv is None:
            return Stored(spec.initial())
        return Stored(spec.decode(kv.value, f"{agent} at {kv.key!r}"), kv.mod_revision)

    @staticmethod
    def state_decoder(spec: StateSpec, type_name: str) -> Callable[[bytes], Any]:
        """Decodes a stored state value of ``type_name`` (an event-sourced type stores
        a snapshot there) for ``Kernel.replica``: ``StateSpec.decode``, as ``load``."""
        return functools.partial(spec.decode, where=type_name)

    def _log(self, agent: AgentId, sourcing: EventSourcing[Any]) -> EventLog[Any]:
        return EventLog(self.backend, sourcing, agent.type, agent.key, layout=self.layout)

    # -- plain state -------------------------------------------------------------------------

    async def save(
        self, agent: AgentId, spec: StateSpec, new_state: Any, *, token: int, revision: int
    ) -> Written:
        """Compare-and-swap ``new_state`` over ``revision``, the state key's revision as
        last read, under the claim whose fencing token is ``token``.

        Raises:
            NotWritten: the state changed since it was read (``Conflict``), or a second
                attempt found it changed and cannot tell (``OutcomeUnknown``); it
                carries the state stored now.
            Fenced: the claim is lost (or ``token`` is 0); not saved.
            OutcomeUnknown: neither attempt could be confirmed: it may have been applied.
            Unavailable: the backend could not be reached; not saved.
            ValueTooLarge: the state is over the store's size limit; not saved.
            TypeError: ``new_state`` is not of the declared state type.
        """
        if not token:  # fenced: a compare on token 0 would mean "no claim exists"
            raise Fenced(f"{agent}: this activation no longer owns the agent; state not saved")
        if type(new_state) is not spec.state_type:
            raise TypeError(
                f"{agent}: save() takes a {spec.state_type.__qualname__}, "
                f"got {type(new_state).__qualname__}"
            )
        state_key = self.layout.state(agent.type, agent.key)
        claim_key = self.layout.claim(agent.type, agent.key)
        data = spec.encoder.encode(new_state)
        attempt = functools.partial(
            self.backend.txn,
            [Compare.created_at(claim_key, token), Compare.mod_is(state_key, revision)],
            [Put(state_key, data)],
            [Get(claim_key), Get(state_key)],
        )
        first: Unavailable | None = None
        try:
            result = await attempt()
        except ValueTooLarge as exc:
            raise _too_large(agent, f"a state of {len(data)} bytes", exc) from exc
        except Unavailable as exc:
            if not exc.ambiguous:
                raise
            first = exc
            result = await again(f"{agent}: save", attempt, exc)
        if result.succeeded:
            return Written(Stored(new_state, result.revision))
        claim, current = result.gets
        owned = claim is not None and claim.create_revision == token
        rev = 0 if current is None else current.mod_revision
        if first is not None and current is not None and current.value == data and rev > revision:
            # The first attempt was applied (the second found the state it wrote).
            return Written(Stored(new_state, rev), owned)
        if first is not None and rev != revision:
            # Someone else wrote since: the first attempt may have applied before that.
            unknown = OutcomeUnknown(
                f"{agent}: save may or may not have been applied ({first}); the state has"
                f" changed since (now at {rev})"
            )
            raise NotWritten(unknown, self._stored(agent, spec, current), owned=owned) from first
        if not owned:
            raise Fenced(f"{agent}: this activation no longer owns the agent; state not saved")
        conflict = Conflict(f"{agent}: state changed since it was read (now at {rev})")
        raise NotWritten(conflict, self._stored(agent, spec, current))

    # -- event-sourced state ---------------------------------------------------------------

    async def emit(
        self,
        agent: AgentId,
        spec: StateSpec,
        events: tuple[Any, ...],
        *,
        state: Any,
        seq: int,
        token: int,
        correlation: tuple[int, int],
    ) -> Written:
        """Append ``events`` after ``seq``, the last sequence number folded into
        ``state``, under the claim whose fencing token is ``token``; what it wrote is
        ``state`` with the events folded in.

        Raises:
            Conflict: someone appended first (reload to catch up).
            Fenced, OutcomeUnknown, Unavailable, ValueTooLarge: as for ``save``.
            TypeError: an event is not a msgspec Struct.
        """
        sourcing = spec.sourcing
        assert sourcing is not None
        if not token:  # fenced: a compare on token 0 would mean "no claim exists"
            raise Fenced(f"{agent}: this activation no longer owns the agent; not appended")
        for event in events:
            if not isinstance(event, msgspec.Struct):
                raise TypeError(f"{agent}: events must be msgspec Structs, got {event!r}")
        for event in events:
            state = sourcing.apply(state, event)
        eventlog = self._log(agent, sourcing)
        claim_key = self.layout.claim(agent.type, agent.key)
        attempt = functools.partial(
            eventlog.append,
            events,
            expected_seq=seq,
            state_after=state,
            fence=Compare.created_at(claim_key, token),
            correlation_id=correlation[0],
            causation_id=correlation[1],
        )
        try:
            try:
                return Written(Stored(state, seq=await attempt()))
            except Unavailable as exc:
                if not exc.ambiguous:
                    raise
                owned = await self._append_again(
                    agent, eventlog, attempt, exc, events, seq, correlation
                )
                return Written(Stored(state, seq=seq + len(events)), owned)
        except ValueTooLarge as exc:
            what = f"an append of {len(events)} event{'s' if len(events) > 1 else ''}"
            raise _too_large(agent, what, exc) from exc

    async def _append_again(
        self,
        agent: AgentId,
        eventlog: EventLog[Any],
        attempt: Callable[[], Awaitable[int]],
        first: Unavailable,
        events: tuple[Any, ...],
        seq: int,
        correlation: tuple[int, int],
    ) -> bool:
        """The second attempt of an append after ``seq`` whose outcome is unknown;
        whether the claim is still ours when either attempt was applied.

        Raises:
            OutcomeUnknown: neither attempt could be confirmed.
            Conflict, Fenced: the sequence number or the claim is someone else's, and the
                first attempt was not applied.
        """
        try:
            await again(f"{agent}: emit", attempt, first)
        except (Conflict, Fenced) as taken:
            # The first attempt may be what took the sequence number: read it back.
            try:
                kv = await self.backend.get(self.layout.log(agent.type, agent.key, seq + 1))
            except Unavailable as second:
                raise OutcomeUnknown(
                    f"{agent}: emit may or may not have been applied ({first}); it could"
                    f" not be confirmed either ({second})"
                ) from second
            if kv is None:
                raise
            record = eventlog.sourcing.decode_record(kv.value, str(agent))
            if (record.event, record.correlation_id, record.causation_id) != (
                events[0],
                *correlation,
            ):
                raise
            return not isinstance(taken, Fenced)  # applied (then the claim was lost?)
        return True


def _too_large(agent: AgentId, what: str, exc: ValueTooLarge) -> ValueTooLarge:
    return ValueTooLarge(f"{agent}: {what} is too large for the store: {exc}", exc.size, exc.limit)
