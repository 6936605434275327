"""What holds in-process holds across the nodes of a cluster, through its routing (real
etcd, tcp): a handler's failure reaches the asker as a ``RemoteError`` with the remote
type name, message, traceback and node id; deadlines shrink down an ask chain that
crosses nodes; an ask cycle across nodes is a ``DeadlockError``; correlation and
causation ids follow the conversation; a deferred reply is answered from another node's
message. Each agent type is hosted by one node, so every hop crosses the wire."""

from __future__ import annotations

import asyncio

import pytest

from kerna import Agent, DeadlockError, PendingReply, RemoteError, Request, handler
from kerna.testing import EtcdMember

from .cluster import hosting, nodes

pytestmark = pytest.mark.anyio


class Boom(Request[int]):
    text: str


class Chain(Request[str]):
    """Front asks Back, which asks Front again: a cycle across nodes."""


class Context(Request[list[int]]):
    """The ids a handler sees: its message's, the correlation, the causation."""


class Time(Request[float]):
    """The time left of the message being handled."""


class Wait(Request[str]):
    """Answered once a Release comes (a deferred reply)."""


class Release(Request[None]):
    value: str


class Deferred(Request[int]):
    """How many deferred replies wait to be sent."""


class Front(Agent):
    @handler
    async def boom(self, msg: Boom) -> int:
        return await self.ref("Back", "b").ask(msg)  # Back's failure propagates

    @handler
    async def chain(self, msg: Chain) -> str:
        return await self.ref("Back", "b").ask(msg)

    @handler
    async def ids(self, msg: Context) -> list[int]:
        c = self.context
        back = await self.ref("Back", "b").ask(msg)
        return [c.message_id, c.correlation_id, c.causation_id, *back]

    @handler
    async def time(self, msg: Time) -> float:
        return await self.ref("Back", "b").ask(msg, timeout=30)


class Back(Agent):
    def __init__(self) -> None:
        self.waiting: list[PendingReply] = []

    @handler
    async def boom(self, msg: Boom) -> int:
        raise ValueError(msg.text)

    @handler
    async def chain(self, msg: Chain) -> str:
        try:
            return await self.ref("Front", "f").ask(msg)
        except DeadlockError as exc:
            return f"deadlock: {exc}"

    @handler
    async def ids(self, msg: Context) -> list[int]:
        c = self.context
        return [c.message_id, c.correlation_id, c.causation_id]

    @handler
    async def time(self, msg: Time) -> float:
        left = self.context.time_left()
        assert left is not None
        return left

    @handler
    async def wait(self, msg: Wait) -> str:
        self.waiting.append(self.defer_reply())
        return "ignored"

    @handler
    async def deferred(self, msg: Deferred) -> int:
        return len(self.waiting)

    @handler
    async def release(self, msg: Release) -> None:
        for pending in self.waiting:
            if msg.value == "fail":
                pending.fail(KeyError("no such thing"))
            else:
                pending.reply(msg.value)
        self.waiting.clear()


async def test_errors_deadlines_chains_ids_and_deferred_replies_work_across_nodes(
    etcd_server: EtcdMember,
) -> None:
    async with nodes(etcd_server, 3, ids=["n1", "n2", "n3"]) as (n1, n2, n3):
        n1.register(Front)
        n2.register(Back)
        for k in (n1, n2, n3):
            await k.wait_members(hosting("Front", n1), 5)
            await k.wait_members(hosting("Back", n2), 5)
        async with asyncio.timeout(20):
            # A typed remote error: straight from n3, and through Front on n1.
            with pytest.raises(RemoteError) as direct:
                await n3.ref("Back", "b").ask(Boom(text="bad input"), timeout=5)
            error = direct.value
            assert (error.type_name, error.message, error.node) == (
                "ValueError", "bad input", "n2",
            )  # fmt: skip
            assert "raise ValueError(msg.text)" in error.traceback
            with pytest.raises(RemoteError) as through:
                await n3.ref("Front", "f").ask(Boom(text="deeper"), timeout=5)
            assert through.value.type_name == "ValueError"
            assert through.value.node == "n2"  # where it was raised, not who passed it on

            # The ask chain crosses nodes: Back's ask of Front is a deadlock.
            reply = await n3.ref("Front", "f").ask(Chain(), timeout=5)
            assert reply.startswith("deadlock: ask cycle: ")
            assert "Front/f -> Back/b -> Front/f" in reply

            # The deadline shrinks down the chain: Back sees Front's time left, not 30 s.
            left = await n3.ref("Front", "f").ask(Time(), timeout=2)
            assert 0 < left <= 2

            # Correlation and causation ids follow the conversation across nodes.
            front_id, correlation, cause, back_id, back_correlation, back_cause = await n3.ref(
                "Front", "f"
            ).ask(Context(), timeout=5)
            assert correlation == front_id  # the root ask opened the conversation
            assert cause == 0
            assert back_correlation == correlation
            assert back_cause == front_id
            assert back_id not in (front_id, 0)

            # A deferred reply, answered when a message from another node comes.
            waiting = asyncio.ensure_future(n1.ref("Back", "b").ask(Wait(), timeout=5))
            while not await n1.ref("Back", "b").ask(Deferred(), timeout=5):
                pass  # until Back holds the deferred reply (bounded by the timeout above)
            await n3.ref("Back", "b").ask(Release(value="later"), timeout=5)
            assert await waiting == "later"
            failing = asyncio.ensure_future(n3.ref("Back", "b").ask(Wait(), timeout=5))
            while not await n3.ref("Back", "b").ask(Deferred(), timeout=5):
                pass
            await n1.ref("Back", "b").ask(Release(value="fail"), timeout=5)
            with pytest.raises(RemoteError) as deferred:
                await failing
            assert deferred.value.type_name == "KeyError"
            assert deferred.value.node == "n2"
