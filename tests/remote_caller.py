"""A caller node in its own process, for tests that need two real caller processes.

``python -m tests.remote_caller LISTEN SERVER N BASE``: starts ``Kernel(transport=LISTEN)``,
makes one ask of ``Echo/shared`` on the node at ``SERVER`` (connected, handshaken), prints
``ready``, waits for a line on stdin, then makes ``N`` concurrent asks ``Ping(BASE + i)``
and prints their replies' ``n`` as one JSON list, in the order asked.

Each process has its own id counters, starting where the other's start: replies that a
node matched to asks by a per-process id alone would go to the wrong caller (autogen
upstream issue #7016). ``Echo`` (the server's agent) lives here so both sides share tags;
request numbers below 1,000,000 per caller (``BASE`` a multiple of it).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import ClassVar

from kerna import Agent, Kernel, Message, PendingReply, Request, handler


class Echoed(Message, tag="tests.remote.Echoed"):  # run as __main__: explicit tags
    n: int


class Say(Request[Echoed], tag="tests.remote.Say"):
    n: int


class Echo(Agent):
    """Holds the replies to its asks until ``hold`` of them are in (so both callers'
    asks are in flight at once), then sends them alternating between the callers.
    A negative ``n`` (the warm-up ask) is answered at once."""

    hold: ClassVar[int] = 0

    def __init__(self) -> None:
        self.held: list[tuple[int, PendingReply]] = []

    @handler
    async def say(self, msg: Say) -> PendingReply:
        pending = self.defer_reply()
        if msg.n < 0:
            pending.reply(Echoed(n=msg.n))
            return pending
        self.held.append((msg.n, pending))
        if len(self.held) == self.hold:
            for n, held in sorted(self.held, key=lambda x: (x[0] % 1_000_000, x[0])):
                held.reply(Echoed(n=n))
            self.held = []
        return pending


async def main(listen: str, server: str, n: int, base: int) -> None:
    async with Kernel(transport=listen, stop_grace=0.5) as kernel:
        ref = kernel.ref("Echo", "shared", node=server)
        await ref.ask(Say(n=-1), timeout=20)
        print("ready", flush=True)
        await asyncio.wait_for(asyncio.to_thread(sys.stdin.readline), 30)
        replies = await asyncio.gather(*(ref.ask(Say(n=base + i), timeout=20) for i in range(n)))
        print(json.dumps([reply.n for reply in replies]), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
