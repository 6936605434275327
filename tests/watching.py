"""Helpers for tests that read watch streams."""

from __future__ import annotations

import asyncio

from kerna.state import StateBackend, WatchEvent


async def collect(
    backend: StateBackend, prefix: str, from_revision: int, count: int, timeout: float = 10
) -> list[WatchEvent]:
    """The first ``count`` events of a watch on ``prefix`` from ``from_revision``."""
    out: list[WatchEvent] = []
    async with asyncio.timeout(timeout):
        async for event in backend.watch(prefix, from_revision):
            out.append(event)
            if len(out) == count:
                break
    return out
