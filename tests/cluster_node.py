"""A cluster node in a process of its own, for the failover tests:
``python -m tests.cluster_node ETCD_URL CLUSTER NODE_ID LEASE_TTL`` joins the cluster
hosting ``Ledger`` and ``Billing`` (tests/cluster_agents.py), prints its address once
joined, and stops when its stdin closes (or dies with the signal a test sends)."""

from __future__ import annotations

import asyncio
import sys

from kerna import Kernel

from .cluster import SECRET, TCP
from .cluster_agents import Billing, Ledger


async def main() -> None:
    url, cluster, node_id, ttl = sys.argv[1:5]
    async with Kernel(
        state=url,
        transport=TCP,
        cluster=cluster,
        node_id=node_id,
        secret=SECRET,
        lease_ttl=float(ttl),
        stop_grace=0.5,
    ) as kernel:
        kernel.register(Ledger)
        kernel.register(Billing)
        await kernel.wait_members(lambda ms: any(m.id == node_id and m.types for m in ms), 10)
        print(kernel.address, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    asyncio.run(main())
