"""The directory: one node's mirror of the cluster's activation claims.

The claims under ``{prefix}act/`` (``kerna._persistence_claims``) are the directory of
``placement="directory"`` agents: a ``Replica`` fed by the store's watch mirrors them
here, so ``Cluster.home`` reads an agent's holder without a store round trip
(``holder``). Senders cache their routing decisions until the view changes; a claim
changes a decision only where its holder is (or was) another node than the agent's
home by hash, which senders pick without it, so only such a claim closes the cached
routes (``Cluster.invalidate``).

An activation here that finds its agent's claim held by a node that is leaving (it
hands the agent off) or that is no member (it rejoins under a new lease) waits for
the claim's release, or for the holder to be a member again (``wait_for_claim``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import msgspec

from kerna.state import Replica
from kerna.state._layout import unescape

from ._errors import ConfigError, StateError
from ._ids import AgentId
from ._persistence_claims import Claim

if TYPE_CHECKING:
    from ._cluster import Cluster
    from ._errors import OwnedElsewhere
    from ._persistence import Persistence

__all__ = ["ClaimDirectory"]

log = logging.getLogger("kerna.cluster")


class ClaimDirectory:
    """The activation claims as this node's watch shows them (see the module docstring).

    Args:
        cluster: this node's cluster.
    """

    __slots__ = ("_off_hash", "_release_waiters", "_replica", "cluster")

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._replica: Replica[Claim] | None = None
        # Claim keys whose holder is not the agent's home by hash: a change of one of
        # those (or a new one) changes a routing decision; any other claim does not.
        self._off_hash: set[str] | None = None
        # Claim key -> activations here waiting for its holder to release it (or rejoin).
        self._release_waiters: dict[str, list[asyncio.Future[None]]] = {}

    async def start(self, persistence: Persistence) -> None:
        """Mirror the claims of ``persistence``'s layout.

        Raises:
            Unavailable: the store cannot be reached.
        """
        decode = msgspec.msgpack.Decoder(Claim).decode
        replica: Replica[Claim] = Replica(
            persistence.backend,
            f"{persistence.layout.prefix}act/",
            decode=decode,
            on_change=self._claim_changed,
        )
        await replica.__aenter__()
        self._replica = replica

    async def close(self) -> None:
        """Stop the watch."""
        replica, self._replica = self._replica, None
        if replica is not None:
            await replica.aclose()

    def holder(self, target: AgentId) -> str | None:
        """The node whose claim holds ``target`` (as the directory watch shows it)."""
        replica, persistence = self._replica, self.cluster.persistence
        if replica is None or persistence is None:
            return None
        claim = replica.get(persistence.layout.claim(target.type, target.key))
        return None if claim is None else claim.node

    def members_changed(self) -> None:
        """The member set changed: the homes by hash moved (which claims are off them
        is recomputed on the next claim), and a holder waited for may have left."""
        self._off_hash = None
        waiters: list[asyncio.Future[None]] = []
        for key in list(self._release_waiters):
            waiters.extend(self._release_waiters.pop(key))
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _claim_changed(self, claim_key: str, claim: Claim | None) -> None:
        """A claim was made or released: decisions change only where the holder is
        (or was) another node than the home by hash, which senders pick without it."""
        for waiter in self._release_waiters.pop(claim_key, ()):
            if not waiter.done():
                waiter.set_result(None)
        off = self._off_hash
        if off is None:
            off = self._off_hash = set()
            replica = self._replica
            for key, held in () if replica is None else replica.items():
                if key != claim_key and self._off(key, held):
                    off.add(key)
            if claim is None:  # what it was is not known any more: it may have been off
                self.cluster.invalidate()
                return
        if claim is not None and self._off(claim_key, claim):
            off.add(claim_key)
        elif claim_key in off:
            off.discard(claim_key)
        else:
            return  # held where senders route it anyway (or never was)
        self.cluster.invalidate()

    def _off(self, claim_key: str, claim: Claim) -> bool:
        """Whether ``claim`` is held elsewhere than its agent's home by hash."""
        cluster = self.cluster
        persistence = cluster.persistence
        if persistence is None:
            return True
        type_part, _, key_part = claim_key[len(f"{persistence.layout.prefix}act/") :].partition("/")
        target = AgentId(unescape(type_part), unescape(key_part))
        hosts = cluster.hosts(target.type)
        return not hosts or cluster.strategy.choose(target, hosts) != claim.node

    async def wait_for_claim(self, target: AgentId, error: OwnedElsewhere) -> bool:
        """An activation of ``target`` here found its claim held (``error``); whether to
        claim it again (True) or not (False: ``Cluster.moved`` forwards its messages to
        a live holder).

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
        cluster = self.cluster
        holder = error.holder
        membership, persistence = cluster.membership, cluster.persistence
        if holder is None or holder == cluster.node_id or membership is None or cluster.leaving:
            return False
        replica = self._replica
        if replica is None or persistence is None:
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
                await replica.wait_for(error.revision)  # the view shows that claim
                while (claim := replica.get(key)) is not None and claim.node == holder:
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
