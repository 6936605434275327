"""A kerna node in a process of its own, for the cross-process tests:
``python -m tests.remote_server`` starts a Kernel on tcp://127.0.0.1:0 hosting
``tests.agents.Echo``, prints its address, and stops when its stdin closes."""

from __future__ import annotations

import asyncio
import sys

from kerna import Kernel

from .agents import Echo


async def main() -> None:
    async with Kernel(transport="tcp://127.0.0.1:0", stop_grace=0.5) as kernel:
        kernel.register(Echo)
        print(kernel.address, flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # until the test closes stdin
        print(f"dead letters {kernel.stats().dead_letters}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
