"""Agent state on a state backend: activation claims, loading, compare-and-swap saves,
event appends, and fencing.

One ``Persistence`` per kernel. It holds the kernel's lease (a ``KeptLease``, refreshed
in the background) and writes through the backend for the stateful activations. It
knows nothing of activations: each call takes the agent's id, its ``StateSpec`` and what
the activation last read (fencing token, revision or sequence number), returns what is
stored (``Stored``, ``Written``) and raises what went wrong; the activation applies the
result to itself and decides what follows (``Activation.loaded``, ``lost_claim``):

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
compare: ``Conflict``, which reloads; nothing is overwritten blindly. A second attempt
of a ``save`` that finds the state changed by someone else cannot tell whether the
first applied before that: ``NotWritten`` carries an ``OutcomeUnknown`` and the state
stored now (adopted, so no reload is needed).

A claim whose outcome stays unknown may exist under the kernel's lease with no
activation knowing of it, keeping other kernels out. It is remembered as an orphan and
deleted, by comparing its value (unique: node, lease and time), from a background task
until that succeeds; an activation of the same agent here first takes it off that
list, then finds the claim as its own and uses it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from kerna.state import KeptLease, StateBackend, connect
from kerna.state._eventlog import EventLog, EventSourcing
from kerna.state._layout import Layout
from kerna.state._tasks import cancel_and_wait
from kerna.state._types import Compare, Delete, Get, KeyValue, Put

from ._errors import (
    ConfigError,
    Conflict,
    DecodeError,
    Fenced,
    LeaseLost,
    OutcomeUnknown,
    OwnedElsewhere,
    StateError,
    Unavailable,
    ValueTooLarge,
)

if TYPE_CHECKING:
    from ._ids import AgentId

__all__ = ["Claim", "Claimed", "NotWritten", "Persistence", "StateSpec", "Stored", "Written"]

log = logging.getLogger("kerna.state")
T = TypeVar("T")


class Claim(msgspec.Struct, frozen=True):
    """The value of an activation claim: who holds the agent."""

    node: str
    lease: int
    since: float


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
    ) -> None:
        self.backend = backend
        self.owned = owned  # close the backend on stop only if the kernel opened it
        self.layout = Layout(prefix)
        self.lease_ttl = lease_ttl
        self.node_id = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._lease: KeptLease | None = None
        self._lease_ready: asyncio.Lock = asyncio.Lock()
        self._claim_encoder = msgspec.msgpack.Encoder()
        self._claim_decoder = msgspec.msgpack.Decoder(Claim)
        # Claims that may exist under our lease with no activation knowing of them
        # (claim key -> the value written); the janitor deletes them. The lock keeps a
        # deletion and an activation of the same agent apart.
        self._orphans: dict[str, bytes] = {}
        self._orphans_lock = asyncio.Lock()
        self._janitor: asyncio.Task[None] | None = None
        self._lease_lost_callbacks: list[Callable[[], object]] = []

    @classmethod
    async def open(cls, state: str | StateBackend, *, prefix: str, lease_ttl: float) -> Persistence:
        if isinstance(state, StateBackend):
            return cls(state, owned=False, prefix=prefix, lease_ttl=lease_ttl)
        backend = await connect(state)
        return cls(backend, owned=True, prefix=prefix, lease_ttl=lease_ttl)

    async def close(self) -> None:
        """Release every claim at once (revoke the lease) and close an owned backend."""
        try:
            await cancel_and_wait(self._janitor)  # the lease's end deletes the orphans
            if self._lease is not None:
                await self._lease.revoke()
        finally:
            self._janitor = None
            self._orphans.clear()
            self._lease = None
            if self.owned:
                await self.backend.aclose()

    # -- the kernel's lease --------------------------------------------------------------

    @property
    def lease(self) -> int:
        """The id of the lease that holds this kernel's claims (0: none yet)."""
        lease = self._lease
        return 0 if lease is None or lease.lost.is_set() else lease.id

    def on_lease_lost(self, callback: Callable[[], object]) -> None:
        """Have ``callback()`` called, on the event loop, once for each lease of this
        kernel that is lost.

        A lease is lost when the store says it is gone, or when no keepalive has
        succeeded for 90% of ``lease_ttl`` (see ``KeptLease``): from then on another
        kernel may claim the agents active here, so they must stop serving. What the
        callback raises is logged. The next claim takes a new lease.
        """
        self._lease_lost_callbacks.append(callback)

    def _lease_lost(self) -> None:
        for callback in list(self._lease_lost_callbacks):
            try:
                callback()
            except Exception:
                log.exception("lease-lost callback %r raised", callback)

    async def _ensure_lease(self) -> int:
        """The kernel's kept-alive lease, granted on first use and again after a loss.

        A lost lease (expired during a pause or partition) took every claim made under
        it: the activations holding them are fenced on their next write.
        """
        async with self._lease_ready:
            if not self.lease:
                if self._lease is not None:
                    log.error(
                        "lease %d lost: stateful activations on it are fenced", self._lease.id
                    )
                    await self._lease.revoke()
                    self._orphans.clear()  # they went with the lease
                self._lease = KeptLease(self.backend, self.lease_ttl, on_lost=self._lease_lost)
                await self._lease.grant()
            return self.lease

    # -- writes whose outcome is unknown ---------------------------------------------------

    async def _again(self, what: str, attempt: Callable[[], Awaitable[T]], first: Unavailable) -> T:
        """The second attempt of a write whose first attempt's outcome is unknown.

        Raises:
            OutcomeUnknown: the second attempt failed too (it chains that failure).
        """
        try:
            return await attempt()
        except Unavailable as again:
            raise OutcomeUnknown(
                f"{what} may or may not have been applied ({first}); it could not be"
                f" confirmed either ({again})"
            ) from again

    # -- activation ------------------------------------------------------------------------

    async def activate(self, agent: AgentId, spec: StateSpec) -> Claimed:
        """Claim the agent for this kernel and load its state (the claim is given up
        again if the load fails).

        Raises:
            OwnedElsewhere: another kernel holds the agent.
            LeaseLost: no lease could be kept to claim it under.
            OutcomeUnknown, Unavailable: the backend could not be reached.
            DecodeError: the stored state or an event does not decode.
        """
        token = await self._claim(agent.type, agent.key)
        try:
            stored = await self.load(agent, spec)
        except BaseException:
            await self.release(agent, token)
            raise
        return Claimed(token, stored)

    async def _claim(self, agent_type: str, key: str) -> int:
        claim_key = self.layout.claim(agent_type, key)
        if claim_key in self._orphans:
            async with self._orphans_lock:  # no deletion of it is under way after this
                self._orphans.pop(claim_key, None)  # if it exists, it is ours: used below
        for _ in range(3):
            lease = await self._ensure_lease()
            kept = self._lease  # the KeptLease of ``lease`` (a later loss replaces it)
            value = self._claim_encoder.encode(Claim(self.node_id, lease, time.time()))
            attempt = functools.partial(
                self.backend.txn,
                [Compare.absent(claim_key)],
                [Put(claim_key, value, lease)],
                [Get(claim_key)],
            )
            try:
                try:
                    result = await attempt()
                except Unavailable as exc:
                    if not exc.ambiguous:
                        raise
                    try:
                        result = await self._again(f"claim {claim_key!r}", attempt, exc)
                    except OutcomeUnknown:
                        self._orphan(claim_key, value)
                        raise
            except LeaseLost:
                if kept is not None:  # that lease, not one a concurrent claim took since
                    kept.mark_lost("a claim under it was refused")
                continue  # under a new lease
            current = None if result.succeeded else result.gets[0]
            holder = self._holder(current)
            if result.succeeded:
                token = result.revision
            elif holder is not None and holder.node == self.node_id and holder.lease == lease:
                assert current is not None
                # Our own claim: not yet released, or the first attempt above applied.
                token = current.create_revision
            else:
                raise OwnedElsewhere(
                    f"{agent_type}/{key} is active elsewhere "
                    f"(claim {claim_key!r} held by {holder.node if holder else 'unknown'})"
                )
            if kept is None or not kept.lost.is_set():
                return token
            # The lease was declared lost while the claim was on its way (the activations
            # it fenced did not include this one): give the claim up, claim anew.
            await self._delete_claim(claim_key, token)
        raise LeaseLost(f"could not keep a lease to claim {agent_type}/{key}")

    def _holder(self, kv: Any) -> Claim | None:
        if kv is None:
            return None
        try:
            claim: Claim = self._claim_decoder.decode(kv.value)
        except msgspec.MsgspecError:
            return None
        return claim

    def _orphan(self, claim_key: str, value: bytes) -> None:
        """Remember a claim that may exist with nobody using it; the janitor deletes it."""
        self._orphans[claim_key] = value
        if self._janitor is None or self._janitor.done():
            self._janitor = asyncio.get_running_loop().create_task(
                self._clean_orphans(), name="kerna.state orphaned claims"
            )

    async def _clean_orphans(self) -> None:
        """Delete every orphaned claim (if still there with the value written), retrying
        while the backend cannot be reached; ends when none is left."""
        delay = min(1.0, self.lease_ttl / 3)
        while self._orphans:
            async with self._orphans_lock:
                for claim_key, value in list(self._orphans.items()):
                    try:
                        await self.backend.txn(
                            [Compare(claim_key, "value", "==", value)], [Delete(claim_key)]
                        )
                    except Unavailable as exc:  # deleting it again is harmless: retry
                        log.info("could not delete orphaned claim %r yet: %s", claim_key, exc)
                        continue
                    except (StateError, ConfigError) as exc:  # failed or closed for good
                        log.warning("orphaned claims left to expire with the lease: %s", exc)
                        self._orphans.clear()
                        return
                    if self._orphans.get(claim_key) == value:
                        del self._orphans[claim_key]
            if self._orphans:
                await asyncio.sleep(delay)

    async def release(self, agent: AgentId, token: int) -> None:
        """Give up the claim whose fencing token is ``token`` (only if it is still
        that claim); best effort: a claim that cannot be deleted goes with the kernel's
        lease."""
        await self._delete_claim(self.layout.claim(agent.type, agent.key), token)

    async def _delete_claim(self, claim_key: str, token: int) -> None:
        try:
            await self.backend.txn([Compare.created_at(claim_key, token)], [Delete(claim_key)])
        except (StateError, ConfigError) as exc:  # unreachable, failed or closed store
            log.warning("could not release %r (it expires with the lease): %s", claim_key, exc)

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
            result = await self._again(f"{agent}: save", attempt, exc)
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
            await self._again(f"{agent}: emit", attempt, first)
        except (Conflict, Fenced) as taken:
            # The first attempt may be what took the sequence number: read it back.
            try:
                kv = await self.backend.get(self.layout.log(agent.type, agent.key, seq + 1))
            except Unavailable as again:
                raise OutcomeUnknown(
                    f"{agent}: emit may or may not have been applied ({first}); it could"
                    f" not be confirmed either ({again})"
                ) from again
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
