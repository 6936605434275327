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
would say "certainly not applied") and the activation is marked ``stale``: it reloads
its state, with a linearizable read, before its next message, so that message sees the
write if it was applied and its next write does not conflict with it. A lost write
that applies later still (the rare case above) makes the next write fail its compare:
``Conflict``, which reloads; nothing is overwritten blindly.

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
from kerna.state._types import Compare, Delete, Get, Put

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
    from ._activation import Activation

__all__ = ["Claim", "Persistence", "StateSpec"]

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

    async def release(self, act: Activation) -> None:
        """Give up the claim (only if it is still ours); best effort: a claim that cannot
        be deleted goes with the kernel's lease."""
        token = act.token
        if not token:
            return
        act.token = 0
        await self._delete_claim(self.layout.claim(act.id.type, act.id.key), token)

    async def _delete_claim(self, claim_key: str, token: int) -> None:
        try:
            await self.backend.txn([Compare.created_at(claim_key, token)], [Delete(claim_key)])
        except (StateError, ConfigError) as exc:  # unreachable, failed or closed store
            log.warning("could not release %r (it expires with the lease): %s", claim_key, exc)

    # -- reading the state -----------------------------------------------------------------

    async def load(self, act: Activation, spec: StateSpec, *, linearizable: bool = True) -> None:
        key = self.layout.state(act.id.type, act.id.key)
        self._set_state(act, spec, key, await self.backend.get(key, linearizable=linearizable))

    async def reload(self, act: Activation, *, linearizable: bool = True) -> None:
        """Re-read the activation's state (``Agent.reload``, and after a write whose
        outcome is unknown); clears ``act.stale``. Event-sourced state is always read
        from the quorum (snapshot and log).

        Raises:
            Unavailable: the backend could not be reached (the activation stays stale).
            DecodeError: the stored state or an event does not decode.
        """
        spec = act.atype.state_spec
        assert spec is not None
        if spec.sourcing is None:
            await self.load(act, spec, linearizable=linearizable)
            return
        log_ = EventLog(self.backend, spec.sourcing, act.id.type, act.id.key, layout=self.layout)
        act.state, act.seq = await log_.load()
        act.stale = False

    @staticmethod
    def state_decoder(spec: StateSpec, type_name: str) -> Callable[[bytes], Any]:
        """Decodes a stored state value of ``type_name`` (an event-sourced type stores
        a snapshot there) for ``Kernel.replica``."""
        sourcing = spec.sourcing
        if sourcing is not None:
            return lambda data: sourcing.decode_snapshot(data, type_name)[0]
        decode: Callable[[bytes], Any] = spec.decoder.decode
        return decode

    def _decode(self, spec: StateSpec, key: str, data: bytes) -> Any:
        try:
            return spec.decoder.decode(data)
        except msgspec.MsgspecError as exc:
            raise DecodeError(
                f"state at {key!r} does not decode as {spec.state_type.__qualname__}: {exc}"
            ) from exc

    # -- plain state -------------------------------------------------------------------------

    async def save(self, act: Activation, spec: StateSpec, new_state: Any) -> None:
        """Compare-and-swap ``new_state`` over the revision the activation read.

        Raises:
            Conflict: the state changed since it was read (the activation holds it now).
            Fenced: the activation lost its claim (it deactivates); not saved.
            OutcomeUnknown: neither attempt could be confirmed: it may have been
                applied; the activation reloads before its next message.
            Unavailable: the backend could not be reached; not saved.
            ValueTooLarge: the state is over the store's size limit; not saved.
            TypeError: ``new_state`` is not of the declared state type.
        """
        if not act.token:  # fenced: a compare on token 0 would mean "no claim exists"
            raise Fenced(f"{act.id}: this activation no longer owns the agent; state not saved")
        if type(new_state) is not spec.state_type:
            raise TypeError(
                f"{act.id}: save() takes a {spec.state_type.__qualname__}, "
                f"got {type(new_state).__qualname__}"
            )
        state_key = self.layout.state(act.id.type, act.id.key)
        claim_key = self.layout.claim(act.id.type, act.id.key)
        data = spec.encoder.encode(new_state)
        expected = act.state_rev
        attempt = functools.partial(
            self.backend.txn,
            [Compare.created_at(claim_key, act.token), Compare.mod_is(state_key, expected)],
            [Put(state_key, data)],
            [Get(claim_key), Get(state_key)],
        )
        first: Unavailable | None = None
        try:
            result = await attempt()
        except ValueTooLarge as exc:
            raise self._too_large(act, f"a state of {len(data)} bytes", exc) from exc
        except Unavailable as exc:
            if not exc.ambiguous:
                raise
            first = exc
            try:
                result = await self._again(f"{act.id}: save", attempt, exc)
            except OutcomeUnknown:
                act.stale = True  # reload before the next message
                raise
        if result.succeeded:
            act.state, act.state_rev, act.stale = new_state, result.revision, False
            return
        claim, current = result.gets
        rev = 0 if current is None else current.mod_revision
        if first is not None and current is not None and current.value == data and rev > expected:
            # The first attempt was applied (the second found the state it wrote).
            act.state, act.state_rev, act.stale = new_state, rev, False
            if claim is None or claim.create_revision != act.token:
                self._fenced(act)  # applied, then the claim was lost: deactivate
            return
        if first is not None and rev != expected:
            # Someone else wrote since: the first attempt may have applied before that.
            self._set_state(act, spec, state_key, current)
            if claim is None or claim.create_revision != act.token:
                self._fenced(act)
            raise OutcomeUnknown(
                f"{act.id}: save may or may not have been applied ({first}); the state has"
                f" changed since (now at {rev})"
            ) from first
        if claim is None or claim.create_revision != act.token:
            self._fenced(act)
            raise Fenced(f"{act.id}: this activation no longer owns the agent; state not saved")
        self._set_state(act, spec, state_key, current)
        raise Conflict(f"{act.id}: state changed since it was read (now at {act.state_rev})")

    def _set_state(self, act: Activation, spec: StateSpec, key: str, kv: Any) -> None:
        if kv is None:
            act.state, act.state_rev = spec.initial(), 0
        else:
            act.state, act.state_rev = self._decode(spec, key, kv.value), kv.mod_revision
        act.stale = False

    @staticmethod
    def _too_large(act: Activation, what: str, exc: ValueTooLarge) -> ValueTooLarge:
        return ValueTooLarge(
            f"{act.id}: {what} is too large for the store: {exc}", exc.size, exc.limit
        )

    @staticmethod
    def _fenced(act: Activation) -> None:
        act.token = 0  # the claim is someone else's now: never release it
        act.request_deactivation()

    # -- event-sourced state ---------------------------------------------------------------

    async def emit(
        self,
        act: Activation,
        spec: StateSpec,
        events: tuple[Any, ...],
        correlation: tuple[int, int],
    ) -> None:
        """Append ``events`` after the activation's last sequence number and fold them
        into its state.

        Raises:
            Conflict: someone appended first (the activation caught up).
            Fenced, OutcomeUnknown, Unavailable, ValueTooLarge: as for ``save``.
            TypeError: an event is not a msgspec Struct.
        """
        sourcing = spec.sourcing
        assert sourcing is not None
        if not act.token:  # fenced: a compare on token 0 would mean "no claim exists"
            raise Fenced(f"{act.id}: this activation no longer owns the agent; not appended")
        for event in events:
            if not isinstance(event, msgspec.Struct):
                raise TypeError(f"{act.id}: events must be msgspec Structs, got {event!r}")
        state = act.state
        for event in events:
            state = sourcing.apply(state, event)
        eventlog = EventLog(self.backend, sourcing, act.id.type, act.id.key, layout=self.layout)
        claim_key = self.layout.claim(act.id.type, act.id.key)
        expected = act.seq
        attempt = functools.partial(
            eventlog.append,
            events,
            expected_seq=expected,
            state_after=state,
            fence=Compare.created_at(claim_key, act.token),
            correlation_id=correlation[0],
            causation_id=correlation[1],
        )
        try:
            try:
                act.seq = await attempt()
            except Unavailable as exc:
                if not exc.ambiguous:
                    raise
                act.seq = await self._append_again(act, eventlog, attempt, exc, events, correlation)
        except Conflict as exc:
            try:
                await self.reload(act)  # someone appended: catch up
            except Unavailable as again:
                act.stale = True
                raise exc from again
            raise
        except Fenced:
            self._fenced(act)
            raise
        except ValueTooLarge as exc:
            what = f"an append of {len(events)} event{'s' if len(events) > 1 else ''}"
            raise self._too_large(act, what, exc) from exc
        except OutcomeUnknown:
            act.stale = True  # reload before the next message
            raise
        act.state, act.stale = state, False

    async def _append_again(
        self,
        act: Activation,
        eventlog: EventLog[Any],
        attempt: Callable[[], Awaitable[int]],
        first: Unavailable,
        events: tuple[Any, ...],
        correlation: tuple[int, int],
    ) -> int:
        """The second attempt of an append whose outcome is unknown; the last sequence
        number if either attempt was applied.

        Raises:
            OutcomeUnknown: neither attempt could be confirmed.
            Conflict, Fenced: the sequence number or the claim is someone else's, and the
                first attempt was not applied.
        """
        expected = act.seq
        try:
            return await self._again(f"{act.id}: emit", attempt, first)
        except (Conflict, Fenced) as taken:
            # The first attempt may be what took the sequence number: read it back.
            try:
                kv = await self.backend.get(self.layout.log(act.id.type, act.id.key, expected + 1))
            except Unavailable as again:
                raise OutcomeUnknown(
                    f"{act.id}: emit may or may not have been applied ({first}); it could"
                    f" not be confirmed either ({again})"
                ) from again
            if kv is None:
                raise
            record = eventlog.sourcing.decode_record(kv.value, str(act.id))
            if (record.event, record.correlation_id, record.causation_id) != (
                events[0],
                *correlation,
            ):
                raise
            if isinstance(taken, Fenced):
                self._fenced(act)  # applied, then the claim was lost: deactivate
            return expected + len(events)
