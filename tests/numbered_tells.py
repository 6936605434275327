"""A numbered stream of tells and the agent that records it, for the tests of order
and gap counting across nodes (``test_delivery_gaps``, ``test_cluster_gaps``,
``test_cluster_handoff_inflight``)."""

from __future__ import annotations

import asyncio

from kerna import Agent, AgentRef, Message, handler
from kerna.testing import FaultProxy

WAIT = 10.0  # every wait is bounded by this (a loaded machine is slow)
OPTIONS = {"backoff_initial": 0.01, "backoff_max": 0.05, "reconnect_attempts": 1000}
"""tcp options that reconnect at once and keep trying, for links a fault proxy resets."""


class Numbered(Message, tag="test.gaps.Numbered"):
    n: int


SEEN: list[int] = []
"""The numbers the ``Recorder`` handled, in order (clear it at a test's start)."""
ARRIVED = asyncio.Event()


class Recorder(Agent):
    @handler
    async def numbered(self, msg: Numbered) -> None:
        SEEN.append(msg.n)
        ARRIVED.set()


async def until_seen(n: int) -> None:
    """Wait (bounded) until the recorder has handled a number of at least ``n``."""
    async with asyncio.timeout(WAIT):
        while not SEEN or SEEN[-1] < n:
            ARRIVED.clear()
            await ARRIVED.wait()


async def tell_through_resets(
    ref: AgentRef, proxy: FaultProxy, tolerated: tuple[type[Exception], ...]
) -> tuple[int, set[int], dict[str, int]]:
    """Tell ``ref`` numbered messages in a steady stream while ``proxy`` resets the link
    three times (each healed once 50 more were seen), then 20 more after the stream
    flows again, all seen. Returns the last number sent, the numbers whose tell raised
    one of ``tolerated`` (not sent), and those errors by type name; any other error
    ends the stream and is raised here."""
    SEEN.clear()
    sent = 0
    failed: set[int] = set()
    refused: dict[str, int] = {}
    stop = asyncio.Event()

    async def stream() -> None:
        nonlocal sent
        while not stop.is_set():
            sent += 1
            try:
                await ref.tell(Numbered(n=sent))
            except tolerated as exc:
                failed.add(sent)
                refused[type(exc).__name__] = refused.get(type(exc).__name__, 0) + 1
            if sent % 8 == 0:
                await asyncio.sleep(0)  # let the frames go out: a steady stream

    sender = asyncio.create_task(stream())
    try:
        for _ in range(3):  # three resets mid-stream, each healed
            await until_seen(sent + 50)
            await proxy.reset()
            await asyncio.sleep(0)
            await proxy.heal()
        await until_seen(sent + 50)  # flowing again after the last reset
    finally:
        stop.set()
        await sender
    for _ in range(20):  # the tail: numbered frames after every loss
        sent += 1
        await ref.tell(Numbered(n=sent))
    await until_seen(sent)
    return sent, failed, refused
