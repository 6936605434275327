"""Activation claims: the kernel's kept-alive lease and the claims made under it.

A stateful activation claims ``{prefix}act/{type}/{key}`` create-if-absent under the
kernel's lease; the claim's create revision is its fencing token (see
``kerna._persistence``). ``Claims`` keeps the lease (a ``KeptLease``, granted on first
use and again after a loss, whose loss it reports), makes and releases claims, and
settles a claim whose outcome is unknown with a second attempt.

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
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import msgspec

from kerna.state import KeptLease, StateBackend
from kerna.state._layout import Layout
from kerna.state._tasks import cancel_and_wait
from kerna.state._types import Compare, Delete, Get, KeyValue, Put

from ._errors import (
    ConfigError,
    LeaseLost,
    OutcomeUnknown,
    OwnedElsewhere,
    StateError,
    Unavailable,
)

__all__ = ["Claim", "Claims", "again"]

log = logging.getLogger("kerna.state")
T = TypeVar("T")


class Claim(msgspec.Struct, frozen=True):
    """The value of an activation claim: who holds the agent."""

    node: str
    lease: int
    since: float


class Claims:
    """The kernel's activation claims and the lease that holds them (see the module
    docstring)."""

    def __init__(
        self, backend: StateBackend, layout: Layout, lease_ttl: float, node_id: str | None = None
    ) -> None:
        self.backend = backend
        self.layout = layout
        self.lease_ttl = lease_ttl
        # Who holds a claim: the cluster's node id (its member key names it too), or a
        # name unique to this kernel without a cluster.
        self.node_id = node_id or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        # The live lease, or the lost one until a new grant starts (see _ensure_lease).
        self._lease: KeptLease | None = None
        self._granting: asyncio.Task[KeptLease] | None = None  # the one grant under way
        self._attempts = 0  # grant attempts begun (the one under way is the last)
        self._down = False  # the last attempt failed: the store could not be reached
        self._tasks: set[asyncio.Task[None]] = set()  # lost leases being revoked
        self._claim_encoder = msgspec.msgpack.Encoder()
        self._claim_decoder = msgspec.msgpack.Decoder(Claim)
        # Claims that may exist under our lease with no activation knowing of them
        # (claim key -> the value written); the janitor deletes them. The lock keeps a
        # deletion and an activation of the same agent apart.
        self._orphans: dict[str, bytes] = {}
        self._orphans_lock = asyncio.Lock()
        self._janitor: asyncio.Task[None] | None = None
        self._lease_lost_callbacks: list[Callable[[], object]] = []
        self._lease_granted_callbacks: list[Callable[[], object]] = []

    async def close(self) -> None:
        """Release every claim at once (revoke the lease)."""
        try:
            await cancel_and_wait(self._janitor)  # the lease's end deletes the orphans
            await cancel_and_wait(self._granting)  # a lease granted too late expires
            for task in list(self._tasks):  # lost leases: they expire by themselves
                await cancel_and_wait(task)
            if self._lease is not None:
                await self._lease.revoke()
        finally:
            self._janitor = None
            self._granting = None
            self._orphans.clear()
            self._lease = None

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

    def on_lease_granted(self, callback: Callable[[], object]) -> None:
        """Have ``callback()`` called, on the event loop, each time a lease is granted
        (the first, and each new one after a loss), whoever's call asked for it (a
        claim's or the membership keeper's); what it raises is logged. The membership
        keeper wakes on it: a claim that got the new lease brings the node back at
        once, not after the keeper's backoff."""
        self._lease_granted_callbacks.append(callback)

    def _lease_lost(self) -> None:
        for callback in list(self._lease_lost_callbacks):
            try:
                callback()
            except Exception:
                log.exception("lease-lost callback %r raised", callback)

    async def kept_lease(self) -> KeptLease:
        """The kernel's kept-alive lease (granted now if there is none, or a new one
        after a loss): the cluster membership key lives under it with the claims.

        It waits for the attempt under way, or one begun now (it is how the membership
        keeper rejoins); a claim waits the same way (``_ensure_lease``).

        Raises:
            Unavailable: the backend could not be reached to grant it.
        """
        if self.lease:
            assert self._lease is not None
            return self._lease
        return await asyncio.shield(self._grant())

    async def _ensure_lease(self, deadline: float | None = None) -> int:
        """The kernel's kept-alive lease, granted on first use and again after a loss.

        A lost lease (expired during a pause or partition) took every claim made under
        it: the activations holding them are fenced on their next write. Its
        revocation runs in the background, and every caller that needs a lease
        meanwhile shares one grant attempt (the membership keeper's or a claim's).

        A caller waits for the attempt under way, or starts one. When the last attempt
        had failed already (the store was unreachable) and the one under way, begun
        before the call, fails too, it may have been sent into a partition that has
        healed since: the caller waits for one attempt begun after the call. So while
        the store stays unreachable a claim fails within about two store timeouts, and
        once it answers again the next claim does not fail (nor wait for the membership
        keeper's next attempt). Never past ``deadline`` (``loop.time()``, the caller's).

        Raises:
            Unavailable: no lease, and the store could not be reached to grant one (by
                an attempt begun after the call), or not before ``deadline``.
        """
        lease = self.lease
        if lease:
            return lease
        asked = self._attempts  # an attempt numbered up to this began before the call
        suspect = self._down  # the store was unreachable: what is under way may be stale
        try:
            async with asyncio.timeout_at(deadline) as scope:
                while True:
                    granting = self._grant()
                    number = self._attempts
                    try:
                        return (await asyncio.shield(granting)).id
                    except Unavailable as exc:
                        if number > asked or not suspect:
                            raise Unavailable(
                                "the kernel has no lease to claim under: the store could"
                                f" not be reached to grant one ({exc})"
                            ) from exc
        except TimeoutError:
            if not scope.expired():
                raise
            raise Unavailable(
                "the kernel has no lease to claim under: none could be granted before the"
                " caller's deadline"
            ) from None

    def _grant(self) -> asyncio.Task[KeptLease]:
        """The grant attempt under way, started now if there is none (the lost lease,
        if any, is revoked in the background)."""
        task = self._granting
        if task is not None:
            return task
        old, self._lease = self._lease, None
        if old is not None:
            if old.id:
                log.error("lease %d lost: stateful activations on it are fenced", old.id)
            self._orphans.clear()  # they went with the lease
            self._background(old.revoke(), f"kerna.state revoke lease {old.id}")
        self._attempts += 1
        task = self._granting = asyncio.get_running_loop().create_task(
            self._granted(), name="kerna.state lease grant"
        )
        task.add_done_callback(_retrieved)  # every waiter may have gone
        return task

    async def _granted(self) -> KeptLease:
        lease = KeptLease(self.backend, self.lease_ttl, on_lost=self._lease_lost)
        try:
            await lease.grant()
        except Unavailable:
            self._down = True
            raise
        finally:
            self._granting = None
        self._down = False
        self._lease = lease
        for callback in list(self._lease_granted_callbacks):
            try:
                callback()
            except Exception:
                log.exception("lease-granted callback %r raised", callback)
        return lease

    def _background(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- claims ----------------------------------------------------------------------------

    async def claim(
        self, agent_type: str, key: str, *, read: str | None = None, deadline: float | None = None
    ) -> tuple[int, KeyValue | None]:
        """Claim the agent for this kernel: its fencing token (the claim's create
        revision) and, with ``read``, that key's entry (None: absent) read in the claim's
        own transaction (an activation's state: one round trip, not a claim and then a
        load). A claim of ours that is still there (unreleased, or an earlier attempt
        that applied unconfirmed) is taken as it is.

        The entry read is current for as long as the claim holds: every write of an
        agent's state compares its claim's create revision (``kerna._persistence``), so
        none can land between the claim and this read, nor after it but from another
        claim.

        With no lease (the last one was lost), it waits for a new one, not past
        ``deadline`` (the caller's, in ``loop.time()``): see ``_ensure_lease``.

        Raises:
            OwnedElsewhere: another kernel holds the agent.
            LeaseLost: no lease could be kept to claim it under.
            OutcomeUnknown, Unavailable: the backend could not be reached (``Unavailable``
                also when no lease could be granted: see ``_ensure_lease``).
        """
        claim_key = self.layout.claim(agent_type, key)
        if claim_key in self._orphans:
            async with self._orphans_lock:  # no deletion of it is under way after this
                self._orphans.pop(claim_key, None)  # if it exists, it is ours: used below
        for _ in range(3):
            lease = await self._ensure_lease(deadline)
            kept = self._lease  # the KeptLease of ``lease`` (a later loss replaces it)
            value = self._claim_encoder.encode(Claim(self.node_id, lease, time.time()))
            reads = () if read is None else (Get(read),)
            attempt = functools.partial(
                self.backend.txn,
                [Compare.absent(claim_key)],
                [Put(claim_key, value, lease), *reads],
                [Get(claim_key), *reads],
            )
            try:
                try:
                    result = await attempt()
                except Unavailable as exc:
                    if not exc.ambiguous:
                        raise
                    try:
                        result = await again(f"claim {claim_key!r}", attempt, exc)
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
                    f"(claim {claim_key!r} held by {holder.node if holder else 'unknown'})",
                    holder=holder.node if holder else None,
                    revision=current.mod_revision if current is not None else 0,
                )
            if kept is None or not kept.lost.is_set():
                return token, (result.gets[-1] if read is not None else None)
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

    async def release(self, agent_type: str, key: str, token: int) -> None:
        """Give up the claim whose fencing token is ``token`` (only if it is still that
        claim); best effort: a claim that cannot be deleted goes with the lease."""
        await self._delete_claim(self.layout.claim(agent_type, key), token)

    async def _delete_claim(self, claim_key: str, token: int) -> None:
        try:
            await self.backend.txn([Compare.created_at(claim_key, token)], [Delete(claim_key)])
        except (StateError, ConfigError) as exc:  # unreachable, failed or closed store
            log.warning("could not release %r (it expires with the lease): %s", claim_key, exc)


def _retrieved(task: asyncio.Task[KeptLease]) -> None:
    """Mark a grant's failure as seen (its waiters, if any, got it)."""
    if not task.cancelled():
        task.exception()


async def again(what: str, attempt: Callable[[], Awaitable[T]], first: Unavailable) -> T:
    """The second attempt of a write whose first attempt's outcome is unknown (see
    ``kerna._persistence``: the two attempts' compares make them exclusive).

    Raises:
        OutcomeUnknown: the second attempt failed too (it chains that failure).
    """
    try:
        return await attempt()
    except Unavailable as second:
        raise OutcomeUnknown(
            f"{what} may or may not have been applied ({first}); it could not be"
            f" confirmed either ({second})"
        ) from second
