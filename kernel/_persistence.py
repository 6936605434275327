"""Agent state on a state backend: activation claims, loading, compare-and-swap saves,
event appends, and fencing.

One ``Persistence`` per kernel. It holds the kernel's lease (a ``KeptLease``, refreshed
in the background) and, per stateful activation, writes through the backend:

- Activating claims ``{prefix}act/{type}/{key}`` create-if-absent under the kernel's
  lease. The claim's create revision is the activation's fencing token: every state
  write and event append also requires the claim to still be at that revision, so an
  activation whose lease lapsed (its kernel paused or partitioned) gets ``Fenced`` and
  cannot overwrite its successor.
- ``save`` is a compare-and-swap on the state key's revision as last read; on a lost
  race the activation reloads the state and ``Conflict`` is raised.
- A write whose outcome is unknown (the backend raised ``Unavailable`` with
  ``ambiguous=True``) is re-read before anything is reported: if the stored bytes are the
  ones written, it succeeded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any

import msgspec

from kerna.state import KeptLease, StateBackend, connect
from kerna.state._eventlog import EventLog, EventSourcing
from kerna.state._layout import Layout
from kerna.state._types import Compare, Delete, Get, Put

from ._errors import Conflict, DecodeError, Fenced, LeaseLost, OwnedElsewhere, Unavailable

if TYPE_CHECKING:
    from ._activation import Activation

__all__ = ["Claim", "Persistence", "StateSpec"]

log = logging.getLogger("kerna.state")


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

    @classmethod
    async def open(cls, state: str | StateBackend, *, prefix: str, lease_ttl: float) -> Persistence:
        if isinstance(state, StateBackend):
            return cls(state, owned=False, prefix=prefix, lease_ttl=lease_ttl)
        backend = await connect(state)
        return cls(backend, owned=True, prefix=prefix, lease_ttl=lease_ttl)

    async def close(self) -> None:
        """Release every claim at once (revoke the lease) and close an owned backend."""
        try:
            if self._lease is not None:
                await self._lease.revoke()
        finally:
            self._lease = None
            if self.owned:
                await self.backend.aclose()

    # -- the kernel's lease --------------------------------------------------------------

    @property
    def lease(self) -> int:
        """The id of the lease that holds this kernel's claims (0: none yet)."""
        lease = self._lease
        return 0 if lease is None or lease.lost.is_set() else lease.id

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
                self._lease = KeptLease(self.backend, self.lease_ttl)
                await self._lease.grant()
            return self.lease

    # -- activation ------------------------------------------------------------------------

    async def activate(self, act: Activation, spec: StateSpec) -> None:
        """Claim the agent for this kernel and load its state into the activation."""
        atype_name, key = act.id.type, act.id.key
        act.token = await self._claim(atype_name, key)
        try:
            if spec.sourcing is not None:
                state, seq = await EventLog(
                    self.backend, spec.sourcing, atype_name, key, layout=self.layout
                ).load()
                act.state, act.seq = state, seq
            else:
                await self.load(act, spec)
        except BaseException:
            await self.release(act)
            raise

    async def _claim(self, agent_type: str, key: str) -> int:
        claim_key = self.layout.claim(agent_type, key)
        for _ in range(2):
            lease = await self._ensure_lease()
            value = self._claim_encoder.encode(Claim(self.node_id, lease, time.time()))
            try:
                result = await self.backend.txn(
                    [Compare.absent(claim_key)], [Put(claim_key, value, lease)], [Get(claim_key)]
                )
            except LeaseLost:
                if self._lease is not None:
                    self._lease.lost.set()  # expired under us: take a new one, try again
                continue
            except Unavailable as exc:
                if not exc.ambiguous:
                    raise
                current = await self.backend.get(claim_key)
                if current is None or current.value != value:
                    raise
                return current.create_revision
            if result.succeeded:
                return result.revision
            current = result.gets[0]
            holder = self._holder(current)
            if holder is not None and holder.node == self.node_id and holder.lease == lease:
                assert current is not None
                return current.create_revision  # our own claim, not yet released
            raise OwnedElsewhere(
                f"{agent_type}/{key} is active elsewhere "
                f"(claim {claim_key!r} held by {holder.node if holder else 'unknown'})"
            )
        raise LeaseLost(f"could not keep a lease to claim {agent_type}/{key}")

    def _holder(self, kv: Any) -> Claim | None:
        if kv is None:
            return None
        try:
            claim: Claim = self._claim_decoder.decode(kv.value)
        except msgspec.MsgspecError:
            return None
        return claim

    async def release(self, act: Activation) -> None:
        """Give up the claim (only if it is still ours)."""
        token = act.token
        if not token:
            return
        act.token = 0
        claim_key = self.layout.claim(act.id.type, act.id.key)
        try:
            await self.backend.txn([Compare.created_at(claim_key, token)], [Delete(claim_key)])
        except Unavailable as exc:
            log.warning("could not release %s (it expires with the lease): %s", act.id, exc)

    # -- plain state -------------------------------------------------------------------------

    async def load(self, act: Activation, spec: StateSpec, *, linearizable: bool = True) -> None:
        key = self.layout.state(act.id.type, act.id.key)
        kv = await self.backend.get(key, linearizable=linearizable)
        if kv is None:
            act.state, act.state_rev = spec.initial(), 0
            return
        act.state, act.state_rev = self._decode(spec, key, kv.value), kv.mod_revision

    def _decode(self, spec: StateSpec, key: str, data: bytes) -> Any:
        try:
            return spec.decoder.decode(data)
        except msgspec.MsgspecError as exc:
            raise DecodeError(
                f"state at {key!r} does not decode as {spec.state_type.__qualname__}: {exc}"
            ) from exc

    async def save(self, act: Activation, spec: StateSpec, new_state: Any) -> None:
        """Compare-and-swap ``new_state`` over the revision the activation read."""
        if type(new_state) is not spec.state_type:
            raise TypeError(
                f"{act.id}: save() takes a {spec.state_type.__qualname__}, "
                f"got {type(new_state).__qualname__}"
            )
        state_key = self.layout.state(act.id.type, act.id.key)
        claim_key = self.layout.claim(act.id.type, act.id.key)
        data = spec.encoder.encode(new_state)
        expected = act.state_rev
        try:
            result = await self.backend.txn(
                [Compare.created_at(claim_key, act.token), Compare.mod_is(state_key, expected)],
                [Put(state_key, data)],
                [Get(claim_key), Get(state_key)],
            )
        except Unavailable as exc:
            if not exc.ambiguous:
                raise
            current = await self.backend.get(state_key)  # may raise Unavailable: unknown
            if current is not None and current.value == data and current.mod_revision > expected:
                act.state, act.state_rev = new_state, current.mod_revision
                return
            raise
        if result.succeeded:
            act.state, act.state_rev = new_state, result.revision
            return
        claim, current = result.gets
        if claim is None or claim.create_revision != act.token:
            act.token = 0  # the claim is someone else's now: never release it
            act.request_deactivation()
            raise Fenced(f"{act.id}: this activation no longer owns the agent; state not saved")
        if current is None:
            act.state, act.state_rev = spec.initial(), 0
        else:
            act.state = self._decode(spec, state_key, current.value)
            act.state_rev = current.mod_revision
        raise Conflict(f"{act.id}: state changed since it was read (now at {act.state_rev})")

    # -- event-sourced state ---------------------------------------------------------------

    async def emit(
        self,
        act: Activation,
        spec: StateSpec,
        events: tuple[Any, ...],
        correlation: tuple[int, int],
    ) -> None:
        sourcing = spec.sourcing
        assert sourcing is not None
        for event in events:
            if not isinstance(event, msgspec.Struct):
                raise TypeError(f"{act.id}: events must be msgspec Structs, got {event!r}")
        state = act.state
        for event in events:
            state = sourcing.apply(state, event)
        eventlog = EventLog(self.backend, sourcing, act.id.type, act.id.key, layout=self.layout)
        claim_key = self.layout.claim(act.id.type, act.id.key)
        expected = act.seq
        try:
            act.seq = await eventlog.append(
                events,
                expected_seq=expected,
                state_after=state,
                fence=Compare.created_at(claim_key, act.token),
                correlation_id=correlation[0],
                causation_id=correlation[1],
            )
        except Conflict:
            act.state, act.seq = await eventlog.load()  # someone appended: catch up
            raise
        except Fenced:
            act.token = 0  # the claim is someone else's now: never release it
            act.request_deactivation()
            raise
        except Unavailable as exc:
            if not exc.ambiguous:
                raise
            first = await self.backend.get(self.layout.log(act.id.type, act.id.key, expected + 1))
            if first is None:
                raise
            record = sourcing.decode_record(first.value, str(act.id))
            if (record.event, record.correlation_id, record.causation_id) != (
                events[0],
                *correlation,
            ):
                raise
            act.seq = expected + len(events)
        act.state = state
