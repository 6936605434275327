"""The Kernel as a node among others: its id and address, its cluster's members, and
the wire schemas its peers disagree on.

A mixin of ``Kernel`` (``kerna._kernel``), kept apart so that the facade stays about
starting, stopping, registering and sending; everything here asks the runtime's
``Cluster`` (``kerna._cluster``) or ``Remote`` (``kerna._remote``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ._errors import UsageError
from ._options import check_timeout

if TYPE_CHECKING:
    from ._cluster_members import Member
    from ._runtime import Runtime

__all__ = ["KernelCluster"]


class KernelCluster:
    """What a ``Kernel`` knows of the other nodes (see the module docstring)."""

    _runtime: Runtime
    _node_id: str

    def members(self) -> list[Member]:
        """The live members of this kernel's cluster, by node id (this node included
        once started), as the watch of the member keys shows them now; empty without
        a cluster. A member is live while its lease is: a node killed without
        stopping is listed until its lease expires (``lease_ttl``)."""
        cluster = self._runtime.cluster
        return [] if cluster is None else cluster.members()

    @property
    def joined(self) -> bool:
        """True while this node is a live member of its cluster: it holds a live lease
        and its member record, written under that lease, is in its view of the members.
        False without a cluster, before start, and from the loss of its lease (it
        could not refresh it: the store may still show its old record for a while)
        until it has registered again under a new one (``/readyz`` of ``kerna node``
        fails meanwhile)."""
        cluster = self._runtime.cluster
        membership = None if cluster is None else cluster.membership
        return membership is not None and membership.joined()

    async def wait_members(
        self, condition: Callable[[list[Member]], bool], timeout: float = 10.0
    ) -> list[Member]:
        """Wait until ``condition(members)`` holds for the live members (checked now and
        at every change the watch shows); returns those members. E.g. wait for three
        nodes: ``await kernel.wait_members(lambda ms: len(ms) == 3)``.

        Raises:
            UsageError: the kernel is not a running node of a cluster.
            TimeoutError: the condition did not hold within ``timeout`` seconds (the
                message lists the members then).
            ValueError, TypeError: ``timeout`` is not a positive number.
        """
        check_timeout(timeout, "wait_members timeout")
        cluster = self._runtime.cluster
        if cluster is None or self._runtime.stopped:
            raise UsageError("wait_members() needs a running node of a cluster")
        return await cluster.wait_members(condition, timeout)

    @property
    def node_id(self) -> str:
        """This kernel's node id (``Kernel(node_id=...)``, or the default)."""
        return self._node_id

    def schema_mismatches(self) -> dict[str, list[str]]:
        """Per peer node, the message tags whose wire schemas are incompatible with this
        node's (checked as ``kerna schema check`` does, from the schema documents nodes
        exchange when they meet: the tcp handshake, nats probes; each is also logged
        once). A compatible difference is not listed (it is logged at INFO). Empty
        without a transport or when every shared tag is compatible; the node's status
        reports it."""
        remote = self._runtime.remote
        return {} if remote is None else remote.schema_mismatches()

    @property
    def address(self) -> str | None:
        """Where other nodes reach this kernel (its transport's address, once started;
        None without a transport)."""
        remote = self._runtime.remote
        return None if remote is None else remote.address
