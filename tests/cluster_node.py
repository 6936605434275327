"""A cluster node in a process of its own, for the failover tests:
``python -m tests.cluster_node ETCD_URL CLUSTER NODE_ID LEASE_TTL`` joins the cluster
hosting ``Ledger``, ``Billing``, ``Journal``, ``Mirror`` and ``Stall`` (tests/cluster_agents.py),
prints its address once joined, and stops when its stdin closes (or dies with the
signal a test sends). Each line ``stats`` on stdin is answered on stdout with one JSON
line: per hosted type, its active agents, activations and handled messages, and the
number of times this node rejoined under a new lease (tests/cluster_proc.py)."""

from __future__ import annotations

import asyncio
import json
import sys

from kerna import Kernel

from .cluster import SECRET, TCP
from .cluster_agents import Billing, Journal, Ledger, Mirror, Stall


def _stats(kernel: Kernel) -> str:
    types = {
        name: {"active": t.active, "activations": t.activations, "handled": t.handled}
        for name, t in kernel.stats().types.items()
    }
    return json.dumps({"types": types, "members": sorted(m.id for m in kernel.members())})


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
        for agent in (Ledger, Billing, Journal, Mirror, Stall):
            kernel.register(agent)
        await kernel.wait_members(lambda ms: any(m.id == node_id and m.types for m in ms), 10)
        print(kernel.address, flush=True)
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            if line.strip() == "stats":
                print(_stats(kernel), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
