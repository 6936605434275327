"""Autoscaling: a policy from pending work to a number of workers, and a local pool.

The signal is a type's pending work, ``TypeStats.pending``: its queued messages plus its
handlers in flight (Ray Serve learnt that in-flight requests alone hide a backlog). A
node exports it per type on ``/metrics`` as ``kerna_pending_work`` (with
``kerna_queue_depth`` and ``kerna_in_flight``), for an external autoscaler: the
Kubernetes example in ``examples/k8s/`` scales node pods on it through the Prometheus
adapter.

Inside one kernel, ``WorkerPool`` scales the local activations of a stateless worker
type: its messages go round-robin to the agents ``{prefix}0 .. {prefix}{size-1}`` of
the type, and ``rescale()`` (every ``interval`` seconds while the pool runs) sets
``size`` from the type's pending work with ``ScalingPolicy.desired``, between
``min_workers`` and ``max_workers``. Growing is immediate; shrinking waits until the
smaller size has been enough for ``scale_down_delay`` seconds (the stabilisation
window of Kubernetes' HPA), and workers left out drain their mailboxes and are
deactivated when idle (``idle_timeout``). In a cluster, register the type with
``placement="local"``: each node's pool then scales its own activations.

One agent id still has one activation (the directory's invariant): the pool spreads a
stateless type's messages over several ids. Its agents must not keep state one message
relies on another to find (any pool worker may get any message).
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING, Any

import msgspec

from ._errors import UnknownAgent
from ._message import Message

if TYPE_CHECKING:
    from ._agent import Agent
    from ._kernel import Kernel

__all__ = ["ScalingPolicy", "WorkerPool"]

log = logging.getLogger("kerna.autoscale")


class ScalingPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How many workers a type's pending work calls for.

    Attributes:
        min_workers: never fewer (>= 1).
        max_workers: never more (>= min_workers).
        target_pending: pending messages per worker the policy aims at (> 0): with
            ``pending`` messages it wants ``ceil(pending / target_pending)`` workers.
        scale_down_delay: seconds the wanted size must stay below the current one
            before the pool shrinks (>= 0).

    Raises:
        ValueError: an attribute is out of range (the message names it).
    """

    min_workers: int = 1
    max_workers: int = 8
    target_pending: float = 10.0
    scale_down_delay: float = 30.0

    def __post_init__(self) -> None:
        for name in ("min_workers", "max_workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ScalingPolicy.{name} must be an int >= 1, got {value!r}")
        if self.max_workers < self.min_workers:
            raise ValueError(
                f"ScalingPolicy.max_workers ({self.max_workers}) is below min_workers"
                f" ({self.min_workers})"
            )
        if not (self.target_pending > 0 and math.isfinite(self.target_pending)):
            raise ValueError(
                f"ScalingPolicy.target_pending must be > 0, got {self.target_pending!r}"
            )
        if not (self.scale_down_delay >= 0 and math.isfinite(self.scale_down_delay)):
            raise ValueError(
                f"ScalingPolicy.scale_down_delay must be >= 0, got {self.scale_down_delay!r}"
            )

    def desired(self, pending: int) -> int:
        """The number of workers ``pending`` messages call for, within the bounds."""
        wanted = math.ceil(max(0, pending) / self.target_pending)
        return min(self.max_workers, max(self.min_workers, wanted))


class WorkerPool:
    """Local activations of a stateless agent type, scaled by pending work.

    Example::

        pool = WorkerPool(kernel, Resizer, ScalingPolicy(min_workers=2, max_workers=16))
        async with pool:              # rescales every second while inside
            await pool.tell(Resize(url=u))

    Args:
        kernel: the kernel hosting the type (registered there).
        agent_type: the registered agent class or name.
        policy: the ``ScalingPolicy`` (default ``ScalingPolicy()``).
        prefix: the workers' keys are ``f"{prefix}{i}"``.
        interval: seconds between rescales while the pool runs (``start``).

    Raises:
        UnknownAgent: the type is not registered in ``kernel``.
        ValueError: ``interval`` is not > 0.
    """

    def __init__(
        self,
        kernel: Kernel,
        agent_type: type[Agent] | str,
        policy: ScalingPolicy | None = None,
        *,
        prefix: str = "worker-",
        interval: float = 1.0,
    ) -> None:
        name = agent_type if isinstance(agent_type, str) else None
        if name is None:
            name = next(
                (n for n, cls in kernel.agent_classes().items() if cls is agent_type),
                getattr(agent_type, "__name__", repr(agent_type)),
            )
        if name not in kernel.agent_classes():
            raise UnknownAgent(f"WorkerPool: no agent type {name!r} is registered", agent_type=name)
        if not (interval > 0 and math.isfinite(interval)):
            raise ValueError(f"WorkerPool interval must be > 0 seconds, got {interval!r}")
        self.kernel = kernel
        self.type_name = name
        self.policy = policy or ScalingPolicy()
        self.prefix = prefix
        self.interval = float(interval)
        self.size = self.policy.min_workers
        self._next = 0
        self._below_since: float | None = None  # when the wanted size first fell below
        self._task: asyncio.Task[None] | None = None

    def keys(self) -> list[str]:
        """The keys of the workers messages go to now."""
        return [f"{self.prefix}{i}" for i in range(self.size)]

    def _pick(self) -> str:
        index = self._next % self.size
        self._next = index + 1
        return f"{self.prefix}{index}"

    async def tell(self, message: Message) -> None:
        """Tell the next worker (round-robin) ``message``; raises what ``AgentRef.tell``
        raises."""
        await self.kernel.ref(self.type_name, self._pick()).tell(message)

    async def ask(self, message: Message, *, timeout: float | None = None) -> Any:
        """Ask the next worker (round-robin); returns its reply, raises what
        ``AgentRef.ask`` raises."""
        return await self.kernel.ref(self.type_name, self._pick()).ask(message, timeout=timeout)

    def rescale(self, pending: int | None = None, now: float | None = None) -> int:
        """Set ``size`` from the type's pending work; returns the new size.

        Args:
            pending: the pending work to size for (default: the type's
                ``TypeStats.pending`` now).
            now: the time in seconds (default: the loop's clock), for the scale-down
                delay.
        """
        if pending is None:
            pending = self.kernel.stats().types[self.type_name].pending
        if now is None:
            now = asyncio.get_running_loop().time()
        wanted = self.policy.desired(pending)
        if wanted >= self.size:
            self._below_since = None
            if wanted > self.size:
                log.info("pool %s: %d -> %d workers (%d pending)", self.type_name, self.size,
                         wanted, pending)  # fmt: skip
                self.size = wanted
            return self.size
        if self._below_since is None:
            self._below_since = now
        if now - self._below_since >= self.policy.scale_down_delay:
            log.info("pool %s: %d -> %d workers (%d pending)", self.type_name, self.size,
                     wanted, pending)  # fmt: skip
            self.size = wanted
            self._below_since = None
        return self.size

    async def __aenter__(self) -> WorkerPool:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def start(self) -> None:
        """Rescale every ``interval`` seconds until ``stop`` (in the running loop).

        Raises:
            RuntimeError: already started.
        """
        if self._task is not None:
            raise RuntimeError("WorkerPool already started")
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop rescaling (the workers stay, and idle out as any agent)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.rescale()
