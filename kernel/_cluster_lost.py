"""Lost members: which members' messages are parked now, and when they go on.

A member is taken for lost when the transport reports its address lost
(``Remote.peer_lost``) or a send to it cannot connect (``ClusterRoute.unreachable``):
from then on the cluster's route to it parks what it is given in the member's
``Parking`` (``kerna._cluster_parking``, in order, each message within its own
deadline). The parking ends when the node answers again (the parked messages are sent
first, then the route sends straight to it) or when its member record is gone, or
back under a new address (``members_changed``: every parked message is placed again,
as a new send would be).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ._cluster_parking import Parking

if TYPE_CHECKING:
    from ._cluster import Cluster
    from ._cluster_placement import ClusterRoute
    from ._envelope import Envelope
    from ._errors import PeerUnreachable

__all__ = ["LostMembers"]

log = logging.getLogger("kerna.cluster")


class LostMembers:
    """The parkings of one node's lost members, by member id (see the module docstring).

    Args:
        cluster: this node's cluster.
    """

    __slots__ = ("_parked", "cluster")

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._parked: dict[str, Parking] = {}  # lost member id -> its parked messages

    def get(self, node: str) -> Parking | None:
        """The parking of member ``node``; None while it is not taken for lost."""
        return self._parked.get(node)

    def count(self) -> int:
        """Messages parked now for lost members."""
        return sum(len(p) for p in self._parked.values())

    def peer_lost(self, address: str) -> None:
        """The transport lost ``address``: park what goes to that member from now on."""
        cluster = self.cluster
        for member in cluster.members():
            if member.address == address and member.id != cluster.node_id:
                self._park(member.id, address)

    def unreachable(self, route: ClusterRoute, env: Envelope, error: PeerUnreachable) -> None:
        """A send to ``route``'s node could not connect: park it (or, if the member is
        gone meanwhile, place it again).

        Raises:
            PeerUnreachable: this node is closing.
        """
        if self.cluster.closing:
            raise error
        parking = self._park(route.node, route.address)
        route.parking = parking
        if parking is None:
            self.cluster.redeliver(env)
        else:
            parking.park(env)

    def members_changed(self) -> None:
        """The member set changed: a lost member gone (or back under a new address)
        has its parked messages placed again."""
        cluster = self.cluster
        membership = cluster.membership
        for node, parking in list(self._parked.items()):
            member = None if membership is None else membership.get(node)
            if member is None or member.address != parking.address:
                del self._parked[node]  # gone (or back under a new address): place again
                envs = parking.release()
                log.info("lost node %s left: %d parked messages placed again", node, len(envs))
                for env in envs:
                    cluster.redeliver(env)

    def close(self) -> None:
        """This node stops: every parked message fails (``Parking.close``)."""
        parked, self._parked = self._parked, {}
        for parking in parked.values():
            parking.close()

    def _park(self, node: str, address: str) -> Parking | None:
        """The parking of member ``node`` (made now if it is new); None if ``node`` at
        ``address`` is not a member any more, or this node is closing."""
        parking = self._parked.get(node)
        if parking is not None:
            return parking
        cluster = self.cluster
        membership, remote, persistence = cluster.membership, cluster.remote, cluster.persistence
        member = None if membership is None else membership.get(node)
        if cluster.closing or member is None or member.address != address:
            return None
        assert remote is not None
        assert persistence is not None
        bound = max(3 * persistence.claims.lease_ttl, 10.0)
        parking = Parking(cluster.runtime, remote, node, address, bound, self._unparked)
        self._parked[node] = parking
        for route in cluster.routes():
            if route.node == node:
                route.parking = parking
        log.info("cluster member %s (%s) is lost: its messages wait", node, address)
        return parking

    def _unparked(self, parking: Parking) -> None:
        """The lost node answered again and took every parked message."""
        if self._parked.get(parking.node) is parking:
            del self._parked[parking.node]
        for route in self.cluster.routes():
            if route.parking is parking:
                route.parking = None
