"""kerna's side of W5/W6: an ``Echo`` and a ``Sink`` agent on a node with a transport.

The server is ``Kernel(transport=URL)`` with both agents registered; the caller is a
second kernel with its own transport (replies come back to it) reaching them with
``kernel.ref("Echo", "e", node=server_address)``. Default ``Kernel()`` settings
otherwise (mailbox 1000, ``wait`` overflow, ask timeout 30 s, stats on).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from kerna import Agent, AgentRef, Kernel, Message, Request, handler

__all__ = ["Caller", "Echo", "LastTell", "Ping", "Pong", "Sink", "Tick", "serve"]


class Pong(Message):
    """The echo's reply."""

    n: int


class Ping(Request[Pong]):
    """The request: a typed ask, so the caller's node knows the reply's type without
    registering an agent that handles it."""

    n: int


class Tick(Message):
    """W6's one-way message."""

    n: int


class LastTell(Request[int]):
    """Asked of the ``Sink`` after ``n`` tells: when it handled the last one."""

    n: int


class Echo(Agent):
    """Replies ``Pong(n)`` to ``Ping(n)``."""

    @handler
    async def on_ping(self, msg: Ping) -> Pong:
        return Pong(msg.n)


class Sink(Agent):
    """Counts ``Tick`` tells; ``LastTell`` (queued behind them) reports the last's time."""

    count = 0
    last = 0

    @handler
    async def on_tick(self, msg: Tick) -> None:
        self.count += 1
        self.last = time.perf_counter_ns()

    @handler
    async def on_last(self, msg: LastTell) -> int:
        return self.last if self.count >= msg.n else -self.count


async def serve(url: str, ready: Callable[[str], None]) -> None:
    """Run a node listening on ``url`` with ``Echo`` and ``Sink`` until cancelled."""
    async with Kernel(transport=url) as kernel:
        kernel.register(Echo)
        kernel.register(Sink)
        assert kernel.address is not None
        ready(kernel.address)
        await asyncio.Event().wait()


class Caller:
    """Refs to the server's ``Echo`` and ``Sink`` from the caller's kernel."""

    def __init__(self, kernel: Kernel, node: str) -> None:
        self.echo: AgentRef = kernel.ref("Echo", "e", node=node)
        self.sink: AgentRef = kernel.ref("Sink", "s", node=node)

    async def ask(self, n: int) -> int:
        pong: Pong = await self.echo.ask(Ping(n))
        return pong.n

    async def tell(self, n: int) -> None:
        await self.sink.tell(Tick(n))

    async def last_tell_ns(self, n: int) -> int:
        last: int = await self.sink.ask(LastTell(n))
        if last < 0:
            raise RuntimeError(f"kerna W6: the receiver counted {-last:,} of {n:,} tells")
        return last
