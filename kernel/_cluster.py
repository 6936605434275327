"""The cluster: nodes sharing a store and a secret, placing and routing agents between
them.

``Kernel(state="etcd://...", transport="tcp://...", cluster="shop", secret=...)`` makes
a kernel a node of the cluster ``shop``: its keys live under
``{state_prefix}shop/`` (members, activation claims, states), it registers itself
(``kerna._cluster_members``), and ``Runtime.deliver`` asks ``Cluster.route`` where a
target with no local activation goes (``kerna._cluster_placement``): a local
activation (zero-copy, as without a cluster) or a ``ClusterRoute`` to its home (the
envelope is encoded once and sent). The member set and the directory of claims
(``kerna._cluster_directory``) are mirrored by watches; any change closes the cached
routes, so a warm remote ask costs one transport round trip and a stale one is decided
again.

A message that reaches a node whose activation finds the agent's claim held by another
node is forwarded there once, transparently (``Cluster.moved``,
``kerna._cluster_forward``): an asker gets its reply through the node it asked, and the
senders' directory watch routes the next message straight to the holder. A holder
that is leaving is handing the agent off (``kerna._cluster_leave``): the activation
here then waits for its claim's release and claims the agent, keeping the handed-off
messages in order; one that is no member (rejoining under a new lease) is waited for
too (``wait_for_claim``). A sender whose decision for an agent moves away from a
leaving node it routed it to holds the agent's messages until what it sent there has
passed (``kerna._cluster_flush``).

A member whose node is lost (its connection broke, a send cannot connect) keeps its
agents until its lease expires: messages to them are parked (``kerna._cluster_lost``,
``kerna._cluster_parking``) until the node answers again or its member record is
gone, and then placed again, each within its own deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from ._cluster_config import check_cluster, default_node_id
from ._cluster_directory import ClaimDirectory
from ._cluster_flush import Flush, Flushes, Flushing, passed
from ._cluster_forward import Forwarder
from ._cluster_leave import Departure
from ._cluster_lost import LostMembers
from ._cluster_members import Member, Membership
from ._cluster_parking import Probe
from ._cluster_placement import ClusterRoute, LeavingRoute, PlacementStrategy, Rendezvous
from ._cluster_topics import ClusterTopics
from ._errors import OwnedElsewhere, UnknownAgent
from ._ids import AgentId
from ._persistence_claims import Claim

if TYPE_CHECKING:
    from ._activation import Activation
    from ._envelope import Envelope
    from ._persistence import Persistence
    from ._remote import Remote
    from ._runtime import Runtime

__all__ = ["Cluster", "check_cluster", "default_node_id"]


class Cluster:
    """One node's view of its cluster: membership, the directory, placement, routes."""

    marker = Flush  # the message type ``Runtime.deliver`` hands to ``pass_marker``

    def __init__(
        self, runtime: Runtime, name: str, node_id: str, strategy: PlacementStrategy | None
    ) -> None:
        self.runtime = runtime
        self.name = name
        self.node_id = node_id
        self.strategy: PlacementStrategy = strategy or Rendezvous()
        self._routes: dict[str, ClusterRoute] = {}
        self._hosts: dict[str, list[str]] = {}  # type -> sorted hosting node ids (cached)
        self._persistence: Persistence | None = None
        self._remote: Remote | None = None
        self._membership: Membership | None = None
        self._since = 0.0
        self._member_waiters: list[asyncio.Future[None]] = []
        self.closing = False  # close() was called
        self.leaving = False  # stopping gracefully: placement skips this node
        self.claims = ClaimDirectory(self)  # the directory: the claims as the watch shows
        self.lost = LostMembers(self)  # the parked messages of lost members
        self.flushes = Flushes(self)  # the senders' side of a hand-off
        self.forwarder = Forwarder(self)  # what this node sends on for others
        self.departure = Departure(self)
        self.topics = ClusterTopics(self)
        self._subscribers: dict[str, dict[str, list[str]]] = {}  # topic -> type -> nodes

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, persistence: Persistence, remote: Remote) -> None:
        """Mirror the directory, register this node and follow the member set.

        Raises:
            ConfigError: another live node has this node id.
            Unavailable: the store cannot be reached.
        """
        self._persistence, self._remote = persistence, remote
        remote.codec.types.add(Probe)  # a lost node's probe decodes here
        remote.codec.types.add(Flush)  # and a sender's marker through a leaving node
        remote.peer_lost = self.lost.peer_lost
        self._since = time.time()
        prefix = persistence.layout.prefix
        await self.claims.start(persistence)
        self._membership = Membership(
            persistence.backend, prefix, persistence.claims, self._describe, self._members_changed
        )
        try:
            await self._membership.start(join_timeout=persistence.claims.lease_ttl + 2.0)
        except BaseException:
            self._membership = None
            await self.claims.close()
            raise

    async def close(self) -> None:
        """Deregister and stop the watches (the lease goes with ``Persistence.close``)."""
        self.closing = True
        self.lost.close()
        self.flushes.close()
        self.invalidate()
        membership, self._membership = self._membership, None
        try:
            if membership is not None:
                await membership.close()
        finally:
            await self.claims.close()

    def begin_leaving(self) -> None:
        """``stop`` was called: from now on this node is no home for any agent (for its
        own sends too), and messages from other nodes are still taken, to hand over."""
        self.leaving = True
        self.invalidate()

    @property
    def membership(self) -> Membership | None:
        """This node's member record and the view of the others' (while it runs)."""
        return self._membership

    @property
    def remote(self) -> Remote | None:
        """This node's link to the others (once started)."""
        return self._remote

    @property
    def persistence(self) -> Persistence | None:
        """This node's store: its layout, lease and claims (once started)."""
        return self._persistence

    def routes(self) -> Iterable[ClusterRoute]:
        """The routes to other nodes cached now (until the next ``invalidate``)."""
        return self._routes.values()

    def parked(self) -> int:
        """Messages parked now for lost members."""
        return self.lost.count()

    def types_changed(self) -> None:
        """A type was registered: publish this node's record again."""
        self._hosts.clear()
        if self._membership is not None:
            self._membership.update()

    def _describe(self) -> Member:
        from kerna import __version__

        remote = self._remote
        assert remote is not None
        types = {name: atype.placement for name, atype in self.runtime.types.items()}
        return Member(
            self.node_id, remote.address, types, remote.codec.types.fingerprints(),
            __version__, self._since, self.leaving, self.runtime.topics.summary(),
        )  # fmt: skip

    # -- the view ------------------------------------------------------------------------

    def members(self) -> list[Member]:
        return [] if self._membership is None else self._membership.members()

    async def wait_members(
        self, condition: Callable[[list[Member]], bool], timeout: float
    ) -> list[Member]:
        """See ``Kernel.wait_members``."""
        loop = asyncio.get_running_loop()
        members = self.members()
        try:
            async with asyncio.timeout(timeout):
                while not condition(members):
                    waiter = loop.create_future()
                    self._member_waiters.append(waiter)
                    await waiter
                    members = self.members()
        except TimeoutError:
            ids = ", ".join(m.id for m in members) or "none"
            raise TimeoutError(
                f"the members of {self.name!r} did not meet the condition in {timeout:g} s"
                f" (members now: {ids})"
            ) from None
        return members

    def _members_changed(self) -> None:
        self.invalidate()
        self.flushes.members_changed()
        waiters, self._member_waiters = self._member_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.claims.members_changed()  # a holder waited for may have left
        self.lost.members_changed()

    def invalidate(self, *_: object) -> None:
        """The member set or the directory changed: every cached decision is stale."""
        for route in self._routes.values():
            route.closed = True
        self._routes.clear()
        self._hosts.clear()
        self._subscribers.clear()

    def hosts(self, type_name: str) -> list[str]:
        """The ids of the live nodes hosting ``type_name`` that are not leaving, sorted
        (this node included once it registered the type, before the watch shows it)."""
        hosts = self._hosts.get(type_name)
        if hosts is None:
            nodes = {m.id for m in self.members() if type_name in m.types and not m.leaving}
            nodes.discard(self.node_id)
            if type_name in self.runtime.types and not self.leaving:
                nodes.add(self.node_id)
            hosts = self._hosts[type_name] = sorted(nodes)
        return hosts

    def subscribers(self, topic: str) -> dict[str, list[str]]:
        """Per agent type subscribed to ``topic`` on other nodes, the ids of those nodes
        (the ones not leaving, unless only leaving ones subscribed), sorted."""
        found = self._subscribers.get(topic)
        if found is None:
            staying: dict[str, list[str]] = {}
            leaving: dict[str, list[str]] = {}
            for member in self.members():
                if member.id == self.node_id:
                    continue
                for type_name in member.topics.get(topic, ()):
                    (leaving if member.leaving else staying).setdefault(type_name, []).append(
                        member.id
                    )
            for type_name, ids in leaving.items():
                staying.setdefault(type_name, ids)
            found = self._subscribers[topic] = {t: sorted(ids) for t, ids in staying.items()}
        return found

    def _placement(self, type_name: str) -> str:
        atype = self.runtime.types.get(type_name)
        if atype is not None:
            return atype.placement
        for member in self.members():
            placement = member.types.get(type_name)
            if placement is not None:
                return placement
        return "directory"

    def home(self, target: AgentId) -> str:
        """The node ``target``'s messages go to now: the holder of its claim, or the
        strategy's choice among the live nodes hosting its type.

        The holder is the home while its claim holds, also while it leaves: it hands
        the agent off with the messages it holds, and the new home waits for the
        claim's release (``wait_for_claim``), so a sender's newer messages never overtake
        its older ones across the hand-off (nor those still on their way to the holder
        at the release: ``route`` holds them, ``kerna._cluster_flush``). (This node,
        when it leaves, is nobody's home: what reaches it goes to the next one.)

        Raises:
            UnknownAgent: no live member hosts the type.
        """
        hosts = self.hosts(target.type)
        if not hosts:
            raise UnknownAgent(
                f"no live member of cluster {self.name!r} hosts agent type {target.type!r}",
                agent_type=target.type,
            )
        placement = self._placement(target.type)
        if placement == "local" and self.node_id in hosts:
            return self.node_id
        if placement == "directory":
            holder = self.claims.holder(target)
            if holder is not None and (holder in hosts or self._leaving_host(holder, target)):
                return holder
        return self.strategy.choose(target, hosts)

    def _leaving_host(self, node: str, target: AgentId) -> bool:
        """Whether ``node`` is another live member, leaving, that hosts ``target``'s type."""
        membership = self._membership
        member = None if membership is None or node == self.node_id else membership.get(node)
        return member is not None and member.leaving and target.type in member.types

    async def locate(self, target: AgentId) -> str | None:
        """The node hosting ``target`` now: this one if it is active here; the holder of
        its claim (read from the store) for directory placement, None if unclaimed;
        for ``hash`` and ``local`` placement, which keep no record, its home now (None
        when no live member hosts the type).

        Raises:
            Unavailable: the store cannot be reached.
        """
        act = self.runtime.directory.get(target)
        if act is not None and not act.closed:
            return self.node_id
        placement = self._placement(target.type)
        if placement == "directory":
            persistence = self._persistence
            assert persistence is not None
            kv = await persistence.backend.get(persistence.layout.claim(target.type, target.key))
            if kv is None:
                return None
            try:
                node: str = msgspec.msgpack.decode(kv.value, type=Claim).node
            except msgspec.MsgspecError:
                return None
            return node
        try:
            return self.home(target)
        except UnknownAgent:
            return None

    async def wait_for_claim(self, target: AgentId, error: OwnedElsewhere) -> bool:
        """Whether an activation of ``target`` here that found its claim held (``error``)
        claims it again: see ``ClaimDirectory.wait_for_claim``."""
        return await self.claims.wait_for_claim(target, error)

    # -- routing -------------------------------------------------------------------------

    def route(self, target: AgentId, message: Any) -> Activation | ClusterRoute | Flushing:
        """Where a message to ``target`` (no live local activation cached) goes.

        Raises:
            UnknownAgent, UnhandledMessage, TypeError: as ``Runtime.resolve``.
        """
        route = self._remote_route(target)
        return self.runtime.resolve(target, message) if route is None else route

    def _remote_route(self, target: AgentId) -> ClusterRoute | Flushing | None:
        """The route to ``target``'s home on another node; None if it is this one. A
        decision that moves ``target`` away from a leaving node this node routed it to
        holds its messages until those sent there passed (``kerna._cluster_flush``).

        Raises:
            UnknownAgent: no live member hosts the type.
        """
        flushes = self.flushes
        held = flushes.held(target)
        if held is not None:
            return held
        act = self.runtime.directory.get(target)
        node = self.node_id if act is not None and not act.closed else self.home(target)
        held = flushes.routed(target, node)
        if held is not None:
            return held
        return None if node == self.node_id else self.route_to(node)

    def pass_marker(self, env: Envelope, inbound: bool) -> Awaitable[None] | None:
        """A ``Flush`` marker to reach ``env.target`` here (``Runtime.deliver``): answered
        if the agent's messages from its path land here (a message from another node to
        this node, which is not leaving, or a live local activation), else sent on
        behind them, as a message to it would be; it never activates the agent.

        Raises:
            UnknownAgent, WireError, MailboxFull: it cannot be sent on.
        """
        target = env.target
        if isinstance(target, AgentId) and (not inbound or self.leaving):
            if inbound:
                self.departure.seen()
            route = self._remote_route(target)
            if route is not None:
                return route.put(env)
        passed(env)
        return None

    def route_to(self, node: str) -> ClusterRoute:
        route = self._routes.get(node)
        if route is None:
            membership, remote = self._membership, self._remote
            member = None if membership is None else membership.get(node)
            if member is None or remote is None:
                raise UnknownAgent(f"node {node!r} is not a live member of {self.name!r}")
            if self.leaving:
                route = LeavingRoute(
                    remote, node, member.address, self.lost.unreachable, self.departure.seen
                )
            else:
                route = ClusterRoute(remote, node, member.address, self.lost.unreachable)
            parking = self.lost.get(node)
            if parking is not None and parking.address == member.address:
                route.parking = parking
            self._routes[node] = route
        return route

    # -- forwarding ----------------------------------------------------------------------

    def redeliver(self, env: Envelope) -> asyncio.Future[None] | None:
        """Route ``env`` again, as a new send would be: ``Forwarder.redeliver``."""
        return self.forwarder.redeliver(env)

    def moved(self, act: Activation, error: OwnedElsewhere) -> bool:
        """``act`` found its agent claimed by another node: ``Forwarder.moved``."""
        return self.forwarder.moved(act, error)
