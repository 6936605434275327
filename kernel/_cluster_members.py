"""Cluster membership: this node's member key, kept under its lease, and the live set.

Each node of a cluster writes ``{prefix}members/{node_id}`` (a ``Member``: address,
hosted agent types and their placement, schema fingerprints, version, start time)
under the kernel's ``KeptLease``, the one that also holds its activation claims
(``kerna._persistence_claims``). The lease is the authority: a node is a member while
its lease lives, so a peer is never declared dead on a missed heartbeat or a lost
connection, only when the store expires its lease (``lease_ttl`` seconds after its
last keepalive; a keepalive is sent every third of it) or when it leaves (``stop``
deletes the key and revokes the lease). Every node follows the member set through a
``Replica`` of ``{prefix}members/`` fed by the store's watch.

A node that cannot refresh its lease (cut off from the store) declares it lost at 90%
of the TTL (``KeptLease``): its stateful activations are fenced (``Runtime.lease_lost``),
and the keeper here rejoins under a new lease once the store answers again: its
attempts back off (up to a third of the TTL), and it wakes as soon as a lease is
granted meanwhile (a claim's call got through first).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec

from kerna.state import KeptLease, Replica, StateBackend
from kerna.state._layout import escape, unescape
from kerna.state._tasks import cancel_and_wait
from kerna.state._types import Compare, Delete, Get, Put

from ._errors import ConfigError, LeaseLost, StateError, Unavailable
from ._persistence_claims import Claims

__all__ = ["Member", "Membership"]

log = logging.getLogger("kerna.cluster")


class Member(msgspec.Struct, frozen=True):
    """A live member of the cluster, as it registered itself (``Kernel.members()``).

    Attributes:
        id: the node id (``Kernel(node_id=...)``, default ``hostname-pid``).
        address: where its transport listens (``tcp://host:port``).
        types: the agent types it hosts, by name, with each one's placement
            (``"directory"``, ``"hash"`` or ``"local"``).
        fingerprints: the schema fingerprint of each wire tag it knows.
        version: the kerna version it runs.
        since: when it joined (wall-clock seconds since the epoch).
        leaving: it is stopping gracefully: no new activation is placed on it, and
            its agents move to other nodes as it hands them over.
        topics: per topic, the agent types subscribed to it on this node
            (``Kernel.subscribe``; the dead-letter topic is per node, not listed).
    """

    id: str
    address: str
    types: dict[str, str]
    fingerprints: dict[str, str]
    version: str
    since: float
    leaving: bool = False
    topics: dict[str, list[str]] = msgspec.field(default_factory=dict)


_decode_member = msgspec.msgpack.Decoder(Member).decode
_encode = msgspec.msgpack.Encoder().encode


class Membership:
    """This node's member key and the replica of everyone's (see the module docstring).

    Args:
        backend: the cluster's store.
        prefix: the cluster's key prefix (``{state_prefix}{cluster}/``).
        claims: the kernel's claims, whose lease the member key shares.
        describe: builds this node's ``Member`` record now (types change at register).
        on_change: called after every change of the member set seen by the watch.
    """

    def __init__(
        self,
        backend: StateBackend,
        prefix: str,
        claims: Claims,
        describe: Callable[[], Member],
        on_change: Callable[[], None],
    ) -> None:
        self.backend = backend
        self.node_id = claims.node_id
        self.prefix = f"{prefix}members/"
        self.key = self.prefix + escape(self.node_id)
        self._claims = claims
        self._describe = describe
        self._on_change = on_change
        self._replica: Replica[Member] = Replica(
            backend,
            self.prefix,
            decode=_decode_member,
            on_change=self._changed,
            key_of=lambda k: unescape(k[len(self.prefix) :]),
        )
        self._dirty = asyncio.Event()  # our record changed (a type registered)
        self._granted = asyncio.Event()  # a lease was granted (maybe by a claim's call)
        claims.on_lease_granted(self._granted.set)
        self._joined: asyncio.Future[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._leases: set[int] = set()  # every lease this node registered under
        self._registered_at = 0  # the store revision of our last registration
        self._registered_under = 0  # the lease of our last registration
        self.rejoins = 0

    # -- reads ---------------------------------------------------------------------------

    def members(self) -> list[Member]:
        """The live members, by id."""
        return [member for _, member in sorted(self._replica.items())]

    def get(self, node_id: str) -> Member | None:
        return self._replica.get(node_id)

    def joined(self) -> bool:
        """Whether this node is a live member now: it holds a live lease, its record was
        written under that lease, and its view holds the record. False from the loss of
        its lease (declared at 90% of the TTL, while the store may still show the old
        record) until it registered again under a new one."""
        lease = self._claims.lease
        return bool(lease) and lease == self._registered_under and self.node_id in self._replica

    async def fetch(self, node_id: str) -> Member | None:
        """``node_id``'s member record as the store has it now (a linearizable read,
        not the view, which may lag behind it); None if absent or undecodable.

        Raises:
            Unavailable: the store cannot be reached.
            ConfigError: the store is closed.
        """
        kv = await self.backend.get(self.prefix + escape(node_id))
        if kv is None:
            return None
        try:
            return _decode_member(kv.value)
        except msgspec.MsgspecError:
            return None

    def _changed(self, key: str, member: Member | None) -> None:
        keeping = self._keeper is not None and not self._keeper.done()
        if member is None and key == self.node_id and keeping:
            self._dirty.set()  # our key is gone (an old lease expiring): write it again
        self._on_change()

    # -- this node's record --------------------------------------------------------------

    async def start(self, join_timeout: float) -> None:
        """Load the member set, register this node and keep it registered.

        Raises:
            ConfigError: another live node holds this node id.
            Unavailable: the store could not be reached within ``join_timeout``.
        """
        await self._replica.__aenter__()
        loop = asyncio.get_running_loop()
        self._joined = joined = loop.create_future()
        self._keeper = loop.create_task(
            self._keep(loop.time() + join_timeout), name=f"kerna.cluster member {self.node_id}"
        )
        try:
            await joined
        except BaseException:
            await self.close(deregister=False)
            raise
        # Read our own write: the view then holds this node (and placement counts it).
        await self._replica.wait_for(self._registered_at, timeout=join_timeout)

    def update(self) -> None:
        """Write this node's record again (its hosted types changed)."""
        self._dirty.set()

    async def close(self, *, deregister: bool = True) -> None:
        """Stop keeping the record; delete it (``deregister``): peers see the node leave
        at once instead of a TTL later (the lease is revoked by ``Persistence.close``)."""
        try:
            if deregister:
                await self.deregister()
            else:
                await cancel_and_wait(self._keeper)
                self._keeper = None
        finally:
            await self._replica.aclose()

    async def deregister(self) -> None:
        """Stop keeping the record and delete it (idempotent); the view still follows
        the others' records until ``close``."""
        await cancel_and_wait(self._keeper)
        self._keeper = None
        self._registered_under = 0
        leases, self._leases = self._leases, set()
        lease = self._claims.lease
        if leases and lease:
            try:
                await self.backend.txn(
                    [Compare(self.key, "lease", "==", lease)], [Delete(self.key)]
                )
            except (StateError, ConfigError) as exc:
                log.warning("could not deregister %s: %s", self.key, exc)

    async def _keep(self, join_by: float) -> None:
        """Register under the current lease; again after a loss (a new lease) or a change."""
        loop = asyncio.get_running_loop()
        joined = self._joined
        assert joined is not None
        delay = 0.05
        while True:
            self._granted.clear()
            try:
                lease = await self._claims.kept_lease()
                self._dirty.clear()
                await self._register(lease)
            except _Taken as exc:
                if loop.time() >= join_by:
                    if not joined.done():
                        joined.set_exception(ConfigError(str(exc)))
                        return
                    log.error("%s; retrying", exc)
            except (Unavailable, LeaseLost) as exc:
                if not joined.done() and loop.time() >= join_by:
                    joined.set_exception(exc)
                    return
                log.warning("cluster member %s cannot register (%s); retrying", self.node_id, exc)
            else:
                delay = 0.05
                if not joined.done():
                    joined.set_result(None)
                await _first(lease.lost.wait(), self._dirty.wait())
                if lease.lost.is_set():
                    self.rejoins += 1
                    log.warning("cluster member %s lost its lease: rejoining", self.node_id)
                continue
            # Back off, but rejoin as soon as a lease is granted meanwhile (a claim's
            # attempt got through): the node is a member again within a round trip.
            await _first(asyncio.sleep(delay), self._granted.wait())
            delay = min(delay * 2, max(0.05, self._claims.lease_ttl / 3))

    async def _register(self, lease: KeptLease) -> None:
        """Put our record under ``lease``: create it, or replace our own (this lease's,
        or one of our earlier, lost leases').

        Raises:
            _Taken: another node's lease holds this id.
            Unavailable, LeaseLost: as the store's txn.
        """
        value = _encode(self._describe())
        key = self.key
        result = await self.backend.txn(
            [Compare.absent(key)], [Put(key, value, lease.id)], [Get(key)]
        )
        if not result.succeeded:
            current = result.gets[0]
            assert current is not None
            if current.lease != lease.id and current.lease not in self._leases:
                raise _Taken(
                    f"node id {self.node_id!r} is taken by a live member of the cluster"
                    f" (lease {current.lease}); give each node its own node_id"
                )
            result = await self.backend.txn(
                [Compare.created_at(key, current.create_revision)], [Put(key, value, lease.id)]
            )
            if not result.succeeded:  # it changed meanwhile: the keeper tries again
                raise Unavailable(f"{key} changed while it was being registered")
        self._leases.add(lease.id)
        self._registered_at = result.revision
        self._registered_under = lease.id
        log.info("cluster member %s registered under lease %d", self.node_id, lease.id)


class _Taken(Exception):
    """Another live node holds our node id."""


async def _first(*waits: Coroutine[Any, Any, Any]) -> None:
    """Wait until the first of ``waits`` completes; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
