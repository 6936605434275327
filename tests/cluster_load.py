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

import msgspec

from kerna import AgentId, Kernel, Rendezvous
from kerna.testing import EtcdMember

from .cluster_agents import Add, Ledger, Total

__all__ = ["Failover", "SteadyLoad", "kill_owner_under_load"]


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


class Failover(msgspec.Struct):
    """One ``kill_owner_under_load`` run."""

    served_after: float  # seconds from the kill until every counter was served again
    per_key: dict[str, float]
    sent: dict[str, int]
    acked: dict[str, int]
    final: dict[str, int]
    errors: str


async def kill_owner_under_load(
    etcd: EtcdMember, *, lease_ttl: float, counters: int = 4, acked_before: int = 3
) -> Failover:
    """Two nodes here (``s1``, ``s2``) and ``p1`` in a process of its own, all hosting
    ``Ledger``; ``counters`` counters homed on ``p1`` take increments from ``s1`` and
    ``s2`` (``SteadyLoad``); once each has ``acked_before`` acknowledged, ``p1`` is
    killed with SIGKILL, and the load goes on until every counter was served again by
    an ask sent after the kill; then each counter's final value is read."""
    from .cluster import nodes
    from .cluster_proc import NodeProc

    async with nodes(etcd, 2, ids=["s1", "s2"]) as (s1, s2):
        for k in (s1, s2):
            k.register(Ledger)
        assert s1.cluster is not None
        owner = NodeProc(etcd.url, s1.cluster, "p1", lease_ttl)
        try:
            await owner.start()
            await s1.wait_members(lambda ms: {m.id for m in ms if m.types} == _ALL, 5)
            await s2.wait_members(lambda ms: {m.id for m in ms if m.types} == _ALL, 5)
            keys = [
                k
                for k in (f"acct-{i}" for i in range(400))
                if Rendezvous().choose(AgentId("Ledger", k), sorted(_ALL)) == "p1"
            ][:counters]
            load = SteadyLoad([s1, s2], "Ledger", keys, timeout=1.0)
            load.start()
            try:
                await load.wait_acked(acked_before, timeout=10)
                for key in keys:
                    assert await s1.ref(Ledger, key).locate() == "p1"
                await owner.kill()
                load.mark()
                served = await load.wait_served(timeout=lease_ttl + 10)
            finally:
                await load.stop()
        finally:
            await owner.close()
        final = {key: await s2.ref(Ledger, key).ask(Total(), timeout=5) for key in keys}
        return Failover(
            served, dict(load.served), dict(load.sent), dict(load.acked), final,
            load.describe_errors(),
        )  # fmt: skip


_ALL = {"p1", "s1", "s2"}
