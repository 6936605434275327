"""A node leaving gracefully (real etcd, tcp) hands an agent with deferred replies not
yet sent off only once they are sent, within the stop's grace (as the idle collector
spares such an agent): a reply sent shortly after ``stop()`` began reaches its asker on
another node; one never sent fails its asker with ``KernelStopped`` at the grace's end,
not before."""

from __future__ import annotations

import asyncio
import logging

import pytest

from kerna import Agent, KernelStopped, PendingReply, RemoteError, Request, handler
from kerna.testing import EtcdMember

from .cluster import hosting, node, nodes

pytestmark = pytest.mark.anyio

GRACE = 1.5


class Later(Request[str]):
    pass


class Deferring(Agent):
    """Takes every ask's reply along, for the test to send (or not)."""

    pending: dict[str, PendingReply] = {}
    deferred = asyncio.Event()

    @handler
    async def later(self, msg: Later) -> str:
        Deferring.pending[self.id.key] = self.defer_reply()
        if len(Deferring.pending) == 2:
            Deferring.deferred.set()
        return ""


class _Seen(logging.Handler):
    """Sets ``event`` when a record containing ``text`` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.INFO)
        self.text = text
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


def _stopped(error: BaseException) -> bool:
    return isinstance(error, KernelStopped) or (
        isinstance(error, RemoteError) and error.type_name.endswith("KernelStopped")
    )


async def test_a_leaving_node_sends_deferred_replies_within_the_grace_and_fails_the_rest_at_its_end(
    etcd_server: EtcdMember,
) -> None:
    Deferring.pending, Deferring.deferred = {}, asyncio.Event()
    waiting = _Seen("deferred replies")
    logger = logging.getLogger("kerna.activation")
    logger.addHandler(waiting)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        async with nodes(etcd_server, 1, ids=["n2"]) as (n2,):
            assert n2.cluster is not None
            async with node(etcd_server, n2.cluster, node_id="n1", stop_grace=GRACE) as n1:
                n1.register(Deferring)
                await n2.wait_members(hosting("Deferring", n1), 5)
                loop = asyncio.get_running_loop()
                answered = asyncio.ensure_future(n2.ref("Deferring", "soon").ask(Later()))
                unanswered = asyncio.ensure_future(n2.ref("Deferring", "never").ask(Later()))
                async with asyncio.timeout(10):
                    await Deferring.deferred.wait()
                    began = loop.time()
                    stopping = asyncio.ensure_future(n1.stop())
                    # The hand-off waits for the replies (logged), or (the defect) fails
                    # them at once: the asker's ask ends first.
                    await asyncio.wait(
                        [asyncio.ensure_future(waiting.event.wait()), answered],
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    assert not answered.done(), f"failed before its reply: {answered!r}"
                    Deferring.pending["soon"].reply("done")
                    assert await answered == "done"
                    with pytest.raises((KernelStopped, RemoteError)) as failed:
                        await unanswered
                    at = loop.time()
                    assert _stopped(failed.value), repr(failed.value)
                    assert "node left before it replied" in str(failed.value)
                    assert at >= began + GRACE - 0.05, f"failed {at - began:.3f}s into the stop"
                    await stopping
                assert at - began < GRACE + 3.0  # at the grace's end, not much later
    finally:
        logger.removeHandler(waiting)
        logger.setLevel(old_level)
