"""A numbered stream of tells and the agent that records it, for the tests of order
and gap counting across nodes (``test_delivery_gaps``, ``test_cluster_gaps``,
``test_cluster_handoff_inflight``)."""

from __future__ import annotations

import asyncio

from kerna import Agent, Message, handler

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
