"""kerna.state: typed agent state on a key-value store with revisions.

Backends are chosen by URL (``memory://``, ``sqlite:///path.db``, ``etcd://h:2379``)
through ``connect``; ``StateBackend`` is what a new backend implements (and registers
under the ``kerna.state_backends`` entry point group). On top of any backend:
``Replica`` (a watch-fed local mirror), ``EventLog`` (audit trail and time travel of
event-sourced agents), ``Lock``, ``Election`` and ``KeptLease``.
"""

from ._backend import StateBackend
from ._eventlog import EventLog, EventRecord, EventSourcing
from ._layout import Layout
from ._locks import Election, KeptLease, Lock
from ._registry import backend_class, connect, schemes
from ._replica import Replica
from ._types import Compare, Delete, Get, KeyValue, Op, Page, Put, TxnResult, WatchEvent

__all__ = [
    "Compare",
    "Delete",
    "Election",
    "EventLog",
    "EventRecord",
    "EventSourcing",
    "Get",
    "KeptLease",
    "KeyValue",
    "Layout",
    "Lock",
    "Op",
    "Page",
    "Put",
    "Replica",
    "StateBackend",
    "TxnResult",
    "WatchEvent",
    "backend_class",
    "connect",
    "schemes",
]
