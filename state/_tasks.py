"""Task helpers shared by the state package."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (a helper task the caller owns) and wait until it has ended.

    The task's own CancelledError is absorbed; the caller's is not: if the caller is
    itself being cancelled while it waits, that cancellation propagates.
    """
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
