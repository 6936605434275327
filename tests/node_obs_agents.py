"""Agents the node observability tests load (``[node] agents = ["tests.node_obs_agents"]``).

``Flaky`` fails its jobs until it is told ``Heal``: dead letters to list, then replay
once the fault is fixed. ``Gate`` holds its handlers until ``Open``: a queue to see.
"""

from __future__ import annotations

import asyncio

from kerna import Agent, Message, Request, handler


class Job(Message):
    n: int


class Heal(Message):
    pass


class Done(Request[list[int]]):
    pass


class Flaky(Agent):
    broken = True  # per process: one node per test module
    done: list[int] = []

    @handler
    async def job(self, msg: Job) -> None:
        if Flaky.broken:
            raise RuntimeError(f"job {msg.n}: the model is down")
        Flaky.done.append(msg.n)

    @handler
    async def heal(self, msg: Heal) -> None:
        Flaky.broken = False

    @handler
    async def finished(self, msg: Done) -> list[int]:
        return sorted(Flaky.done)


class Hold(Message):
    pass


class Open(Message):
    pass


class Gate(Agent):
    """Its ``Hold`` handlers wait until an ``Open`` reaches any Gate."""

    opened = asyncio.Event()

    @handler
    async def hold(self, msg: Hold) -> None:
        await Gate.opened.wait()

    @handler
    async def open(self, msg: Open) -> None:
        Gate.opened.set()
