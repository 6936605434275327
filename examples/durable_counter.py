"""A durable counter on sqlite: run it twice and the count goes on where it stopped.

The counter is an agent with a declared state; ``await self.save(new)`` writes it to
the sqlite file (a compare-and-swap on the revision it read), and the next activation,
in this process or a later one, starts from what was saved. Stopping is not required
for durability: a saved state is on disk when ``save`` returns.

Run it::

    python examples/durable_counter.py counter.db        # count: 1
    python examples/durable_counter.py counter.db --by 5 # count: 6

The same code runs on etcd by changing the URL: ``Kernel(state="etcd://127.0.0.1:2379")``.
"""

import argparse
import asyncio
from pathlib import Path

import msgspec

from kerna import Agent, Kernel, Message, handler


class Count(msgspec.Struct, frozen=True):
    """The counter's state: a frozen Struct (what is stored, as msgpack)."""

    n: int = 0


class Increment(Message, tag="counter.increment"):
    by: int = 1


class Counted(Message, tag="counter.counted"):
    n: int


class Counter(Agent, state=Count):
    @handler
    async def increment(self, msg: Increment) -> Counted:
        await self.save(Count(n=self.state.n + msg.by))
        return Counted(n=self.state.n)


async def main(state: str, by: int) -> int:
    async with Kernel(state=state) as kernel:
        kernel.register(Counter)
        counted = await kernel.ref(Counter, "visits").ask(Increment(by=by), timeout=5.0)
        n: int = counted.n
        return n


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="A durable counter on sqlite.")
    parser.add_argument("db", type=Path, help="the sqlite file (created if missing)")
    parser.add_argument("--by", type=int, default=1, help="how much to add (default 1)")
    args = parser.parse_args()
    # Four slashes: "sqlite:///" and then an absolute path (SQLAlchemy's convention).
    url = f"sqlite:///{args.db.resolve()}"
    print(f"count: {asyncio.run(main(url, args.by))}")
