"""``kerna demo --nodes N``: the document pipeline across N ``kerna node`` processes.

``run_cluster_demo(docs, nodes=3)`` starts a throwaway etcd (``kerna.testing``'s
``running_etcd``: free ports, a temporary directory), N ``kerna node`` processes
(``n1``..``nN``, each loading ``kerna.demo._nodes``) and, in this process, a driver
kernel that joins the same cluster and hosts only the Collector (the run's tally lives
here). The driver uploads the first half of the corpus (a tell to the node's ``Ingest``
shard, which publishes it on its node, then an ask to an Orchestrator, wherever the
cluster places each), waits until that half is accounted for, kills one node (``n2``)
with SIGKILL, and uploads the second half on the survivors.

Why the kill falls between the halves: delivery is at-most-once, so a message in flight
to a killed node is lost, and which messages those are depends on timing. Killing
while the pipeline is between two batches keeps the outcome the same on every run: the
counts depend only on the seed (``fault_plan``), as in the embedded demo. What the kill
shows is the failover: the dead node stays a member until its lease (``lease_ttl``)
expires, the survivors then place its agents on themselves, and the second half is
sent once every node's member view agrees (no placement by a stale view). The
*failover time* is from the SIGKILL to the first reply served by a survivor to an
Orchestrator the dead node hosted.

At the end the driver stops, every node gets SIGTERM (and its exit is awaited, bounded),
and etcd is stopped by its PID; the temporary directory is removed. Latencies compare
``time.perf_counter()`` values taken in different processes: on one host that clock is
the system-wide monotonic clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from kerna import AgentRef, ConfigError, KernaError, Kernel
from kerna.testing import ServerNotInstalled, data_root, free_ports, running_etcd

from ._agents import COLLECTOR, SHARDS, Collector, Tally, error_text
from ._corpus import fault_plan, make_corpus
from ._driver import (
    DemoReport,
    ProgressFn,
    _check_args,
    _tick,
    loop_factory,
    tally_fields,
)
from ._messages import DocumentUploaded, Orchestrated, ProcessDocument
from ._nodes import STEP_TIMEOUT_ENV

__all__ = ["VICTIM", "cluster_demo", "run_cluster_demo"]

log = logging.getLogger("kerna.demo")

VICTIM = "n2"
"""The node killed midway."""
_CLUSTER = "demo"
_NODE_CONFIG = """\
[node]
cluster = "{cluster}"
id = "{node_id}"
agents = ["kerna.demo._nodes"]
lease_ttl = {lease_ttl}
stop_grace = 2.0
ask_timeout = 10.0
[state]
url = "{state}"
[transport]
url = "tcp://127.0.0.1:0"
secret_file = "secret"
[http]
listen = "127.0.0.1:{port}"
[log]
level = "WARNING"
"""


class _Node:
    """One ``kerna node`` process of the demo: its config, log file and HTTP port."""

    def __init__(self, root: Path, node_id: str, port: int) -> None:
        self.id = node_id
        self.dir = root / node_id
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, config: str, step_timeout: float) -> None:
        self.dir.mkdir()
        (self.dir / "node.toml").write_text(config)
        shutil.copy(self.dir.parent / "secret", self.dir / "secret")
        env = {**os.environ, STEP_TIMEOUT_ENV: repr(step_timeout)}
        with self._log_file() as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "kerna", "node", "--config", str(self.dir / "node.toml"),
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, env=env,
            )  # fmt: skip

    def _log_file(self) -> BinaryIO:
        return open(self.dir / "node.log", "wb")

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = (self.dir / "node.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    async def status(self) -> dict[str, Any]:
        """The node's ``/admin/status`` (the admin API of ``kerna status``)."""

        def get() -> dict[str, Any]:
            with urllib.request.urlopen(f"{self.url}/admin/status", timeout=5) as response:
                body: dict[str, Any] = json.load(response)
                return body

        return await asyncio.to_thread(get)

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait (SIGKILL after ``timeout``)."""
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def _servers(
    count: int, lease_ttl: float, step_timeout: float
) -> AsyncIterator[tuple[str, bytes, list[_Node]]]:
    """etcd and ``count`` node processes; everything stopped and removed on exit."""
    root = data_root("kerna-demo-")
    nodes: list[_Node] = []
    # The etcd of kerna.testing (free ports, a temporary directory, killed by its PID at
    # the end); its write-ahead log in our directory, so its command line names it.
    servers = contextlib.ExitStack()
    try:
        try:
            etcd = await asyncio.to_thread(
                servers.enter_context, running_etcd(["--wal-dir", str(root / "etcd-wal")])
            )
        except ServerNotInstalled as exc:
            raise ConfigError(f"kerna demo --nodes needs etcd: {exc}") from None
        secret = os.urandom(16).hex().encode()
        (root / "secret").write_bytes(secret)
        ports = free_ports(count)
        for n in range(count):
            node = _Node(root, f"n{n + 1}", ports[n])
            nodes.append(node)
            config = _NODE_CONFIG.format(
                cluster=_CLUSTER, node_id=node.id, lease_ttl=lease_ttl, state=etcd.url,
                port=node.port,
            )  # fmt: skip
            await node.start(config, step_timeout)
        yield etcd.url, secret, nodes
    finally:
        try:
            await asyncio.gather(*(node.stop() for node in nodes))
        finally:
            servers.close()
            shutil.rmtree(root, ignore_errors=True)


async def _joined(kernel: Kernel, nodes: list[_Node], timeout: float) -> None:
    """Wait until every node hosts the pipeline (as the driver sees the members).

    Raises:
        RuntimeError: a node exited or did not join in time (its log's tail in the
            message).
    """
    ids = {node.id for node in nodes}
    waiting = asyncio.ensure_future(
        kernel.wait_members(
            lambda ms: {m.id for m in ms if "Orchestrator" in m.types} >= ids, timeout
        )
    )
    exits = {asyncio.ensure_future(n.proc.wait()): n for n in nodes if n.proc is not None}
    try:
        done, _ = await asyncio.wait({waiting, *exits}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiting, *exits):
            task.cancel()
    for task, node in exits.items():
        if task in done:
            raise RuntimeError(f"node {node.id} exited ({task.result()}):\n{node.log_tail()}")
    if waiting in done and (exc := waiting.exception()) is not None:
        tails = "\n".join(f"-- {n.id}:\n{n.log_tail(5)}" for n in nodes)
        raise RuntimeError(f"{exc}\n{tails}")


async def _quiet(nodes: list[_Node], timeout: float = 10.0) -> list[dict[str, Any]]:
    """The nodes' statuses once none runs a handler or holds a queued message (an
    Archive's handler is cancelled at the deadline its asker already reported, maybe
    a moment later on another node: counting before that would count by timing)."""
    async with asyncio.timeout(timeout):
        while True:
            statuses = [await node.status() for node in nodes]
            if all(
                s["handlers_running"] == 0 and not any(t["queued"] for t in s["types"].values())
                for s in statuses
            ):
                return statuses
            await asyncio.sleep(0.02)


async def _views_agree(nodes: list[_Node], gone: str, timeout: float) -> None:
    """Wait until no survivor lists ``gone`` among its members (bounded; their views
    are read through their admin API)."""
    async with asyncio.timeout(timeout):
        for node in nodes:
            # Another process's view: nothing here can wait on it, so ask it again.
            while gone in {m["id"] for m in (await node.status())["members"] or ()}:  # noqa: ASYNC110
                await asyncio.sleep(0.02)


async def cluster_demo(
    docs: int,
    *,
    nodes: int = 3,
    seed: int = 0,
    concurrency: int = 64,
    step_timeout: float = 0.5,
    corrupt_rate: float = 0.005,
    stall_rate: float = 0.001,
    lease_ttl: float = 2.0,
    settle_timeout: float = 60.0,
    progress: ProgressFn | None = None,
) -> DemoReport:
    """Run the cluster demo in the running event loop (see the module docstring).

    Args:
        docs: documents (at least 2: a half on each side of the kill).
        nodes: ``kerna node`` processes (at least 2: one is killed).
        lease_ttl: the nodes' lease TTL: how long the killed node stays a member.
        Others: as ``demo``.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument is out of range.
        ConfigError: etcd, or the ``node`` extra (aiohttp, prometheus-client), is not
            installed.
        RuntimeError: a node process failed to start or join (its log in the message).
    """
    _check_args(docs, seed, concurrency, step_timeout, corrupt_rate, stall_rate, settle_timeout)
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 2:
        raise ValueError(f"nodes must be an int >= 2 (one is killed), got {nodes!r}")
    if docs < 2:
        raise ValueError(
            f"a cluster demo needs docs >= 2 (one half each side of the kill), got {docs}"
        )
    missing = [m for m in ("aiohttp", "prometheus_client") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"kerna demo --nodes runs kerna node processes, which need {', '.join(missing)}:"
            " pip install 'kerna[node]'"
        )
    corpus = make_corpus(docs, seed, corrupt_rate, stall_rate)
    faults = Counter(fault_plan(docs, seed, corrupt_rate, stall_rate))
    tally = Tally(docs)
    half = docs // 2
    async with _servers(nodes, lease_ttl, step_timeout) as (url, secret, procs):
        kernel = Kernel(
            state=url, transport="tcp://127.0.0.1:0", cluster=_CLUSTER, node_id="driver",
            secret=secret, lease_ttl=lease_ttl, failure_log_level="DEBUG",
        )  # fmt: skip
        async with kernel:
            kernel.register(
                Collector, name=COLLECTOR, factory=lambda: Collector(tally), mailbox_size=100_000
            )
            await _joined(kernel, procs, 60.0)
            workers = min(concurrency, docs)
            orchestrators = [kernel.ref("Orchestrator", f"w{n}") for n in range(workers)]
            started = time.perf_counter()
            async with asyncio.TaskGroup() as tg:
                ticker = tg.create_task(_tick(tally, progress)) if progress else None
                await _upload(kernel, orchestrators, corpus[:half], None)
                async with asyncio.timeout(settle_timeout):
                    await tally.reached(half).wait()
                victim = next(p for p in procs if p.id == VICTIM)
                hosted = {n for n, ref in enumerate(orchestrators) if await ref.locate() == VICTIM}
                before = (await _quiet([victim]))[0]
                victim.kill()
                killed_at = time.perf_counter()
                survivors = [p for p in procs if p is not victim]
                await kernel.wait_members(
                    lambda ms: VICTIM not in {m.id for m in ms}, lease_ttl + 10
                )
                await _views_agree(survivors, VICTIM, 10.0)
                served: list[float] = []
                await _upload(kernel, orchestrators, corpus[half:], (hosted, served))
                try:
                    async with asyncio.timeout(settle_timeout):
                        await tally.done.wait()
                except TimeoutError:
                    log.error("%d of %d documents not accounted for after %gs",
                              docs - tally.accounted, docs, settle_timeout)  # fmt: skip
                wall = time.perf_counter() - started
                if ticker is not None:
                    ticker.cancel()
            statuses = [before, *await _quiet(survivors)]
            driver = kernel.stats()
    if progress is not None:
        progress(tally.accounted, docs)
    types = [t for s in statuses for t in s["types"].values()]
    types += [msgspec.to_builtins(t) for t in driver.types.values()]
    messages = sum(t["handled"] for t in types)
    return DemoReport(
        **tally_fields(tally, docs, seed, wall, messages, faults),
        dead_letters=sum(
            s["types"].get("DeadLetterWatcher", {}).get("handled", 0) for s in statuses
        ),
        handler_failures=sum(t["failed"] for t in types),
        late_replies=sum(t["late_replies"] for t in types),
        nodes=nodes,
        killed=VICTIM,
        failover_s=min(served) - killed_at if served else None,
    )


async def _upload(
    kernel: Kernel,
    orchestrators: list[AgentRef],
    corpus: list[tuple[int, str]],
    watch: tuple[set[int], list[float]] | None,
) -> None:
    """Upload ``corpus`` with one worker per orchestrator; ``watch`` = (indexes of the
    orchestrators the killed node hosted, where to record when each first answered)."""
    shared = iter(corpus)
    collector = kernel.ref(COLLECTOR, "default")
    ingest = [kernel.ref("Ingest", key) for key in SHARDS]
    async with asyncio.TaskGroup() as tg:
        for n, orchestrator in enumerate(orchestrators):
            first = watch[1] if watch is not None and n in watch[0] else None
            tg.create_task(_worker(ingest, orchestrator, collector, shared, first))


async def _worker(
    ingest: list[AgentRef],
    orchestrator: AgentRef,
    collector: AgentRef,
    corpus: Iterator[tuple[int, str]],
    served: list[float] | None,
) -> None:
    """As the embedded demo's worker, the upload a tell to the document's Ingest shard;
    ``served`` gets the time of this orchestrator's first answer."""
    for doc_id, body in corpus:
        uploaded_at = time.perf_counter()
        await ingest[doc_id % len(ingest)].tell(
            DocumentUploaded(doc_id=doc_id, body=body, uploaded_at=uploaded_at)
        )
        try:
            await orchestrator.ask(
                ProcessDocument(doc_id=doc_id, body=body, uploaded_at=uploaded_at), timeout=10.0
            )
        except KernaError as exc:
            log.warning("orchestrator failed on document %d: %r", doc_id, exc)
            await collector.tell(
                Orchestrated(
                    doc_id=doc_id, uploaded_at=uploaded_at, finished_at=time.perf_counter(),
                    outcome="error", step="process", error=error_text(exc),
                )
            )  # fmt: skip
        else:
            if served is not None:
                served.append(time.perf_counter())
                served = None


def run_cluster_demo(
    docs: int,
    seed: int = 0,
    *,
    nodes: int = 3,
    loop: str = "auto",
    concurrency: int = 64,
    step_timeout: float = 0.5,
    corrupt_rate: float = 0.005,
    stall_rate: float = 0.001,
    lease_ttl: float = 2.0,
    settle_timeout: float = 60.0,
    progress: ProgressFn | None = None,
) -> DemoReport:
    """Run the cluster demo on a fresh event loop (see ``cluster_demo``).

    Example::

        report = run_cluster_demo(1000, nodes=3)
        assert report.completed + report.failed == 1000 and report.failover_s

    Raises:
        ConfigError: ``loop`` is unknown, not installed or ``"virtual"`` (the nodes are
            processes and etcd a server: their time is real); etcd is not installed.
        TypeError, ValueError: as ``cluster_demo``.
        RuntimeError: a node failed to start; or called from a running event loop.
    """
    if loop == "virtual":
        raise ConfigError(
            "the cluster demo runs in real time (node processes, an etcd server):"
            " loop must be auto, asyncio or uvloop, not virtual"
        )
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        return runner.run(
            cluster_demo(
                docs, nodes=nodes, seed=seed, concurrency=concurrency,
                step_timeout=step_timeout, corrupt_rate=corrupt_rate, stall_rate=stall_rate,
                lease_ttl=lease_ttl, settle_timeout=settle_timeout, progress=progress,
            )
        )  # fmt: skip
