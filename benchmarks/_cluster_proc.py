"""One process of the cluster benchmarks (``benchmarks.cluster_bench``).

``python -m benchmarks._cluster_proc node ETCD_URL CLUSTER NODE_ID LEASE_TTL LOOP``
runs a cluster node hosting ``Echo`` (W5's echo, ``benchmarks._net_kerna``) and
``Counter`` (a stateful agent), prints ``ready ADDRESS`` once its own member record is
in its view, and runs until SIGTERM (``cluster_bench`` stops it by PID, or kills it).

``python -m benchmarks._cluster_proc call ETCD_URL CLUSTER LOOP WORKLOAD SIZE`` is W5's
caller as a cluster node that hosts nothing: ``kernel.ref("Echo", "e")`` by name, the
cluster routes it (placement: the directory claim the echo's home made); after
``_net_proc``'s warm-up asks it runs ``seq`` or ``conc`` and prints the metrics as JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import cast

from kerna import AgentRef, Kernel

from ._cluster_agents import Counter
from ._common import LoopName, run_async
from ._net_kerna import Echo, Ping, Pong
from ._net_proc import _measure, pin

__all__ = ["SECRET", "ClusterCaller", "cluster_kernel", "main"]

SECRET = b"cluster bench secret"


def cluster_kernel(url: str, cluster: str, node_id: str, lease_ttl: float) -> Kernel:
    return Kernel(
        state=url, transport="tcp://127.0.0.1:0", cluster=cluster, node_id=node_id,
        secret=SECRET, lease_ttl=lease_ttl,
    )  # fmt: skip


async def _node(url: str, cluster: str, node_id: str, lease_ttl: float) -> None:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    async with cluster_kernel(url, cluster, node_id, lease_ttl) as kernel:
        kernel.register(Echo)
        kernel.register(Counter)
        await kernel.wait_members(lambda ms: any(m.id == node_id and m.types for m in ms), 30)
        print(f"ready {kernel.address}", flush=True)
        await asyncio.Event().wait()


class ClusterCaller:
    """W5's caller through placement: the echo by name, wherever the cluster has it."""

    def __init__(self, kernel: Kernel) -> None:
        self.echo: AgentRef = kernel.ref("Echo", "e")

    async def ask(self, n: int) -> int:
        pong: Pong = await self.echo.ask(Ping(n))
        return pong.n

    async def tell(self, n: int) -> None:
        raise NotImplementedError("the cluster benchmark measures asks only")

    async def last_tell_ns(self, n: int) -> int:
        raise NotImplementedError("the cluster benchmark measures asks only")


async def _call(url: str, cluster: str, workload: str, size: float) -> dict[str, float]:
    async with cluster_kernel(url, cluster, f"caller-{os.getpid()}", 10.0) as kernel:
        await kernel.wait_members(lambda ms: any("Echo" in m.types for m in ms), 30)
        caller = ClusterCaller(kernel)
        result = await _measure(caller, workload, size)
        located = await caller.echo.locate()
        if located is None or located == kernel.node_id:
            raise RuntimeError(f"the echo was not remote (located on {located!r})")
        return result


def main(argv: list[str]) -> int:
    role = argv[0]
    pin("serve" if role == "node" else "call")
    if role == "node":
        url, cluster, node_id, ttl, loop = argv[1:6]
        try:
            run_async(lambda: _node(url, cluster, node_id, float(ttl)), cast(LoopName, loop))
        except asyncio.CancelledError:
            pass  # SIGTERM: the normal end of a node
        return 0
    if role == "call":
        url, cluster, loop, workload, size = argv[1:6]
        result = run_async(lambda: _call(url, cluster, workload, float(size)), cast(LoopName, loop))
        print(json.dumps(result), flush=True)
        return 0
    raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
