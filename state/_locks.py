"""Leases kept alive, locks and leader election, written once on the StateBackend
primitives so that every backend gets them.

- ``KeptLease``: a lease plus the task that refreshes it every third of its TTL.
  ``lost`` is set (and ``on_lost`` called) when a refresh finds the lease gone, or when
  no refresh has succeeded for nearly a TTL: the holder gives up before the store can
  hand what the lease held to someone else.
- ``Lock``: a mutex. Acquiring creates ``{prefix}lock/{name}`` if absent under a kept
  lease; a waiter watches the key and retries when it is deleted (released, or expired
  with its holder's lease). ``token`` is the key's create revision: a fencing token to
  compare in the transactions the lock protects.
- ``Election``: a lock whose value names the leader; ``leader()`` reads it and
  ``observe()`` follows it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from kerna._errors import ConfigError, LeaseLost, StateError, Unavailable

from ._backend import StateBackend
from ._layout import escape
from ._tasks import cancel_and_wait
from ._types import Compare, Delete, Put

__all__ = ["Election", "KeptLease", "Lock"]

log = logging.getLogger("kerna.state.locks")

# The share of a TTL a holder gives up early (see KeptLease): a lease counts as lost at
# 90% of its TTL after the last successful refresh was sent.
LOSS_MARGIN = 0.1


class KeptLease:
    """A lease refreshed in the background until ``revoke()``.

    Use ``async with KeptLease(backend, ttl) as lease:``; ``lease.id`` is the lease id.
    A refresh is sent every ``ttl / 3`` seconds.

    ``lost`` is set, ``on_lost()`` is called (once, on the event loop) and refreshing
    stops when the lease is lost: when a refresh is answered "lease not found", or when
    no grant or refresh has succeeded for ``ttl * (1 - LOSS_MARGIN)`` seconds, counted
    from when the last successful one was *sent* (``deadline``). The store counts the
    TTL from when it received that request, so it cannot expire the lease, and hand
    what the lease held to a successor, before ``deadline + LOSS_MARGIN * ttl``: the
    margin (a tenth of the TTL) covers a late timer on a busy event loop and the
    owner's reaction. So a holder cut off from its store (a partition, a frozen etcd,
    every keepalive failing with ``Unavailable``) learns of the loss 0.57 to 0.9 TTLs
    after the cut-off (the last refresh that went through was sent up to a third of a
    TTL before it), whatever the backend's own timeouts.

    Args:
        backend: the state backend.
        ttl: the lease's time to live, in seconds (> 0).
        on_lost: called with no arguments when the lease is lost (not when revoked).
            What it raises is logged.

    Raises:
        ValueError: ``ttl`` is not positive.
    """

    def __init__(
        self, backend: StateBackend, ttl: float, *, on_lost: Callable[[], object] | None = None
    ) -> None:
        if not ttl > 0:
            raise ValueError(f"lease ttl must be > 0 seconds, got {ttl!r}")
        self.backend = backend
        self.ttl = ttl
        self.id = 0
        self.lost = asyncio.Event()
        self.on_lost = on_lost
        self._task: asyncio.Task[None] | None = None
        self._expiry: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> KeptLease:
        await self.grant()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.revoke()

    @property
    def deadline(self) -> float:
        """Event-loop time at which the lease counts as lost unless a refresh succeeds
        first (0 before ``grant``)."""
        return 0.0 if self._expiry is None else self._expiry.when()

    async def grant(self) -> int:
        loop = asyncio.get_running_loop()
        sent = loop.time()
        self.id = await self.backend.lease_grant(self.ttl)
        self._renewed(sent)
        self._task = loop.create_task(self._refresh(), name=f"kerna.state lease {self.id}")
        return self.id

    def _renewed(self, sent: float) -> None:
        """A grant or refresh sent at loop time ``sent`` succeeded: push the deadline."""
        if self.lost.is_set():
            return
        if self._expiry is not None:
            self._expiry.cancel()
        when = sent + self.ttl * (1 - LOSS_MARGIN)
        self._expiry = asyncio.get_running_loop().call_at(when, self._expired)

    def _expired(self) -> None:
        self.mark_lost(
            f"no keepalive succeeded for {self.ttl * (1 - LOSS_MARGIN):.3g} s"
            f" (ttl {self.ttl:g} s): it may expire any moment"
        )

    def mark_lost(self, reason: str = "lost") -> None:
        """Declare the lease lost: set ``lost``, stop refreshing, call ``on_lost`` once.

        The lease's own refreshes call it; an owner that learned of the loss otherwise
        (a write under the lease answered ``LeaseLost``) calls it too. Idempotent.
        """
        if self.lost.is_set():
            return
        log.warning("lease %d lost: %s", self.id, reason)
        self.lost.set()
        if self._expiry is not None:
            self._expiry.cancel()
        task = self._task
        if task is not None and task is not asyncio.current_task():
            task.cancel()  # revoke() still waits for it
        if self.on_lost is not None:
            try:
                self.on_lost()
            except Exception:
                log.exception("on_lost callback of lease %d raised", self.id)

    async def _refresh(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.ttl / 3)
            sent = loop.time()
            try:
                await self.backend.lease_keepalive(self.id)
            except LeaseLost:
                self.mark_lost("the store no longer knows it (expired or revoked)")
                return
            except Unavailable as exc:
                log.warning("lease %d keepalive failed (%s); retrying", self.id, exc)
            except (StateError, ConfigError) as exc:  # closed, or failed for good
                self.mark_lost(f"its store cannot keep it ({exc})")
                return
            else:
                self._renewed(sent)

    async def revoke(self) -> None:
        """Stop refreshing and revoke the lease (deleting the keys attached to it)."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        task, self._task = self._task, None
        await cancel_and_wait(task)
        if self.id:
            lease, self.id = self.id, 0
            try:
                await self.backend.lease_revoke(lease)
            except (StateError, ConfigError) as exc:  # unreachable, failed or closed
                log.warning("could not revoke lease %d (it will expire): %s", lease, exc)


class Lock:
    """A distributed mutex: ``async with Lock(backend, "jobs", ttl=10) as lock: ...``.

    Args:
        backend: the state backend.
        name: the lock's name (any string).
        ttl: seconds the lock outlives its holder if the holder stops refreshing.
        value: what to store in the lock key (who holds it).
        prefix: the key prefix (default ``"kerna/"``).
    """

    def __init__(
        self,
        backend: StateBackend,
        name: str,
        *,
        ttl: float = 10.0,
        value: bytes = b"",
        prefix: str = "kerna/",
    ) -> None:
        self.backend = backend
        self.key = f"{prefix}lock/{escape(name)}"
        self.value = value
        self._lease = KeptLease(backend, ttl)
        self.token = 0

    async def __aenter__(self) -> Lock:
        await self.acquire()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.release()

    @property
    def lost(self) -> asyncio.Event:
        """Set if the lock's lease was lost while held: stop relying on the lock."""
        return self._lease.lost

    async def try_acquire(self) -> bool:
        """Take the lock if it is free; True if taken."""
        if self.token:
            return True
        if not self._lease.id:
            await self._lease.grant()
        result = await self.backend.txn(
            [Compare.absent(self.key)], [Put(self.key, self.value, self._lease.id)]
        )
        if result.succeeded:
            self.token = result.revision
        return bool(self.token)

    async def acquire(self, timeout: float | None = None) -> None:
        """Wait for the lock (at most ``timeout`` seconds).

        Raises:
            TimeoutError: not acquired in time.
        """
        try:
            async with asyncio.timeout(timeout):
                while not await self.try_acquire():
                    await self._wait_for_release()
        except BaseException:
            if not self.token:
                await self._lease.revoke()
            raise

    async def _wait_for_release(self) -> None:
        current = await self.backend.get(self.key)
        if current is None:
            return
        async for event in self.backend.watch(self.key, current.mod_revision + 1):
            if event.kind == "delete" and event.kv.key == self.key:
                return

    async def release(self) -> None:
        """Release the lock (if still ours) and end its lease; idempotent."""
        token, self.token = self.token, 0
        try:
            if token:
                await self.backend.txn([Compare.created_at(self.key, token)], [Delete(self.key)])
        finally:
            await self._lease.revoke()


class Election:
    """Leader election among candidates that share ``name``.

    ``await campaign()`` returns once this candidate leads; ``resign()`` steps down.
    ``leader()`` reads the current leader's value; ``observe()`` yields it on change.
    """

    def __init__(
        self,
        backend: StateBackend,
        name: str,
        candidate: str,
        *,
        ttl: float = 10.0,
        prefix: str = "kerna/",
    ) -> None:
        self.backend = backend
        self._lock = Lock(
            backend, f"election/{name}", ttl=ttl, value=candidate.encode(), prefix=prefix
        )
        self.candidate = candidate

    @property
    def is_leader(self) -> bool:
        return bool(self._lock.token) and not self._lock.lost.is_set()

    @property
    def token(self) -> int:
        """Fencing token of this leadership term (0 when not leading)."""
        return self._lock.token

    async def campaign(self, timeout: float | None = None) -> None:
        await self._lock.acquire(timeout)

    async def resign(self) -> None:
        await self._lock.release()

    async def leader(self) -> str | None:
        kv = await self.backend.get(self._lock.key)
        return None if kv is None else kv.value.decode()

    async def observe(self) -> AsyncIterator[str | None]:
        """The current leader, then every change of leader (None: no leader)."""
        key = self._lock.key
        page = await self.backend.range(key, limit=1)  # value and revision in one read
        kv = page.kvs[0] if page.kvs and page.kvs[0].key == key else None
        revision = page.revision
        last = None if kv is None else kv.value.decode()
        yield last
        async for event in self.backend.watch(self._lock.key, revision + 1):
            if event.kv.key != self._lock.key:
                continue
            now = event.kv.value.decode() if event.kind == "put" else None
            if now != last:
                last = now
                yield now
