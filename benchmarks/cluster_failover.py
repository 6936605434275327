"""The failover time of a cluster node killed with SIGKILL under load, over N runs.

``.venv/bin/python -m benchmarks.cluster_failover [--runs 10] [--ttl 1.5] [--write]``
(the test venv: it reuses the tests' cluster harness, tests/cluster_load.py). Each run
is ``kill_owner_under_load``: three nodes on one real etcd (started here, on free
ports), four stateful counters homed on a node in a process of its own, increments
from the two others; the owner is killed and the time until every counter is served
again on a survivor (by an ask sent after the kill) is measured, and checked against
the lease TTL + 1 s. Every run also checks that no acknowledged increment was lost.
``--write`` writes benchmarks/RESULTS-failover.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import statistics
import sys
from pathlib import Path

from kerna.testing import running_etcd
from tests.cluster_load import Failover, kill_owner_under_load

HERE = Path(__file__).resolve().parent


async def _runs(count: int, ttl: float) -> list[Failover]:
    with running_etcd() as etcd:
        runs = []
        for i in range(count):
            run = await kill_owner_under_load(etcd, lease_ttl=ttl)
            lost = {k: (run.acked[k], v) for k, v in run.final.items() if v < run.acked[k]}
            print(f"run {i + 1}: served again after {run.served_after:.3f} s"
                  f"{'; LOST ' + str(lost) if lost else ''}", flush=True)  # fmt: skip
            runs.append(run)
        return runs


def _report(runs: list[Failover], ttl: float) -> str:
    times = sorted(run.served_after for run in runs)
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else times * 9
    lost = sum(1 for run in runs for k, v in run.final.items() if v < run.acked[k])
    within = sum(1 for t in times if t <= ttl + 1.0)
    load = os.getloadavg()
    return "\n".join([
        "# Cluster failover time (kill -9 of the owner under load)",
        "",
        f"`python -m benchmarks.cluster_failover --runs {len(runs)} --ttl {ttl:g}`, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} cores, load average {load[0]:.2f}, Python {sys.version.split()[0]}.",
        "",
        f"Lease TTL {ttl:g} s (a keepalive every TTL/3); target: served again within "
        f"TTL + 1 s = {ttl + 1:g} s.",
        "",
        "| runs | min | p50 | p90 | max | within target | counters with lost acks |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {len(runs)} | {times[0]:.3f} s | {statistics.median(times):.3f} s | {q[8]:.3f} s "
        f"| {times[-1]:.3f} s | {within}/{len(runs)} | {lost} |",
        "",
        "Every run: " + ", ".join(f"{t:.3f}" for t in (run.served_after for run in runs)) + " s.",
        "",
        "What the time is made of: the killed node's lease lives up to one TTL after its",
        "last keepalive (etcd grants whole seconds: a lease_ttl of 1.5 is a 2 s lease);",
        "etcd's lessor revokes expired leases on a 500 ms tick; the",
        "survivors' watch then drops its member record and claims, and the next ask claims",
        "the counter on a survivor and loads its last committed state.",
        "",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--ttl", type=float, default=2.0)
    parser.add_argument("--write", action="store_true", help="write RESULTS-failover.md")
    args = parser.parse_args()
    runs = asyncio.run(_runs(args.runs, args.ttl))
    report = _report(runs, args.ttl)
    print(report)
    if args.write:
        (HERE / "RESULTS-failover.md").write_text(report)


if __name__ == "__main__":
    main()
