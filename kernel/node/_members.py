"""The cluster's members, as the node's status, metrics and ``/readyz`` see them.

``Kernel.members()`` is the live member set the node's watch shows. A node that runs
alone (no cluster: no transport, or ``memory://`` state) has none to report: ``None``,
not an empty list, so status says it runs alone rather than that its cluster is empty.
"""

from __future__ import annotations

from typing import Any

import msgspec

from kerna import Kernel, Member

__all__ = ["joined", "members_of"]


def members_of(kernel: Kernel) -> list[dict[str, Any]] | None:
    """The live members as JSON-ready values (by node id), or None when the kernel is
    not in a cluster."""
    if kernel.cluster is None:
        return None
    members: list[dict[str, Any]] = msgspec.to_builtins(kernel.members())
    return members


def joined(kernel: Kernel) -> str | None:
    """None when the node has joined its cluster (or runs alone): its own member record,
    under its id and at its address, is in its view of the members, written under the
    live lease it holds (``Kernel.joined``). Otherwise why not.
    """
    if kernel.cluster is None:
        return None
    mine: Member | None = next((m for m in kernel.members() if m.id == kernel.node_id), None)
    if mine is None:
        return f"not a member of cluster {kernel.cluster!r} (no record under {kernel.node_id!r})"
    if mine.address != kernel.address:
        return (
            f"not a member of cluster {kernel.cluster!r}: the record under {kernel.node_id!r}"
            f" is another node's (at {mine.address}, this node is at {kernel.address})"
        )
    if not kernel.joined:  # the record seen is its old lease's: it has none live now
        return (
            f"not a member of cluster {kernel.cluster!r}: it holds no live lease (it could"
            " not refresh it) and has not registered under a new one yet"
        )
    return None
