"""kerna.state: typed agent state on a key-value store with revisions.

Backends are chosen by URL (``memory://``, ``sqlite:///path.db``, ``etcd://h:2379``)
through ``connect``; the ``StateBackend`` base class is what a new backend implements.
"""

from ._backend import StateBackend
from ._registry import backend_class, connect, schemes
from ._types import Compare, Delete, Get, KeyValue, Op, Page, Put, TxnResult, WatchEvent

__all__ = [
    "Compare",
    "Delete",
    "Get",
    "KeyValue",
    "Op",
    "Page",
    "Put",
    "StateBackend",
    "TxnResult",
    "WatchEvent",
    "backend_class",
    "connect",
    "schemes",
]
