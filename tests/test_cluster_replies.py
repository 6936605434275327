"""Replies across nodes go to their own asker: two client nodes, each a process of its
own hosting nothing, ask one agent on a third node at once with 64 asks in flight each;
every reply names the asker and request number it answers (autogen's grpc runtime
mixes concurrent clients' replies up: microsoft/autogen#7016)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from asyncio.subprocess import PIPE
from typing import Any

import pytest

from kerna.testing import EtcdMember

from .cluster import hosting, nodes
from .cluster_agents import Mirror
from .cluster_proc import ROOT

pytestmark = pytest.mark.anyio

ROUNDS, IN_FLIGHT = 8, 64


async def _client(etcd: EtcdMember, cluster: str, name: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.cluster_client", etcd.url, cluster, name, str(ROUNDS),
        str(IN_FLIGHT), cwd=ROOT, stdin=PIPE, stdout=PIPE,
    )  # fmt: skip


async def test_two_client_nodes_with_64_asks_in_flight_each_get_exactly_their_own_replies(
    etcd_server: EtcdMember,
) -> None:
    async with nodes(etcd_server, 1, ids=["server"]) as (server,):
        server.register(Mirror)
        assert server.cluster is not None
        await server.wait_members(hosting("Mirror", server), 5)
        clients = [await _client(etcd_server, server.cluster, n) for n in ("client-a", "client-b")]
        try:
            async with asyncio.timeout(30):
                for proc in clients:
                    assert proc.stdout is not None
                    assert await proc.stdout.readline() == b"ready\n"
                for proc in clients:  # both start at once
                    assert proc.stdin is not None
                    proc.stdin.write(b"go\n")
                results: list[dict[str, Any]] = []
                for proc in clients:
                    assert proc.stdout is not None
                    results.append(json.loads(await proc.stdout.readline()))
        finally:
            for proc in clients:
                if proc.stdin is not None:
                    proc.stdin.close()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(10):
                        await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        for result in results:
            assert result["error_count"] == 0, result["errors"]
            assert result["mismatch_count"] == 0, result["mismatches"]
            assert result["duplicates"] == []
            assert result["rounds"] >= ROUNDS
            assert result["replies"] == result["rounds"] * IN_FLIGHT
            assert result["servers"] == ["server"]
        # the two clients' asks were in flight at the same time
        assert max(r["began"] for r in results) < min(r["ended"] for r in results)
        # every ask crossed to the one agent on the server node
        assert server.stats().types["Mirror"].handled == sum(r["replies"] for r in results)
        assert [proc.returncode for proc in clients] == [0, 0]
