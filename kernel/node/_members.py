"""The cluster's members, as the node's status and metrics show them.

``Kernel.members()`` comes with the cluster (membership); until the kernel has it, a
node reports no member list (``None``) rather than a made-up one.
"""

from __future__ import annotations

from typing import Any

import msgspec

from kerna import Kernel

__all__ = ["members_of"]


def members_of(kernel: Kernel) -> list[Any] | None:
    """The live members as JSON-ready values, or None when the kernel has no
    membership (no ``members()``)."""
    members = getattr(kernel, "members", None)
    if not callable(members):
        return None
    found = members()
    return [msgspec.to_builtins(member) for member in found]
