"""References to agents: the user's handle for ``tell``, ``ask`` and ``deactivate``.

Get one from ``kernel.ref(AgentClass, key)`` (or ``self.ref`` inside an agent); never
construct it. A ref is cheap and stays valid across deactivations: the next message
re-activates the agent.

A send only builds its envelope (``kerna._envelope.outgoing``, from the context it is
sent in) and hands it to ``Runtime.deliver``, which routes it; an ask then waits for
the reply future its envelope carries, bounded by the ask's deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, overload

import msgspec

from ._activation import SPAWN_BURST, current_activation
from ._chain import _SHAPE, SyncHooks, merge_headers
from ._context import MessageContext
from ._envelope import ASK, TELL, Envelope, outgoing
from ._errors import AskTimeout, DeadlockError
from ._ids import AgentId
from ._message import Askable, Message, ReplyT, Request
from ._options import check_headers, check_timeout
from ._runtime import RUNNING
from ._sends import (
    NOT_ENTERED,
    ask_through,
    attempt_envelope,
    expire,
    tell_through,
    unwind,
    wait_for_room,
)

if TYPE_CHECKING:
    from ._kernel import Kernel
    from ._runtime import Runtime

__all__ = ["AgentRef"]


class AgentRef:
    """A handle on a virtual agent ``AgentId(type, key)`` in one kernel.

    Attributes:
        id: the agent's identity.
        route: where the last send to it went (the runtime's routing cache).
    """

    __slots__ = ("_runtime", "id", "route")

    def __init__(self, runtime: Runtime, agent_id: AgentId) -> None:
        self._runtime = runtime
        self.id = agent_id
        self.route: Any = None

    def __repr__(self) -> str:
        return f"AgentRef({self.id})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AgentRef) and other.id == self.id and other.kernel is self.kernel

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def kernel(self) -> Kernel:
        """The kernel this ref sends through."""
        return self._runtime.kernel

    async def tell(self, message: Message, *, headers: Mapping[str, str] | None = None) -> None:
        """Send ``message`` without waiting for it to be handled.

        Returns once the message is in the agent's mailbox (after waiting for room if the
        agent's overflow policy is ``wait``). A failure in the handler goes to dead
        letters (and the log), not to the sender.

        Args:
            message: the message.
            headers: metadata for the receiver's ``self.context.headers``; it flows on
                with every message sent while this one is handled.

        Raises:
            UnknownAgent: the agent type is not registered.
            UnhandledMessage: the agent type has no handler for this message type.
            MailboxFull: the mailbox is full and the policy is ``reject`` (or the agent
                is telling itself into its own full mailbox).
            ActivationFailed: the agent failed to start.
            Fenced: a stateful agent's activation lost its claim (the kernel's lease)
                while this sender waited for room; the next send re-activates it.
            KernelStopped: the kernel is stopping.
            TypeError: ``message`` is not a kerna Message, or ``headers`` not a mapping
                of str to str.
        """
        rt = self._runtime
        sender = current_activation.get()
        if rt.phase is not RUNNING and not rt.accepts(sender):
            raise rt.refuse(self.id, f"{type(message).__qualname__} not sent")
        if headers is not None:
            headers = check_headers(headers)
        if sender is None:  # a root: no context to carry (built here: the hot path)
            msg_id = next(rt.ids)
            if headers is None:  # fewer arguments: measurably cheaper on W1
                env = Envelope(msg_id, TELL, self.id, message, None, msg_id)
            else:
                env = Envelope(msg_id, TELL, self.id, message, None, msg_id, headers=headers)
        else:
            env = outgoing(
                rt.ids, TELL, self.id, message, sender.id, sender.current, None, None, headers
            )
        outbound = rt.outbound if sender is None else sender.atype.outbound
        if outbound:  # the middleware chain's send hooks (kerna._chain)
            await tell_through(outbound, rt, self, env)
            return
        # A warm send goes straight to the route ``deliver`` chose last time, while it
        # still takes this message; anything else is ``deliver``'s to decide.
        route = self.route
        if (
            route is None
            or route.closed
            or route.failure is not None
            or type(message) not in route.atype.handlers
        ):
            waiter = rt.deliver(env, self)
        else:
            waiter = route.put(env)
        if waiter is not None:
            await waiter
        elif rt.unstarted > SPAWN_BURST:
            await asyncio.sleep(0)  # let the workers this sender woke run (see Runtime)

    @overload
    async def ask(
        self,
        message: Request[ReplyT],
        *,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> ReplyT: ...
    @overload
    async def ask(
        self,
        message: Askable[ReplyT],
        *,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> ReplyT: ...
    async def ask(
        self,
        message: Any,
        *,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Send ``message`` and wait for the handler's reply.

        The result is typed by the request: for ``class Ping(Request[Pong])``,
        ``await ref.ask(Ping())`` is a ``Pong``; for a plain ``Message`` it is ``Any``.

        Args:
            message: the request.
            timeout: seconds to wait; ``None`` means the kernel's ``ask_timeout``. Inside
                a handler the ask also inherits the remaining time of the message being
                handled, whichever is shorter.
            headers: as for ``tell``.

        Raises:
            AskTimeout: no reply in time (a reply that comes later is dropped and counted).
            RemoteError: the handler raised; carries the original type name, message and
                traceback.
            DeadlockError: the target is already waiting up this ask chain.
            Fenced: a stateful agent's activation lost its claim (the kernel's lease)
                before it answered; the next message re-activates it.
            UnknownAgent, UnhandledMessage, MailboxFull, ActivationFailed, KernelStopped:
                as for ``tell``.
            ValueError: ``timeout`` is not a positive number.
            TypeError: ``timeout`` is not a number, or as for ``tell``.
        """
        rt = self._runtime
        loop = rt.loop
        if timeout is None:
            timeout = rt.kernel.ask_timeout
        else:
            check_timeout(timeout)
        sender = current_activation.get()
        if rt.phase is not RUNNING and not rt.accepts(sender):
            raise rt.refuse(self.id, f"{type(message).__qualname__} not sent")
        if headers is not None:
            headers = check_headers(headers)
        now = loop.time()
        deadline = now + timeout
        reply: asyncio.Future[Any] = loop.create_future()
        if sender is None:  # a root: no context to carry (built here: the hot path)
            msg_id = next(rt.ids)
            env = Envelope(
                msg_id, ASK, self.id, message, None, msg_id, 0, deadline, (), reply, headers
            )
        else:
            env = outgoing(
                rt.ids, ASK, self.id, message, sender.id, sender.current, deadline, reply, headers
            )
            if self.id in env.chain:
                path = " -> ".join(str(a) for a in (*env.chain, self.id))
                raise DeadlockError(f"ask cycle: {path}")
            assert env.deadline is not None
            if env.deadline < deadline:  # the message being handled has less time left
                deadline = env.deadline
                timeout = max(0.0, deadline - now)
            if timeout == 0.0:
                raise AskTimeout(
                    f"deadline of the message being handled by {sender.id} passed before "
                    f"asking {self.id}",
                    target=self.id,
                    timeout=0.0,
                )
        outbound = rt.outbound if sender is None else sender.atype.outbound
        if outbound:  # the middleware chain's send hooks (kerna._chain)
            head = outbound[0]
            if not isinstance(head, SyncHooks) or head.failed is not None:
                return await ask_through(outbound, rt, self, env)
            ctx = MessageContext(env, loop)
            if head.rest_sync and len(outbound) > 1:
                # Only synchronous links: their hooks run here, in this coroutine (none of
                # the chain's), the first attempt made here (as ask_sync makes the others).
                # (enter_sends and exit_sends inline: the hot path; see them)
                entered: list[Any] = []
                merged: dict[str, str] | None = None
                limit = deadline
                for link in outbound:
                    try:
                        got = link.before(ctx)
                        if type(got) is not tuple or not 2 <= (n := len(got)) <= 3:
                            raise TypeError(_SHAPE.format(got))
                        extra = got[1]
                        if extra is None:
                            pass
                        elif merged is None and link.fresh:  # its own new dict of str
                            merged = extra
                        elif merged is None and type(extra) is dict:  # (merge_headers)
                            for name, value in extra.items():
                                if type(name) is not str or type(value) is not str:
                                    merged = merge_headers(None, extra)  # (checked there)
                                    break
                            else:
                                merged = dict(extra)
                        else:  # an inner hook's keys win over an outer one's
                            merged = merge_headers(merged, extra)
                    except Exception as exc:
                        if link.failed is None:  # the links outside it hear the error
                            link.entered(exc)
                        else:  # its send_failed gets it (no attempt made inside it)
                            entered += (NOT_ENTERED, limit)
                        return await unwind(
                            outbound, ctx, entered, exc, len(entered) // 2, rt, self, env, None
                        )
                    entered += (got, limit)
                    if n == 3 and got[2] is not None:
                        at = now + got[2]
                        if at < limit:
                            limit = at
                try:  # (attempt_envelope, inline)
                    if merged is not None:  # one copy of the envelope for both changes
                        own = env.headers
                        one = msgspec.structs.replace(
                            env, deadline=limit, headers={**own, **merged} if own else merged
                        )
                    elif limit == deadline:
                        one = env
                    else:
                        one = msgspec.structs.replace(env, deadline=limit)
                    waiter = rt.deliver(one, self)
                    if limit != deadline:  # a link's timeout, from now
                        timeout = limit - now if limit > now else 0.0
                    timer = loop.call_at(limit, expire, reply, self.id, message, timeout)
                    try:
                        if waiter is not None:
                            await wait_for_room(waiter, reply)
                        result = await reply
                    finally:
                        timer.cancel()
                except BaseException as exc:
                    return await unwind(
                        outbound, ctx, entered, exc, len(outbound), rt, self, env, None
                    )
                i = len(outbound)
                while i:
                    i -= 1
                    link = outbound[i]
                    try:
                        link.after(ctx, entered[2 * i][0], result, None)
                    except Exception as exc:
                        link.entered(exc, 1)  # the links outside it unwind
                        return await unwind(outbound, ctx, entered, exc, i, rt, self, env, None)
                return result
            # The outermost link is synchronous: its hooks run here, in this coroutine
            # (none of their own); the rest of the chain inside them, as ask_through does.
            state, added, bound = head.enter_send(ctx, None)
            if bound is not None and now + bound < deadline:  # its timeout, from now
                deadline = now + bound
                timeout = bound
            try:
                if len(outbound) > 1:
                    result = await ask_through(outbound[1:], rt, self, env, ctx, added, deadline)
                else:  # the only link: the attempt made here too
                    one = env
                    if added is not None or bound is not None:
                        one = attempt_envelope(env, added, deadline)
                    waiter = rt.deliver(one, self)
                    timer = loop.call_at(deadline, expire, reply, self.id, message, timeout)
                    try:
                        if waiter is not None:
                            await wait_for_room(waiter, reply)
                        result = await reply
                    finally:
                        timer.cancel()
            except BaseException as exc:
                head.exit_failed(ctx, state, exc)
                raise
            head.exit(ctx, state, result)
            return result
        waiter = rt.deliver(env, self)
        timer = loop.call_at(deadline, expire, reply, self.id, message, timeout)
        try:
            if waiter is not None:
                await wait_for_room(waiter, reply)
            return await reply
        finally:
            timer.cancel()

    async def locate(self) -> str | None:
        """The id of the node hosting the agent now, or None.

        This node's id when it is active here. In a cluster: for ``"directory"``
        placement (and stateful types) the node holding its claim, read from the
        store (None when no node has it active); for ``"hash"`` and ``"local"``,
        which keep no record, the node its next message goes to. Without a cluster,
        None when it is not active here.

        Raises:
            Unavailable: the cluster's store cannot be reached.
        """
        rt = self._runtime
        act = rt.directory.get(self.id)
        if act is not None and not act.closed:
            return rt.kernel.node_id
        cluster = rt.cluster
        if cluster is None or rt.stopped:
            return None
        return await cluster.locate(self.id)

    async def deactivate(self) -> None:
        """Deactivate the agent once its mailbox is drained; wait until ``on_stop`` ran.

        Messages that arrive meanwhile are delivered, in order, to a fresh activation.
        Does nothing if the agent is not active. From inside the agent itself use
        ``self.deactivate_on_idle()`` (awaiting here would deadlock).

        Raises:
            DeadlockError: called by the agent on itself.
        """
        rt = self._runtime
        act = rt.directory.get(self.id)
        if act is None or act.closed:
            return
        if current_activation.get() is act:
            raise DeadlockError(
                f"{self.id} cannot await its own deactivation; use self.deactivate_on_idle()"
            )
        await asyncio.shield(act.deactivation())
