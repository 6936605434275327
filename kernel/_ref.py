"""References to agents: the user's handle for ``tell``, ``ask`` and ``deactivate``.

Get one from ``kernel.ref(AgentClass, key)`` (or ``self.ref`` inside an agent); never
construct it. A ref is cheap and stays valid across deactivations: the next message
re-activates the agent.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any

from ._activation import SPAWN_BURST, current_activation
from ._envelope import ASK, TELL, Envelope
from ._errors import (
    AskTimeout,
    DeadlockError,
    UnhandledMessage,
    UnknownAgent,
)
from ._ids import AgentId
from ._message import Message

if TYPE_CHECKING:
    from ._activation import Activation
    from ._kernel import Kernel
    from ._registry import AgentType

__all__ = ["AgentRef"]


def _expire(reply: asyncio.Future[Any], target: AgentId, message: Any, timeout: float) -> None:
    if not reply.done():
        reply.set_exception(
            AskTimeout(f"no reply from {target} to {type(message).__qualname__} in {timeout:g}s")
        )


class AgentRef:
    """A handle on a virtual agent ``AgentId(type, key)`` in one kernel."""

    __slots__ = ("_activation", "_kernel", "id")

    def __init__(self, kernel: Kernel, agent_id: AgentId) -> None:
        self._kernel = kernel
        self.id = agent_id
        self._activation: Activation | None = None

    def __repr__(self) -> str:
        return f"AgentRef({self.id})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AgentRef) and other.id == self.id and other._kernel is self._kernel

    def __hash__(self) -> int:
        return hash(self.id)

    def _check_open(self, message: Any, sender: Activation | None) -> None:
        """Refuse a send the kernel does not take now (not started, or stopping)."""
        kernel = self._kernel
        if kernel._intake_closed and (sender is None or kernel._stopped):
            raise kernel._refuse(self.id, f"{type(message).__qualname__} not sent")

    def _target(self, message: Any) -> Activation:
        """The activation to deliver ``message`` to, checking everything a sender can fix."""
        kernel = self._kernel
        act = self._activation
        if act is None or act.closed:
            atype = kernel._types.get(self.id.type)
            if atype is None:
                raise UnknownAgent(f"no agent type {self.id.type!r} is registered")
            _check_handled(atype, message)
            act = self._activation = kernel._activation(self.id, atype)
        else:
            atype = act.atype
            if type(message) not in atype.handlers:
                _check_handled(atype, message)
        if act.failure is not None:
            atype.stats.rejected += 1
            raise act.copy_failure()
        return act

    async def tell(self, message: Message) -> None:
        """Send ``message`` without waiting for it to be handled.

        Returns once the message is in the agent's mailbox (after waiting for room if the
        agent's overflow policy is ``wait``). A failure in the handler goes to dead
        letters, not to the sender.

        Raises:
            UnknownAgent: the agent type is not registered.
            UnhandledMessage: the agent type has no handler for this message type.
            MailboxFull: the mailbox is full and the policy is ``reject`` (or the agent
                is telling itself into its own full mailbox).
            ActivationFailed: the agent failed to start.
            Fenced: a stateful agent's activation lost its claim (the kernel's lease)
                while this sender waited for room; the next send re-activates it.
            KernelStopped: the kernel is stopping.
        """
        sender = current_activation.get()
        self._check_open(message, sender)
        act = self._target(message)
        kernel = self._kernel
        msg_id = next(kernel._ids)
        if sender is None:
            env = Envelope(msg_id, TELL, self.id, message, None, msg_id)
        else:
            parent = sender.current
            if parent is None:
                env = Envelope(msg_id, TELL, self.id, message, sender.id, msg_id)
            else:
                env = Envelope(
                    msg_id, TELL, self.id, message, sender.id, parent.correlation_id, parent.id
                )
        waiter = act.put(env)
        if waiter is not None:
            await waiter
        elif kernel._unstarted > SPAWN_BURST:
            await asyncio.sleep(0)  # let the workers this sender woke run (see Kernel)

    async def ask(self, message: Message, *, timeout: float | None = None) -> Any:
        """Send ``message`` and wait for the handler's return value.

        Args:
            message: the request.
            timeout: seconds to wait; ``None`` means the kernel's ``ask_timeout``. Inside
                a handler the ask also inherits the remaining time of the message being
                handled, whichever is shorter.

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
        """
        kernel = self._kernel
        loop = kernel.loop
        if timeout is None:
            timeout = kernel.ask_timeout
        elif not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"ask timeout must be a positive number of seconds, got {timeout!r}")
        sender = current_activation.get()
        self._check_open(message, sender)
        deadline = loop.time() + timeout
        msg_id = next(kernel._ids)
        reply: asyncio.Future[Any] = loop.create_future()
        if sender is None:
            env = Envelope(msg_id, ASK, self.id, message, None, msg_id, 0, deadline, (), reply)
        else:
            env = self._nested(msg_id, message, sender, deadline, reply)
            assert env.deadline is not None
            deadline = env.deadline
            timeout = max(0.0, deadline - loop.time())
            if timeout == 0.0:
                raise AskTimeout(
                    f"deadline of the message being handled by {sender.id} passed before "
                    f"asking {self.id}"
                )
        # The envelope first: an ask refused by its own checks creates no activation.
        act = self._target(message)
        waiter = act.put(env)
        timer = loop.call_at(deadline, _expire, reply, self.id, message, timeout)
        try:
            if waiter is not None:
                await _wait_for_room(waiter, reply)
            return await reply
        finally:
            timer.cancel()

    def _nested(
        self,
        msg_id: int,
        message: Any,
        sender: Activation,
        deadline: float,
        reply: asyncio.Future[Any],
    ) -> Envelope:
        """The envelope of an ask made from inside a handler: inherits the context."""
        parent = sender.current
        if parent is None:
            chain: tuple[AgentId, ...] = (sender.id,)
            correlation_id, causation_id = msg_id, 0
        else:
            chain = (*parent.chain, sender.id)
            correlation_id, causation_id = parent.correlation_id, parent.id
            if parent.deadline is not None and parent.deadline < deadline:
                deadline = parent.deadline
        if self.id in chain:
            path = " -> ".join(str(a) for a in (*chain, self.id))
            raise DeadlockError(f"ask cycle: {path}")
        return Envelope(
            msg_id, ASK, self.id, message, sender.id, correlation_id, causation_id, deadline,
            chain, reply,
        )  # fmt: skip

    async def deactivate(self) -> None:
        """Deactivate the agent once its mailbox is drained; wait until ``on_stop`` ran.

        Messages that arrive meanwhile are delivered, in order, to a fresh activation.
        Does nothing if the agent is not active. From inside the agent itself use
        ``self.deactivate_on_idle()`` (awaiting here would deadlock).

        Raises:
            DeadlockError: called by the agent on itself.
        """
        kernel = self._kernel
        act = kernel._directory.get(self.id)
        if act is None or act.closed:
            return
        if current_activation.get() is act:
            raise DeadlockError(
                f"{self.id} cannot await its own deactivation; use self.deactivate_on_idle()"
            )
        if act.on_closed is None:
            act.on_closed = kernel.loop.create_future()
        closed = act.on_closed
        act.request_deactivation()
        await asyncio.shield(closed)


def _check_handled(atype: AgentType, message: Any) -> None:
    if not isinstance(message, Message):
        raise TypeError(
            f"messages must be kerna.Message instances, got {type(message).__qualname__}"
        )
    if atype.handler_for(type(message)) is None:
        raise UnhandledMessage(
            f"agent type {atype.name!r} has no handler for {type(message).__qualname__}"
        )


async def _wait_for_room(waiter: asyncio.Future[None], reply: asyncio.Future[Any]) -> None:
    """Wait for a mailbox slot, but give up when the ask's own deadline fires first."""
    if reply.done():
        waiter.cancel()
        return
    try:
        done, _ = await asyncio.wait((waiter, reply), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        waiter.cancel()  # a cancelled asker's parked message is skipped
        raise
    if waiter not in done:
        waiter.cancel()  # the parked message is skipped; the reply carries the timeout
        return
    error = waiter.exception()
    if error is not None:
        raise error
