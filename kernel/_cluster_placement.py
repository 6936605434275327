"""Placement: which live node an agent's first message goes to, and the route there.

An ``AgentId``'s home is chosen by a ``PlacementStrategy`` over the ids of the live
members that host its type; the default is ``Rendezvous`` (highest random weight)
hashing: every node with the same member view picks the same home, and a joining or
leaving node moves only the ids whose highest weight it has or had (about 1/n of them).

Per agent type (``Kernel.register(..., placement=)``):

- ``"directory"`` (the default; stateful types always): the home activates the agent
  only after claiming ``{prefix}act/{type}/{key}`` create-if-absent under its lease
  (the activation claim of ``kerna._persistence_claims``, whose create revision is the
  fencing token). Once claimed, the claim is the authority: senders route to the node
  it names, and a node that joins later does not move it. Strict single activation.
- ``"hash"``: no store write per activation; the home by hash activates it. While two
  nodes' member views differ (a node joining or leaving, until both watches have seen
  it), or after the view changed while the agent stayed active on its old home, two
  activations of one id can exist for a while: use it for volatile agents only.
- ``"local"``: one activation per node that hosts the type (stateless workers, for
  scale-out); a node that does not host it sends to the home by hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ._errors import PeerUnreachable, RegistrationError
from ._remote import RemoteRoute

if TYPE_CHECKING:
    from ._cluster_parking import Parking
    from ._envelope import Envelope
    from ._ids import AgentId
    from ._remote import Remote

__all__ = [
    "PLACEMENTS",
    "ClusterRoute",
    "LeavingRoute",
    "PlacementStrategy",
    "Rendezvous",
    "check_placement",
]

PLACEMENTS = ("directory", "hash", "local")


@runtime_checkable
class PlacementStrategy(Protocol):
    """Chooses an agent's home among the live nodes hosting its type.

    ``choose`` must be deterministic (every node with the same view must choose the
    same node) and fast (it runs on every cold send); ``nodes`` is sorted and never
    empty.
    """

    def choose(self, agent: AgentId, nodes: Sequence[str]) -> str: ...


class Rendezvous:
    """Highest random weight hashing: the node whose hash with the agent id is highest
    (blake2b, 64 bits; ties go to the greater node id)."""

    def choose(self, agent: AgentId, nodes: Sequence[str]) -> str:
        ident = f"\0{agent.type}\0{agent.key}".encode()
        best = nodes[0]
        top = -1
        for node in nodes:
            digest = hashlib.blake2b(node.encode() + ident, digest_size=8).digest()
            weight = int.from_bytes(digest, "big")
            if weight > top or (weight == top and node > best):
                best, top = node, weight
        return best


class ClusterRoute:
    """A placement decision for agents homed on another node: that node's address.

    It has the shape ``Runtime.deliver`` and ``AgentRef`` read of a route (as
    ``RemoteRoute``); the cluster closes it when the member set or the directory
    changes, so the refs caching it decide again on their next send. While the node
    is lost (``parking`` is set) its messages are parked instead of sent
    (``kerna._cluster_parking``); a send that cannot connect goes to ``unreachable``,
    which parks it too.
    """

    __slots__ = ("address", "closed", "failure", "node", "parking", "remote", "unreachable")

    atype = RemoteRoute.atype  # the destination checks handlers itself

    def __init__(
        self,
        remote: Remote,
        node: str,
        address: str,
        unreachable: Callable[[ClusterRoute, Envelope, PeerUnreachable], None],
    ) -> None:
        self.remote = remote
        self.node = node
        self.address = address
        self.closed = False
        self.failure = None
        self.parking: Parking | None = None
        self.unreachable = unreachable

    def put(self, env: Envelope) -> Awaitable[None] | None:
        """Encode and send ``env`` to the node (see ``RemoteRoute.put``), or park it
        while the node is lost.

        Raises:
            WireError: the message cannot be encoded.
            MailboxFull: too many messages are parked for the lost node.
        """
        parking = self.parking
        if parking is not None:
            parking.park(env)
            return None
        sent = self.remote.send(self.address, env)
        if sent is None:
            return None
        if env.reply is None:
            return self._sending(env, sent)  # a tell: its sender awaits it
        return self.remote.own(self._sending(env, sent))  # an asker waits on a future

    async def _sending(self, env: Envelope, sent: Awaitable[None]) -> None:
        try:
            await sent
        except PeerUnreachable as exc:  # not queued: the node cannot be reached now
            self.unreachable(self, env, exc)

    def __repr__(self) -> str:
        return f"<ClusterRoute {self.node} at {self.address}>"


class LeavingRoute(ClusterRoute):
    """A ``ClusterRoute`` made while this node leaves: each message it forwards is
    reported to ``seen`` (a leaving node lingers while messages still reach it)."""

    __slots__ = ("seen",)

    def __init__(
        self,
        remote: Remote,
        node: str,
        address: str,
        unreachable: Callable[[ClusterRoute, Envelope, PeerUnreachable], None],
        seen: Callable[[], None],
    ) -> None:
        super().__init__(remote, node, address, unreachable)
        self.seen = seen

    def put(self, env: Envelope) -> Awaitable[None] | None:
        """See ``ClusterRoute.put``.

        Raises:
            WireError, MailboxFull: as ``ClusterRoute.put``.
        """
        self.seen()
        return super().put(env)


def check_placement(placement: str | None, name: str, *, stateful: bool) -> str:
    """The placement of agent type ``name`` (default ``"directory"``).

    Raises:
        ValueError: not one of ``PLACEMENTS``.
        RegistrationError: a stateful type placed other than through the directory.
    """
    if placement is None:
        return "directory"
    if placement not in PLACEMENTS:
        raise ValueError(
            f"placement of {name!r} must be one of {', '.join(PLACEMENTS)}; got {placement!r}"
        )
    if stateful and placement != "directory":
        raise RegistrationError(
            f"{name!r} is stateful: its activations always claim the agent, so its"
            f" placement is 'directory', not {placement!r}"
        )
    return placement
