"""A client node in a process of its own, hosting nothing, for the reply-matching test:
``python -m tests.cluster_client ETCD_URL CLUSTER NODE_ID ROUNDS IN_FLIGHT`` joins the
cluster, waits until a member hosts ``Mirror``, prints ``ready``, waits for a line on
stdin (so that two clients start at once), then asks ``Mirror/m`` ROUNDS times (at
least, and on for ``MIN_SECONDS``) IN_FLIGHT ``Stamp`` requests at once, each with
its own request number, and prints one JSON line: how many rounds and replies came,
how many were another asker's or another request's (mismatches), the request numbers
it saw twice, and when its asks began and ended."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter

from kerna import Kernel

from .cluster import SECRET, TCP
from .cluster_agents import Stamp, Stamped

MIN_SECONDS = 1.5
"""How long a client keeps asking at least: the two clients' runs overlap even when a
loaded machine starts one of them late."""


async def main() -> None:
    url, cluster, node_id, rounds, in_flight = sys.argv[1:6]
    async with Kernel(state=url, transport=TCP, cluster=cluster, node_id=node_id,
                      secret=SECRET, lease_ttl=2.0, stop_grace=0.2) as kernel:  # fmt: skip
        await kernel.wait_members(lambda ms: any("Mirror" in m.types for m in ms), 10)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        ref = kernel.ref("Mirror", "m")
        replies: list[tuple[int, Stamped]] = []
        errors: list[str] = []
        width = int(in_flight)

        async def one(n: int) -> None:
            try:
                replies.append((n, await ref.ask(Stamp(client=node_id, n=n), timeout=2)))
            except Exception as exc:  # reported to the test, which fails on any
                errors.append(f"{type(exc).__name__}: {exc}")

        began = time.time()
        done = 0  # at least ``rounds`` rounds, and on for MIN_SECONDS (the runs overlap)
        while done < int(rounds) or time.time() - began < MIN_SECONDS:
            await asyncio.gather(*(one(done * width + i) for i in range(width)))
            done += 1
        ended = time.time()
        mismatches = [
            (n, got.client, got.n) for n, got in replies if got.client != node_id or got.n != n
        ]
        seen = Counter(got.n for _, got in replies)
        print(json.dumps({
            "replies": len(replies),
            "rounds": done,
            "mismatches": mismatches[:10],
            "mismatch_count": len(mismatches),
            "duplicates": sorted(n for n, times in seen.items() if times > 1)[:10],
            "servers": sorted({got.node for _, got in replies}),
            "errors": errors[:5],
            "error_count": len(errors),
            "began": began,
            "ended": ended,
        }), flush=True)  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
