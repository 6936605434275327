"""Identities: ``AgentId(type, key)`` for agents, and message ids.

A leaf module: imports nothing from kerna.

Message ids (and the correlation and causation ids copied from them) are unique across
processes and restarts without a uuid per message: an id is a positive 63-bit int whose
high 31 bits are a random prefix and whose low 32 bits count up; when the counter runs
out (after 4 billion messages) a new prefix is drawn. Making one costs what a plain
counter costs (C iterators all the way), it fits every int column and encoding
(msgpack, JSON, a signed 64-bit integer), and two processes share a prefix with
probability 2**-31.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator
from typing import Any

import msgspec

__all__ = ["AgentId", "message_ids"]


class AgentId(msgspec.Struct, frozen=True, gc=False):
    """The identity of a virtual agent: its registered type name and a key.

    Hashable and immutable; two ids are equal when type and key are. Users get ids from
    ``kernel.ref(...).id`` or ``self.id``; constructing one by hand is fine too.
    """

    type: str
    key: str

    def __str__(self) -> str:
        return f"{self.type}/{self.key}"


_COUNTER_BITS = 32


def _epoch(_: Any) -> range:
    """The ids under one fresh random prefix (never 0, so that no id is 0)."""
    prefix = (secrets.randbelow((1 << 31) - 1) + 1) << _COUNTER_BITS  # 1 .. 2**31 - 1
    return range(prefix + 1, prefix + (1 << _COUNTER_BITS))


def message_ids() -> Iterator[int]:
    """A fresh, endless id sequence (see the module docstring)."""
    return itertools.chain.from_iterable(map(_epoch, itertools.repeat(None)))
