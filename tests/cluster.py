"""Helpers for the cluster tests: nodes of one cluster on a real etcd, over tcp."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import uuid
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from kerna import Kernel, Member
from kerna.testing import EtcdMember

SECRET = b"shop secret"
TCP = "tcp://127.0.0.1:0"


def cluster_name() -> str:
    """A cluster of its own per test: its keys are apart from every other test's."""
    return f"c{uuid.uuid4().hex[:10]}"


def node(etcd: EtcdMember, cluster: str, **options: Any) -> Kernel:
    options.setdefault("lease_ttl", 2.0)
    options.setdefault("stop_grace", 0.2)
    options.setdefault("ask_timeout", 10.0)
    return Kernel(state=etcd.url, transport=TCP, cluster=cluster, secret=SECRET, **options)


def hosting(type_name: str, *nodes: Kernel) -> Callable[[list[Member]], bool]:
    """A ``wait_members`` condition: exactly ``nodes`` host ``type_name``."""
    ids = {k.node_id for k in nodes}
    return lambda members: {m.id for m in members if type_name in m.types} == ids


def only(*nodes: Kernel) -> Callable[[list[Member]], bool]:
    """A ``wait_members`` condition: the members are exactly ``nodes``."""
    ids = {k.node_id for k in nodes}
    return lambda members: {m.id for m in members} == ids


@contextlib.asynccontextmanager
async def nodes(
    etcd: EtcdMember,
    count: int,
    cluster: str | None = None,
    ids: list[str] | None = None,
    **options: Any,
) -> AsyncIterator[list[Kernel]]:
    """``count`` started nodes of one cluster (with ``ids``, those node ids); each sees
    all of them before yielding."""
    name = cluster or cluster_name()
    named = ids or [None] * count
    async with contextlib.AsyncExitStack() as stack:
        kernels = [
            await stack.enter_async_context(node(etcd, name, node_id=i, **options)) for i in named
        ]
        ids = {k.node_id for k in kernels}
        for k in kernels:
            await k.wait_members(lambda ms: {m.id for m in ms} >= ids, 5)
        yield kernels


ROOT = Path(__file__).resolve().parent.parent


@contextlib.asynccontextmanager
async def node_process(
    etcd: EtcdMember, cluster: str, node_id: str, ttl: float, module: str = "tests.cluster_node"
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A node of ``cluster`` in a process of its own (``tests/cluster_node.py``, or
    another ``module`` taking the same arguments), joined once this yields; killed
    (SIGKILL) and reaped at the end if still running."""
    with tempfile.TemporaryFile() as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, etcd.url, cluster, node_id, str(ttl),
            cwd=ROOT, stdin=PIPE, stdout=PIPE, stderr=log,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(20):
                address = await proc.stdout.readline()
            if not address:
                log.seek(0)
                pytest.fail(f"the node process failed:\n{log.read()[-2000:]!r}")
            yield proc
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
