"""The cluster: nodes sharing a store and a secret, placing and routing agents between
them.

``Kernel(state="etcd://...", transport="tcp://...", cluster="shop", secret=...)`` makes
a kernel a node of the cluster ``shop``: its keys live under
``{state_prefix}shop/`` (members, activation claims, states), it registers itself
(``kerna._cluster_members``), and ``Runtime.deliver`` asks ``Cluster.route`` where a
target with no local activation goes (``kerna._cluster_placement``): a local
activation (zero-copy, as without a cluster) or a ``ClusterRoute`` to its home (the
envelope is encoded once and sent). The member set and the directory of claims are
mirrored by watches; any change closes the cached routes, so a warm remote ask costs
one transport round trip and a stale one is decided again.

A message that reaches a node whose activation finds the agent's claim held by
another node is forwarded there once, transparently (``Cluster.moved``): an asker
gets its reply through the node it asked, and the senders' directory watch routes the
next message straight to the holder. A holder that is leaving is handing the agent
off (``kerna._cluster_leave``): the activation here then waits for its claim's release
and claims the agent, keeping the handed-off messages in order; one that is no member
(rejoining under a new lease) is waited for too (``wait_for_claim``). A sender whose
decision for an agent moves away from a leaving node it routed it to holds the agent's
messages until what it sent there has passed (``kerna._cluster_flush``).

A member whose node is lost (its connection broke, a send cannot connect) keeps its
agents until its lease expires: messages to them are parked
(``kerna._cluster_parking``) until the node answers again or its member record is
gone, and then placed again, each within its own deadline.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from kerna.state import Replica
from kerna.state._layout import unescape

from ._cluster_config import check_cluster, default_node_id
from ._cluster_flush import FLUSH_TIMEOUT, Flush, Flushing, passed
from ._cluster_leave import Departure
from ._cluster_members import Member, Membership
from ._cluster_parking import Parking, Probe
from ._cluster_placement import ClusterRoute, LeavingRoute, PlacementStrategy, Rendezvous
from ._cluster_topics import ClusterTopics
from ._errors import ConfigError, OwnedElsewhere, PeerUnreachable, StateError, UnknownAgent
from ._ids import AgentId
from ._message import DeadLetterReason
from ._persistence_claims import Claim

if TYPE_CHECKING:
    from ._activation import Activation
    from ._envelope import Envelope
    from ._persistence import Persistence
    from ._remote import Remote
    from ._runtime import Runtime

__all__ = ["Cluster", "check_cluster", "default_node_id"]

log = logging.getLogger("kerna.cluster")

_SENT_TO = 65_536
"""Agents whose last remote route a node remembers at most (then it forgets them all)."""


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
        self._directory: Replica[Claim] | None = None
        self._since = 0.0
        self._member_waiters: list[asyncio.Future[None]] = []
        # Claim keys whose holder is not the agent's home by hash: a change of one of
        # those (or a new one) changes a routing decision; any other claim does not.
        self._off_hash: set[str] | None = None
        self.forwarded = 0  # messages forwarded to the holder of their agent's claim
        self._parked: dict[str, Parking] = {}  # lost member id -> its parked messages
        # Per agent, the other node its messages were last routed to (cold decisions
        # only), and the agents whose messages wait for a marker through a leaving one
        # (``kerna._cluster_flush``).
        self._sent_to: dict[AgentId, str] = {}
        self._flushing: dict[AgentId, Flushing] = {}
        # Members seen leaving, by id -> (address, when this node saw them gone from the
        # member set, inf while they are in it): its member watch may show a node gone
        # before its directory watch shows that node's claims released, and such a node
        # may still forward what reaches it (``_hold``: for ``FLUSH_TIMEOUT`` after).
        self._left: dict[str, tuple[str, float]] = {}
        self.unordered = 0  # held messages sent on without the order guarantee
        # Claim key -> activations here waiting for its holder to release it (or rejoin).
        self._release_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._closing = False
        self.leaving = False  # stopping gracefully: placement skips this node
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
        remote.peer_lost = self._peer_lost
        self._since = time.time()
        prefix = persistence.layout.prefix
        decode = msgspec.msgpack.Decoder(Claim).decode
        directory: Replica[Claim] = Replica(
            persistence.backend, f"{prefix}act/", decode=decode, on_change=self._claim_changed
        )
        await directory.__aenter__()
        self._directory = directory
        self._membership = Membership(
            persistence.backend, prefix, persistence.claims, self._describe, self._members_changed
        )
        try:
            await self._membership.start(join_timeout=persistence.claims.lease_ttl + 2.0)
        except BaseException:
            self._membership = None
            await directory.aclose()
            raise

    async def close(self) -> None:
        """Deregister and stop the watches (the lease goes with ``Persistence.close``)."""
        self._closing = True
        parked, self._parked = self._parked, {}
        for parking in parked.values():
            parking.close()
        flushing, self._flushing = self._flushing, {}
        for held in flushing.values():
            held.close()
        self.invalidate()
        membership, self._membership = self._membership, None
        directory, self._directory = self._directory, None
        try:
            if membership is not None:
                await membership.close()
        finally:
            if directory is not None:
                await directory.aclose()

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
        membership = self._membership
        if membership is not None:
            left = self._left
            now = self.runtime.loop.time()
            present = set()
            for seen in membership.members():
                present.add(seen.id)
                if seen.leaving:
                    left[seen.id] = (seen.address, math.inf)
                elif seen.id in left:
                    del left[seen.id]  # back (restarted under the same id)
            for node, (address, gone) in list(left.items()):
                if node not in present:
                    if gone == math.inf:
                        left[node] = (address, now)
                    elif now - gone > FLUSH_TIMEOUT:
                        del left[node]
        self._off_hash = None  # the homes by hash moved: recomputed on the next claim
        waiters, self._member_waiters = self._member_waiters, []
        for key in list(self._release_waiters):  # a holder may have left
            waiters.extend(self._release_waiters.pop(key))
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        membership = self._membership
        for node, parking in list(self._parked.items()):
            member = None if membership is None else membership.get(node)
            if member is None or member.address != parking.address:
                del self._parked[node]  # gone (or back under a new address): place again
                envs = parking.release()
                log.info("lost node %s left: %d parked messages placed again", node, len(envs))
                for env in envs:
                    self.redeliver(env)

    def _claim_changed(self, claim_key: str, claim: Claim | None) -> None:
        """A claim was made or released: decisions change only where the holder is
        (or was) another node than the home by hash, which senders pick without it."""
        for waiter in self._release_waiters.pop(claim_key, ()):
            if not waiter.done():
                waiter.set_result(None)
        off = self._off_hash
        if off is None:
            off = self._off_hash = set()
            directory = self._directory
            for key, held in () if directory is None else directory.items():
                if key != claim_key and self._off(key, held):
                    off.add(key)
            if claim is None:  # what it was is not known any more: it may have been off
                self.invalidate()
                return
        if claim is not None and self._off(claim_key, claim):
            off.add(claim_key)
        elif claim_key in off:
            off.discard(claim_key)
        else:
            return  # held where senders route it anyway (or never was)
        self.invalidate()

    def _off(self, claim_key: str, claim: Claim) -> bool:
        """Whether ``claim`` is held elsewhere than its agent's home by hash."""
        persistence = self._persistence
        if persistence is None:
            return True
        type_part, _, key_part = claim_key[len(f"{persistence.layout.prefix}act/") :].partition("/")
        target = AgentId(unescape(type_part), unescape(key_part))
        hosts = self.hosts(target.type)
        return not hosts or self.strategy.choose(target, hosts) != claim.node

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

    def _holder(self, target: AgentId) -> str | None:
        """The node whose claim holds ``target`` (as the directory watch shows it)."""
        directory, persistence = self._directory, self._persistence
        if directory is None or persistence is None:
            return None
        claim = directory.get(persistence.layout.claim(target.type, target.key))
        return None if claim is None else claim.node

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
            holder = self._holder(target)
            if holder is not None and (holder in hosts or self._leaving_host(holder, target)):
                return holder
        return self.strategy.choose(target, hosts)

    def _leaving_host(self, node: str, target: AgentId) -> bool:
        """Whether ``node`` is another live member, leaving, that hosts ``target``'s type."""
        membership = self._membership
        member = None if membership is None or node == self.node_id else membership.get(node)
        return member is not None and member.leaving and target.type in member.types

    async def wait_for_claim(self, target: AgentId, error: OwnedElsewhere) -> bool:
        """An activation of ``target`` here found its claim held (``error``); whether to
        claim it again (True) or not (False: ``moved`` forwards its messages to a live
        holder).

        - A live holder that is not leaving: False at once (the view may lag behind a
          leave: the holder's record is then read from the store).
        - A leaving holder is handing the agent off, with the messages it held on their
          way here: wait until it releases the claim, then True; these messages are
          handled here before the ones sent meanwhile.
        - A holder that is no member (it rejoins under a new lease and its record is on
          its way, or its lease is ending): wait until it is a member again (False: on
          to it) or its claim is gone (True), so the senders wait instead of failing.

        At most ``3 x lease_ttl`` (at least 10 s) in all: then False. False at once too
        when this node is leaving (it hands its messages on instead).
        """
        holder = error.holder
        membership, directory, persistence = self._membership, self._directory, self._persistence
        if holder is None or holder == self.node_id or membership is None or self.leaving:
            return False
        if directory is None or persistence is None:
            return False
        member = membership.get(holder)
        if member is not None and not member.leaving:
            try:
                member = await membership.fetch(holder)
            except (StateError, ConfigError):
                return False
            if member is not None and not member.leaving:
                return False
        key = persistence.layout.claim(target.type, target.key)
        loop = asyncio.get_running_loop()
        bound = max(3 * persistence.claims.lease_ttl, 10.0)
        try:
            async with asyncio.timeout(bound):
                await directory.wait_for(error.revision)  # the view shows that claim
                while (claim := directory.get(key)) is not None and claim.node == holder:
                    member = membership.get(holder)
                    if member is not None and not member.leaving:
                        return False  # a member (again): on to it
                    waiter = loop.create_future()
                    self._release_waiters.setdefault(key, []).append(waiter)
                    await waiter
        except TimeoutError:
            log.warning("%s: its claim stayed with %s for %gs", target, holder, bound)
            return False
        log.debug("%s: released by %s, claiming it here", target, holder)
        return True

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
        flushing = self._flushing
        if flushing and (held := flushing.get(target)) is not None:
            return held
        act = self.runtime.directory.get(target)
        node = self.node_id if act is not None and not act.closed else self.home(target)
        sent_to = self._sent_to
        sent = sent_to.get(target)
        if sent is not None and sent != node:
            held = self._hold(target, sent)
            if held is not None:
                return held
        if node == self.node_id:
            return None
        if sent != node:
            if len(sent_to) >= _SENT_TO:
                sent_to.clear()  # bounded: a switch after this is not held (rare, logged)
                log.info("%s forgot where it routed %d agents", self.node_id, _SENT_TO)
            sent_to[target] = node
        return self.route_to(node)

    def _hold(self, target: AgentId, sent: str) -> Flushing | None:
        """``target``'s messages went to ``sent`` and go elsewhere now: if ``sent`` is a
        leaving member (it hands the agent off), or one seen leaving that has left the
        members since (it may still be forwarding what reached it), hold them until
        what went there passed (``Flushing``); else forget it (None: nothing to wait
        for, or nobody to ask: a member that was not leaving, or a lost node whose
        messages here are parked and placed again once it is gone, would only make them
        wait for the marker's timeout)."""
        membership, remote = self._membership, self._remote
        member = None if membership is None else membership.get(sent)
        address: str | None = None
        if member is not None:
            if member.leaving:
                address = member.address
        elif (left := self._left.get(sent)) is not None and (
            self.runtime.loop.time() - left[1] <= FLUSH_TIMEOUT
        ):
            address = left[0]  # gone from the members just now: it may still forward
        if address is None or sent in self._parked or remote is None or self._closing:
            del self._sent_to[target]
            return None
        held = self._flushing[target] = Flushing(self, target, sent, address)
        log.debug("%s: its messages wait for what was sent through leaving %s", target, sent)
        return held

    def flushed(self, flushing: Flushing, failed: str | None) -> None:
        """``flushing``'s marker passed (``failed`` None) or could not: send what it
        held on, in order, to ``target``'s home now, before any newer message."""
        target = flushing.target
        if self._flushing.get(target) is flushing:
            del self._flushing[target]
        if self._sent_to.get(target) == flushing.node:
            del self._sent_to[target]
        envs = [env for env in flushing.take() if env.reply is None or not env.reply.done()]
        if failed is not None and envs:
            self.unordered += len(envs)
            log.info(
                "%s: sent on %d held message(s) without waiting for those sent through"
                " %s (%s): their order after those is not guaranteed",
                target,
                len(envs),
                flushing.node,
                failed,
            )
        for env in envs:
            self.redeliver(env)

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
                    remote, node, member.address, self._unreachable, self.departure.seen
                )
            else:
                route = ClusterRoute(remote, node, member.address, self._unreachable)
            parking = self._parked.get(node)
            if parking is not None and parking.address == member.address:
                route.parking = parking
            self._routes[node] = route
        return route

    # -- lost members --------------------------------------------------------------------

    def _peer_lost(self, address: str) -> None:
        """The transport lost ``address``: park what goes to that member from now on."""
        for member in self.members():
            if member.address == address and member.id != self.node_id:
                self._park(member.id, address)

    def _park(self, node: str, address: str) -> Parking | None:
        """The parking of member ``node`` (made now if it is new); None if ``node`` at
        ``address`` is not a member any more, or this node is closing."""
        parking = self._parked.get(node)
        if parking is not None:
            return parking
        membership, remote, persistence = self._membership, self._remote, self._persistence
        member = None if membership is None else membership.get(node)
        if self._closing or member is None or member.address != address:
            return None
        assert remote is not None
        assert persistence is not None
        bound = max(3 * persistence.claims.lease_ttl, 10.0)
        parking = Parking(self.runtime, remote, node, address, bound, self._unparked)
        self._parked[node] = parking
        for route in self._routes.values():
            if route.node == node:
                route.parking = parking
        log.info("cluster member %s (%s) is lost: its messages wait", node, address)
        return parking

    def _unparked(self, parking: Parking) -> None:
        """The lost node answered again and took every parked message."""
        if self._parked.get(parking.node) is parking:
            del self._parked[parking.node]
        for route in self._routes.values():
            if route.parking is parking:
                route.parking = None

    def _unreachable(self, route: ClusterRoute, env: Envelope, error: PeerUnreachable) -> None:
        """A send to ``route``'s node could not connect: park it (or, if the member is
        gone meanwhile, place it again).

        Raises:
            PeerUnreachable: this node is closing.
        """
        if self._closing:
            raise error
        parking = self._park(route.node, route.address)
        route.parking = parking
        if parking is None:
            self.redeliver(env)
        else:
            parking.park(env)

    def parked(self) -> int:
        """Messages parked now for lost members."""
        return sum(len(p) for p in self._parked.values())

    def redeliver(self, env: Envelope) -> asyncio.Future[None] | None:
        """Route ``env`` again, as a new send would be (its asker, if any, waits on).

        Returns:
            The send, while it waits for its connection (or room): it is owned by the
            link (nobody needs to await it); None once queued, or if it failed.
        """
        rt = self.runtime
        try:
            sent = rt.deliver(env, None)
        except Exception as exc:  # nobody to place it on, it cannot be encoded
            rt.not_handled(env, env.target, DeadLetterReason.NOT_DELIVERED, exc)
            return None
        return None if sent is None else self._own(sent, env)

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

    def moved(self, act: Activation, error: OwnedElsewhere) -> bool:
        """``act`` found its agent claimed by another node: forward what it holds to
        that node and retire it; False (nothing done) when the holder is this node
        (a claim of an earlier lease) or not a live member (its lease is ending).
        """
        holder = error.holder
        if holder is None or holder == self.node_id:
            return False
        try:
            route = self.route_to(holder)
        except UnknownAgent:
            return False
        rt = self.runtime
        envs = act.take_to_move()  # parked senders' messages too: re-routed, not refused
        rt.retire(act)
        log.debug("%s is held by %s: %d messages forwarded", act.id, holder, len(envs))
        for env in envs:
            self._forward(route, env)
        return True

    def _forward(self, route: ClusterRoute, env: Envelope) -> None:
        self.forwarded += 1
        try:
            sent = route.put(env)
        except Exception as exc:  # the message cannot be encoded
            self.runtime.not_handled(env, env.target, DeadLetterReason.NOT_DELIVERED, exc)
            return
        if sent is not None:  # nobody awaits a forwarded send: the link owns it
            self._own(sent, env)

    def _own(self, sent: Awaitable[None], env: Envelope) -> asyncio.Future[None]:
        remote = self._remote
        assert remote is not None
        owned = remote.own(sent)
        reply = env.reply
        if reply is not None:
            owned.add_done_callback(lambda done: _send_done(done, reply))
        return owned


def _send_done(sent: asyncio.Future[None], reply: asyncio.Future[Any]) -> None:
    """A forwarded ask whose send failed: its asker gets the error (nobody awaits the
    send itself)."""
    if sent.cancelled() or reply.done():
        return
    error = sent.exception()
    if error is not None:
        reply.set_exception(error)
