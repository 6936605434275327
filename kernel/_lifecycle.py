"""Starting and stopping a kernel's runtime.

``start`` opens the state backend and creates the root task, which holds the task group
every worker runs in. ``stop`` runs the shutdown as a task of its own, shielded from the
caller's cancellation: it closes intake (``Phase.DRAINING``), lets mailboxes drain within
the grace period, cancels what is left (``Phase.STOPPING``), runs ``on_stop`` once per
activation, closes the state backend and ends the root task (``Phase.STOPPED``). Every
stage after the grace period shares one bound, ``grace + 2 * cancel_grace``: a task that
ignores cancellation cannot be killed, so it is named in an ERROR log and abandoned.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING

from ._errors import KernelStopped
from ._failure_log import FailureLog
from ._idle import IdleCollector
from ._options import check_seconds
from ._persistence import Persistence
from ._runtime import Phase, Runtime, names

if TYPE_CHECKING:
    from kerna.state import StateBackend

    from ._activation import Activation

__all__ = ["Lifecycle"]

log = logging.getLogger("kerna.kernel")

_ON_STOP_BATCH = 1000


class Lifecycle:
    """Start and stop of one runtime (see the module docstring)."""

    __slots__ = ("_closing", "_drain_deadline", "_quiet_scope", "_root", "_shutdown", "runtime")

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._root: asyncio.Task[None] | None = None
        self._closing: asyncio.Future[None] | None = None
        self._quiet_scope: asyncio.Timeout | None = None
        self._drain_deadline = 0.0
        self._shutdown: asyncio.Task[None] | None = None

    # -- start -------------------------------------------------------------------------

    async def start(
        self,
        state: str | StateBackend,
        *,
        prefix: str,
        lease_ttl: float,
        node_id: str | None = None,
    ) -> None:
        """Open the state backend and the task group; the kernel then runs.

        Raises:
            RuntimeError: already started.
        """
        rt = self.runtime
        if rt.phase is not Phase.NEW:
            raise RuntimeError(f"kernel already {_word(rt.phase)}")
        rt.loop = loop = asyncio.get_running_loop()
        rt.persistence = await Persistence.open(
            state, prefix=prefix, lease_ttl=lease_ttl, node_id=node_id
        )
        rt.persistence.on_lease_lost(rt.lease_lost)
        ready: asyncio.Future[None] = loop.create_future()
        self._closing = loop.create_future()
        self._root = loop.create_task(self._supervise(ready), name="kerna-kernel")
        try:
            await ready
        except asyncio.CancelledError:  # cancelled while starting: leave nothing behind
            self._root.cancel()
            try:
                await self._root
            except asyncio.CancelledError:
                pass
            rt.phase = Phase.STOPPED
            await rt.persistence.close()
            raise
        self._root.add_done_callback(self._root_ended)
        rt.idle = IdleCollector(rt)
        rt.failure_log = FailureLog(rt.kernel.failure_log_level, loop)
        rt.phase = Phase.RUNNING
        if rt.remote is not None:
            try:
                await rt.remote.start()
                if rt.cluster is not None:  # join: the address is known now
                    await rt.cluster.start(rt.persistence, rt.remote)
            except BaseException:  # the address is taken, say: leave nothing behind
                await self.stop(0.0, rt.kernel.cancel_grace)
                raise

    async def _supervise(self, ready: asyncio.Future[None]) -> None:
        assert self._closing is not None
        async with asyncio.TaskGroup() as tg:
            self.runtime.task_group = tg
            if not ready.done():
                ready.set_result(None)
            await self._closing
        self.runtime.task_group = None

    def _root_ended(self, root: asyncio.Task[None]) -> None:
        """The root task ended. Before stop that is never the users' doing (workers
        report every handler error): it is KeyboardInterrupt or SystemExit on its way
        out of the loop, or a bug in kerna. Refuse further work instead of failing on
        a finished task group."""
        rt = self.runtime
        rt.task_group = None
        if rt.phase is Phase.RUNNING:
            rt.phase = Phase.STOPPING
            if not root.cancelled() and root.exception() is not None:
                log.error("kernel task ended while running", exc_info=root.exception())

    # -- stop --------------------------------------------------------------------------

    async def stop(self, grace: float, cancel_grace: float) -> None:
        """See ``Kernel.stop``."""
        check_seconds("grace", grace)
        rt = self.runtime
        if rt.phase is Phase.NEW:
            rt.phase = Phase.STOPPED
            return
        task = self._shutdown
        if task is None:
            if rt.phase is Phase.STOPPED:
                return
            if rt.phase is Phase.RUNNING:
                rt.phase = Phase.DRAINING  # refuse messages from outside agents at once
                if rt.cluster is not None:
                    rt.cluster.begin_leaving()  # no home now; other nodes' messages go on
            self._drain_deadline = rt.loop.time() + grace
            task = self._shutdown = rt.loop.create_task(
                self._run_shutdown(float(grace), cancel_grace), name="kerna-stop"
            )
        else:
            self._hurry(float(grace))
        await asyncio.shield(task)

    def _hurry(self, grace: float) -> None:
        """A later ``stop(grace)``: end the grace period by then, if that is sooner."""
        deadline = self.runtime.loop.time() + grace
        if deadline < self._drain_deadline:
            self._drain_deadline = deadline
            if self._quiet_scope is not None:
                self._quiet_scope.reschedule(deadline)

    async def _run_shutdown(self, grace: float, cancel_grace: float) -> None:
        rt = self.runtime
        loop = rt.loop
        if rt.idle is not None:
            rt.idle.close()
        for act in rt.directory.values():
            if act.timers:
                act.cancel_timers()
        stuck: list[Activation] = []  # workers that ignore cancellation
        hooks_ended = True
        end = math.inf
        try:
            cluster = rt.cluster
            if cluster is not None:  # hand the agents over while the grace lasts
                await cluster.departure.leave(self._drain_deadline)
            if rt.busy and not await self._wait_quiet() and rt.busy:
                log.warning(
                    "stop: %d agents still busy after %.3gs grace; cancelling", rt.busy, grace
                )
            if cluster is not None:
                await cluster.departure.settle(self._drain_deadline)
            rt.phase = Phase.STOPPING
            # Everything after the grace period shares one bound: grace + 2 x cancel_grace.
            now = loop.time()
            end = max(self._drain_deadline, now) + 2 * cancel_grace
            stuck = await self._cancel_workers(now + cancel_grace, cancel_grace)
            hooks_ended = await self._stop_all(end, cancel_grace)
        finally:
            # Also when this task is cancelled (the loop is shutting down): refuse
            # everything, fail what is left, and let go of the state and the lease.
            rt.phase = Phase.STOPPING
            for task in list(rt.tasks):
                task.cancel()
            for act in list(rt.directory.values()):
                if act.task is not None and act not in stuck:
                    act.task.cancel()
                act.abort(KernelStopped(f"kernel stopped before {act.id} could handle it"))
                rt.retire(act)
            try:
                if rt.cluster is not None:  # peers see it leave; late messages forwarded
                    await rt.cluster.departure.depart(max(end, loop.time() + cancel_grace))
                if rt.remote is not None:  # asks waiting on other nodes fail; the
                    # replies owed to other nodes' asks go out first, in the same bound
                    await rt.remote.aclose(max(end, loop.time() + cancel_grace))
                if rt.cluster is not None:
                    await rt.cluster.close()  # the watches
                if rt.persistence is not None:
                    await rt.persistence.close()  # releases every claim with the lease
            finally:
                self._end_root()
        if stuck or not hooks_ended:
            return  # abandoned: the root task ends when they do
        assert self._root is not None
        _, pending = await asyncio.wait({self._root}, timeout=max(end - loop.time(), 0.001))
        if pending:
            log.error("stop: kernel tasks still running after stop; abandoned")

    def _end_root(self) -> None:
        self.runtime.phase = Phase.STOPPED
        if self._closing is not None and not self._closing.done():
            self._closing.set_result(None)

    async def _wait_quiet(self) -> bool:
        """Wait until no worker runs, or the end of the grace period; True when quiet.

        The deadline is ``_drain_deadline``, which a later ``stop()`` may move earlier.
        """
        quiet = self.runtime.quiet()
        try:
            async with asyncio.timeout_at(self._drain_deadline) as scope:
                self._quiet_scope = scope
                await quiet
        except TimeoutError:
            return False
        finally:
            self._quiet_scope = None
            if quiet.cancelled():
                self.runtime.forget_quiet(quiet)
        return True

    async def _cancel_workers(self, deadline: float, cancel_grace: float) -> list[Activation]:
        """Cancel every running worker and wait until ``deadline`` for them to end.

        Returns the activations whose workers ignored the cancellation (logged); every
        activation's queue is then failed (``Activation.abort``), including the queues of
        workers cancelled before they ever ran.
        """
        rt = self.runtime
        acts = [*rt.directory.values(), *rt.retiring]
        workers = {act.task: act for act in acts if act.task is not None}
        tasks = set(rt.tasks)  # Kernel.create_task's: they end with the workers
        if not workers and not tasks:
            return []
        for task in (*workers, *tasks):
            task.cancel()
        _, pending = await asyncio.wait(
            {*workers, *tasks}, timeout=max(0.0, deadline - rt.loop.time())
        )
        stuck = [workers[task] for task in pending if task in workers]
        if pending - workers.keys():
            log.error(
                "stop: %d kernel tasks ignore cancellation after %.3gs: abandoned: %s",
                len(pending - workers.keys()),
                cancel_grace,
                ", ".join(sorted(t.get_name() for t in pending - workers.keys())),
            )
        if stuck:
            log.error(
                "stop: %d agents ignore cancellation after %.3gs: %s. A task that swallows "
                "CancelledError cannot be killed: it is abandoned and runs on; the messages "
                "it holds fail with KernelStopped",
                len(stuck),
                cancel_grace,
                names(stuck),
            )
        for act in acts:
            if act.task is not None and act.task.done():  # cancelled before it started
                act.task = None
                rt.worker_exited(act)
            act.abort(KernelStopped(f"kernel stopped while {act.id} was busy"))
        return stuck

    async def _stop_all(self, end: float, cancel_grace: float) -> bool:
        """Run ``on_stop`` once for every started activation, by ``end``.

        Hooks still running half a ``cancel_grace`` before ``end`` are cancelled (the
        rest are skipped); False if one of them ignores that until ``end``.
        """
        rt = self.runtime
        deadline = end - cancel_grace / 2
        pending = [
            a
            for a in rt.directory.values()
            if a.agent is not None and not a.closing and a.task is None
        ]
        for i in range(0, len(pending), _ON_STOP_BATCH):
            batch = pending[i : i + _ON_STOP_BATCH]
            tg = rt.task_group
            if tg is None:
                return True
            tasks = {tg.create_task(_final_stop(a)): a for a in batch}
            _, late = await asyncio.wait(tasks, timeout=max(0.0, deadline - rt.loop.time()))
            if late:
                for task in late:
                    task.cancel()
                _, stuck = await asyncio.wait(late, timeout=max(0.0, end - rt.loop.time()))
                log.warning(
                    "stop: on_stop did not finish in time for %d agents (%d skipped): %s",
                    len(late),
                    len(pending) - i - len(batch),
                    names([tasks[t] for t in late]),
                )
                if stuck:
                    log.error(
                        "stop: on_stop of %s ignores cancellation: abandoned",
                        names([tasks[t] for t in stuck]),
                    )
                return not stuck
        return True


async def _final_stop(act: Activation) -> None:
    act.closing = True
    await act.run_on_stop()


def _word(phase: Phase) -> str:
    return {Phase.RUNNING: "running", Phase.STOPPED: "stopped"}.get(phase, "stopping")
