"""A node hosting ``Sage`` (tests/cache_cluster_agents.py) for the cache's failover
test, in a process of its own: ``python -m tests.cache_cluster_node ETCD_URL CLUSTER
NODE_ID LEASE_TTL`` joins the cluster (its computations never end here: the test kills
this process mid-computation), prints its address once joined, and stops when its
stdin closes (or dies with the signal the test sends)."""

from __future__ import annotations

import asyncio
import sys

from kerna import Kernel

from .cache_cluster_agents import Sage
from .cluster import SECRET, TCP


async def main() -> None:
    url, cluster, node_id, ttl = sys.argv[1:5]
    Sage.hang_on = frozenset({node_id})
    async with Kernel(
        state=url,
        transport=TCP,
        cluster=cluster,
        node_id=node_id,
        secret=SECRET,
        lease_ttl=float(ttl),
        stop_grace=0.5,
    ) as kernel:
        kernel.register(Sage)
        await kernel.wait_members(lambda ms: any(m.id == node_id and m.types for m in ms), 10)
        print(kernel.address, flush=True)
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, sys.stdin.readline):
            pass


if __name__ == "__main__":
    asyncio.run(main())
