"""Agent identity: ``AgentId(type, key)``.

A leaf module: imports nothing from kerna.
"""

from __future__ import annotations

import msgspec

__all__ = ["AgentId"]


class AgentId(msgspec.Struct, frozen=True, gc=False):
    """The identity of a virtual agent: its registered type name and a key.

    Hashable and immutable; two ids are equal when type and key are. Users get ids from
    ``kernel.ref(...).id`` or ``self.id``; constructing one by hand is fine too.
    """

    type: str
    key: str

    def __str__(self) -> str:
        return f"{self.type}/{self.key}"
