"""Value types every state backend speaks: key-values with revisions, transactions,
watch events and pages.

Semantics follow etcd v3, the reference backend: one global revision counter that
every write transaction increments once; per key ``create_revision`` (0: absent),
``mod_revision`` and ``version`` (writes since creation).
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = [
    "Compare",
    "Delete",
    "Get",
    "KeyValue",
    "Op",
    "Page",
    "Put",
    "TxnResult",
    "WatchEvent",
]


class KeyValue(msgspec.Struct, frozen=True, gc=False):
    """A stored key with its value and revisions.

    Attributes:
        key: the key.
        value: the stored bytes.
        create_revision: revision of the write that created the key.
        mod_revision: revision of the last write to the key.
        version: number of writes since the key was created (1 after creation).
        lease: id of the lease the key is attached to (0: none).
    """

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int = 1
    lease: int = 0


CompareTarget = Literal["value", "version", "create", "mod", "lease"]
CompareOp = Literal["==", "!=", "<", ">"]


class Compare(msgspec.Struct, frozen=True):
    """One condition of a transaction, evaluated on the key's current revisions.

    An absent key has ``create == mod == version == 0``, ``lease == 0`` and no value
    (a value comparison on an absent key is false). Use the constructors for the
    common cases: ``Compare.absent(k)``, ``Compare.mod_is(k, rev)``,
    ``Compare.created_at(k, rev)``.
    """

    key: str
    target: CompareTarget
    op: CompareOp
    value: int | bytes

    @classmethod
    def absent(cls, key: str) -> Compare:
        return cls(key, "create", "==", 0)

    @classmethod
    def mod_is(cls, key: str, revision: int) -> Compare:
        """The key's last write was at ``revision`` (0: the key is absent)."""
        return cls(key, "mod", "==", revision)

    @classmethod
    def created_at(cls, key: str, revision: int) -> Compare:
        """The key exists and was created at ``revision`` (a fencing token check)."""
        return cls(key, "create", "==", revision)

    def holds(self, kv: KeyValue | None) -> bool:
        """Evaluate against ``kv`` (None: absent). Backends without native
        transactions use this so that every backend compares the same way."""
        if self.target == "value":
            if kv is None:
                return False
            actual: int | bytes = kv.value
        elif kv is None:
            actual = 0
        elif self.target == "create":
            actual = kv.create_revision
        elif self.target == "mod":
            actual = kv.mod_revision
        elif self.target == "version":
            actual = kv.version
        else:
            actual = kv.lease
        expected = self.value
        if type(actual) is not type(expected):
            raise TypeError(f"compare {self.target} of {self.key!r} with {expected!r}")
        if self.op == "==":
            return actual == expected
        if self.op == "!=":
            return actual != expected
        if self.op == "<":
            return actual < expected  # type: ignore[operator]
        return actual > expected  # type: ignore[operator]


class Put(msgspec.Struct, frozen=True):
    """Write ``value`` at ``key``, attached to ``lease`` (0: none)."""

    key: str
    value: bytes
    lease: int = 0


class Delete(msgspec.Struct, frozen=True):
    """Delete ``key`` (every key starting with it when ``prefix``)."""

    key: str
    prefix: bool = False


class Get(msgspec.Struct, frozen=True):
    """Read ``key`` inside a transaction (its result is in ``TxnResult.gets``)."""

    key: str


Op = Put | Delete | Get


class TxnResult(msgspec.Struct, frozen=True):
    """Outcome of ``txn``.

    Attributes:
        succeeded: whether every compare held (the success branch ran).
        revision: the store's revision after the transaction.
        gets: one entry per ``Get`` of the branch that ran, in order (None: absent).
    """

    succeeded: bool
    revision: int
    gets: tuple[KeyValue | None, ...] = ()


class WatchEvent(msgspec.Struct, frozen=True, gc=False):
    """A change seen by a watch.

    For a delete, ``kv.value`` is empty and ``kv.mod_revision`` is the revision of the
    deletion.
    """

    kind: Literal["put", "delete"]
    kv: KeyValue

    @property
    def revision(self) -> int:
        return self.kv.mod_revision


class Page(msgspec.Struct, frozen=True):
    """One page of a ``range``: keys in order, the store revision, and whether more
    keys follow within the range's bounds (continue with ``start_after=kvs[-1].key``)."""

    kvs: tuple[KeyValue, ...]
    revision: int
    more: bool
