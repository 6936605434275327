"""Sync embedding: run a Kernel on a background thread and call it from sync code.

For Flask, Django, scripts and notebooks::

    with BlockingKernel(ask_timeout=5) as kernel:
        kernel.register(Echo)
        pong = kernel.ref(Echo, "a").ask(Ping(n=1), timeout=1.0)

The kernel and its agents live on one event-loop thread (an anyio blocking portal);
every call from any other thread is marshalled onto it, so agents keep their
one-message-at-a-time guarantee. Do not call these methods from inside an agent.
"""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager
from typing import Any, overload

from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._agent import Agent
from ._errors import KernelStopped
from ._ids import AgentId
from ._kernel import Kernel, KernelStats
from ._message import Askable, Message, ReplyT, Request
from ._ref import AgentRef

__all__ = ["BlockingKernel", "BlockingRef"]


class BlockingRef:
    """The sync twin of ``AgentRef``: each call blocks the calling thread.

    After the kernel stopped, every call raises ``KernelStopped``, as ``AgentRef`` does.
    """

    __slots__ = ("_kernel", "_ref")

    def __init__(self, kernel: BlockingKernel, ref: AgentRef) -> None:
        self._kernel = kernel
        self._ref = ref

    @property
    def id(self) -> AgentId:
        return self._ref.id

    def tell(self, message: Message) -> None:
        """See ``AgentRef.tell``."""
        self._kernel._call(self._ref.tell, message)  # noqa: SLF001 - BlockingRef and BlockingKernel are one unit

    @overload
    def ask(self, message: Request[ReplyT], *, timeout: float | None = None) -> ReplyT: ...
    @overload
    def ask(self, message: Askable[ReplyT], *, timeout: float | None = None) -> ReplyT: ...
    def ask(self, message: Any, *, timeout: float | None = None) -> Any:
        """See ``AgentRef.ask``; raises the same errors in the calling thread."""
        return self._kernel._call(self._ref.ask, message, timeout=timeout)  # noqa: SLF001 - BlockingRef and BlockingKernel are one unit

    def deactivate(self) -> None:
        """See ``AgentRef.deactivate``."""
        self._kernel._call(self._ref.deactivate)  # noqa: SLF001 - BlockingRef and BlockingKernel are one unit


class BlockingKernel:
    """A ``Kernel`` on its own event-loop thread, driven synchronously.

    Takes the same keyword arguments as ``Kernel``. Use as a context manager, or call
    ``start()`` and ``stop()``. Calls before ``start()`` raise ``RuntimeError``; calls
    after ``stop()`` (or racing with it) raise ``KernelStopped``.
    """

    def __init__(self, **kernel_options: Any) -> None:
        self._options = kernel_options
        self._portal_cm: AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._kernel: Kernel | None = None
        self._stopped = False

    def __enter__(self) -> BlockingKernel:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the loop thread and the kernel on it."""
        if self._portal is not None:
            raise RuntimeError("BlockingKernel already started")
        self._stopped = False
        self._portal_cm = start_blocking_portal("asyncio")
        portal = self._portal = self._portal_cm.__enter__()
        try:
            self._kernel = portal.call(self._start_kernel)
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            self._portal = self._portal_cm = None
            raise

    async def _start_kernel(self) -> Kernel:
        kernel = Kernel(**self._options)
        await kernel.start()
        return kernel

    def stop(self, grace: float | None = None) -> None:
        """Stop the kernel (see ``Kernel.stop``) and end the loop thread; idempotent."""
        if self._portal is None or self._portal_cm is None:
            return
        self._stopped = True
        try:
            if self._kernel is not None:
                self._portal.call(functools.partial(self._kernel.stop, grace))
        finally:
            self._portal_cm.__exit__(None, None, None)
            self._portal = self._portal_cm = None

    @property
    def kernel(self) -> Kernel:
        """The underlying async kernel (use it only from the loop thread)."""
        if self._kernel is None:
            raise RuntimeError("BlockingKernel is not started")
        return self._kernel

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` on the loop thread and wait for its result."""
        portal = self._portal
        if portal is None:
            if self._stopped:
                raise KernelStopped("BlockingKernel is stopped")
            raise RuntimeError("BlockingKernel is not started")
        try:
            return portal.call(functools.partial(fn, *args, **kwargs))
        except RuntimeError:
            if self._stopped:  # the portal closed under this call: stop() won the race
                raise KernelStopped("BlockingKernel is stopped") from None
            raise

    def register(self, agent_class: type[Agent], **options: Any) -> str:
        """See ``Kernel.register``."""
        return str(self._call(self.kernel.register, agent_class, **options))

    def ref(self, agent_type: type[Agent] | str, key: str) -> BlockingRef:
        """See ``Kernel.ref``."""
        ref: AgentRef = self._call(self.kernel.ref, agent_type, key)
        return BlockingRef(self, ref)

    def subscribe(self, topic: str, agent_type: type[Agent] | str, **options: Any) -> Any:
        """See ``Kernel.subscribe``."""
        return self._call(self.kernel.subscribe, topic, agent_type, **options)

    def publish(self, topic: str, message: Message) -> None:
        """See ``Kernel.publish``."""
        self._call(self.kernel.publish, topic, message)

    def stats(self) -> KernelStats:
        """See ``Kernel.stats``; after ``stop()``, the final counters."""
        if self._stopped and self._kernel is not None:
            return self._kernel.stats()  # the loop thread has ended: nothing changes them
        stats: KernelStats = self._call(self.kernel.stats)
        return stats
