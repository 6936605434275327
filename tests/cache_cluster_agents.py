"""Agents of the ``@cached(scope="cluster")`` failover test, importable by the node
in another process (``tests/cache_cluster_node.py``): wire tags name this module."""

from __future__ import annotations

import asyncio
from typing import ClassVar

from kerna import Agent, Message, Request, handler
from kerna.plugins import cached


class Question(Request[str]):
    text: str


class Started(Message):
    """Told to the test's ``Watcher`` when a computation starts (node, text)."""

    node: str
    text: str


class Sage(Agent):
    """A cluster-wide cached answer; on a node listed in ``hang_on`` the computation
    waits forever (until the node is killed)."""

    hang_on: ClassVar[frozenset[str]] = frozenset()

    @handler
    @cached(ttl=60, maxsize=100, scope="cluster")
    async def answer(self, msg: Question) -> str:
        node = self.kernel.node_id
        await self.ref("Watcher", "w").tell(Started(node=node, text=msg.text))
        if node in Sage.hang_on:
            await asyncio.Event().wait()
        return f"{msg.text} from {node}"
