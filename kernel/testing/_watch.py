"""Reading watch streams in tests, bounded."""

from __future__ import annotations

import asyncio

from kerna.state import StateBackend, WatchEvent

__all__ = ["watch_events"]


async def watch_events(
    backend: StateBackend, prefix: str, from_revision: int, count: int, *, timeout: float = 10.0
) -> list[WatchEvent]:
    """The first ``count`` events of a watch on ``prefix`` from ``from_revision``.

    Raises:
        TimeoutError: fewer than ``count`` events came within ``timeout`` seconds.
        Compacted: ``from_revision`` is older than the oldest revision kept.
    """
    out: list[WatchEvent] = []
    async with asyncio.timeout(timeout):
        async for event in backend.watch(prefix, from_revision):
            out.append(event)
            if len(out) == count:
                break
    return out
