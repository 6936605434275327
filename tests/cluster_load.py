"""A steady ask load on stateful counters, for the failover and rolling-restart tests
(and benchmarks/cluster_failover.py): one closed loop per (sender kernel, key), each
sending ``Add(n=1)`` and waiting for its reply before the next one.

Per key it counts what was sent (every ask attempted: an upper bound of what may have
been applied) and acknowledged (replied: a lower bound of what must have been), the
errors by type with one example message each, and, after ``mark()``, how long until
an ask sent after the mark was served (the failover time).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

from kerna import Kernel

from .cluster_agents import Add

__all__ = ["SteadyLoad"]


class SteadyLoad:
    """See the module docstring.

    Args:
        senders: the kernels the asks come from.
        agent_type: the counter type's name (``Ledger``).
        keys: the counters.
        timeout: each ask's timeout.
        backoff: the pause after a failed ask (a dead node refuses at once: without it
            the loop would spin).
    """

    def __init__(
        self,
        senders: Sequence[Kernel],
        agent_type: str,
        keys: Sequence[str],
        *,
        timeout: float = 1.0,
        backoff: float = 0.02,
    ) -> None:
        self.senders = list(senders)
        self.agent_type = agent_type
        self.keys = list(keys)
        self.timeout = timeout
        self.backoff = backoff
        self.sent: Counter[str] = Counter()
        self.acked: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.examples: dict[str, str] = {}  # error type -> its first message
        self.served: dict[str, float] = {}  # key -> seconds from the mark to a served ask
        self._mark: float | None = None
        self._all_served = asyncio.Event()
        self._stopping = asyncio.Event()
        self._progress = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def total_sent(self) -> int:
        return sum(self.sent.values())

    @property
    def total_acked(self) -> int:
        return sum(self.acked.values())

    @property
    def success_rate(self) -> float:
        return self.total_acked / self.total_sent if self.total_sent else 1.0

    def start(self) -> None:
        for kernel in self.senders:
            for key in self.keys:
                self._tasks.append(asyncio.create_task(self._loop(kernel, key)))

    async def _loop(self, kernel: Kernel, key: str) -> None:
        loop = asyncio.get_running_loop()
        ref = kernel.ref(self.agent_type, key)
        while not self._stopping.is_set():
            sent_at = loop.time()
            self.sent[key] += 1
            try:
                await ref.ask(Add(n=1), timeout=self.timeout)
            except Exception as exc:  # counted and shown by the test: any error is data
                name = type(exc).__name__
                self.errors[name] += 1
                self.examples.setdefault(name, str(exc))
                await asyncio.sleep(self.backoff)
                continue
            self.acked[key] += 1
            self._progress.set()
            mark = self._mark
            if mark is not None and sent_at >= mark and key not in self.served:
                self.served[key] = loop.time() - mark
                if len(self.served) == len(self.keys):
                    self._all_served.set()

    async def wait_acked(self, each: int, timeout: float) -> None:
        """Until every key has at least ``each`` acknowledged asks."""
        async with asyncio.timeout(timeout):
            while min(self.acked[key] for key in self.keys) < each:
                self._progress.clear()
                await self._progress.wait()

    def mark(self) -> None:
        """From now on, record for each key when an ask sent after now is served."""
        self._mark = asyncio.get_running_loop().time()
        self.served.clear()
        self._all_served.clear()

    async def wait_served(self, timeout: float) -> float:
        """Until every key was served by an ask sent after the mark; the longest wait.

        Raises:
            TimeoutError: some key was not (named in the message, with the errors).
        """
        try:
            async with asyncio.timeout(timeout):
                await self._all_served.wait()
        except TimeoutError:
            missing = sorted(set(self.keys) - set(self.served))
            raise TimeoutError(
                f"not served within {timeout} s: {missing}; errors {self.describe_errors()}"
            ) from None
        return max(self.served.values())

    def describe_errors(self) -> str:
        return "; ".join(
            f"{name} x{count} (e.g. {self.examples[name]!r})"
            for name, count in self.errors.most_common()
        )

    async def stop(self) -> None:
        """Stop sending; the asks in flight finish (each within its timeout)."""
        self._stopping.set()
        if self._tasks:
            async with asyncio.timeout(self.timeout + 5):
                await asyncio.gather(*self._tasks)
        self._tasks.clear()
