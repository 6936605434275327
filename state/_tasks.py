"""Task helpers shared by the state package."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (a helper task the caller owns) and wait until it has ended.

    The task's own CancelledError is absorbed; the caller's is not: if the caller is
    cancelled while it waits, that cancellation propagates. A caller already being
    cancelled before (cleaning up in a ``finally`` after its own cancellation) still
    waits for the task and carries on.
    """
    if task is None:
        return
    current = asyncio.current_task()
    before = 0 if current is None else current.cancelling()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        if current is not None and current.cancelling() > before:
            raise
