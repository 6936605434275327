"""Agents: subclass ``Agent``, mark ``async`` methods with ``@handler``.

Each handler takes one message, annotated with its Message type, and may return a reply
(for ``ask``). The kernel creates agents itself (``cls()``), one activation per
``AgentId`` at a time, and feeds each one message at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from ._context import MessageContext
from ._deferred import PendingReply
from ._envelope import ASK
from ._errors import UsageError
from ._registry import HANDLER_MARK

if TYPE_CHECKING:
    from ._activation import Activation
    from ._ids import AgentId
    from ._kernel import Kernel
    from ._message import Message
    from ._ref import AgentRef
    from ._timers import Timer

__all__ = ["Agent", "bind", "handler", "load_state"]

F = TypeVar("F", bound=Callable[..., Any])


def handler(fn: F) -> F:
    """Mark an ``async`` method as the handler of the Message type it is annotated with.

    Example::

        class Echo(Agent):
            @handler
            async def ping(self, msg: Ping) -> Pong:
                return Pong(n=msg.n)

    Checks (async, one annotated Message parameter, one handler per type) run when the
    class is registered, and raise ``RegistrationError``.
    """
    setattr(fn, HANDLER_MARK, True)
    return fn


class Agent:
    """Base class of agents.

    The kernel sets ``self.id`` and ``self.kernel`` before ``on_start`` runs. Inside a
    handler ``self.context`` describes the message being handled (sender, ids, kind,
    headers, deadline). Sends made from inside a handler (``self.ref(...).ask(...)``,
    ``self.publish(...)``, or any ref's ``tell``/``ask``) carry the handled message's
    correlation id, its id as causation id, its headers, its deadline and the ask chain,
    automatically.
    """

    # The activation is the one per-instance slot kerna needs: id and kernel live on it.
    # ``state`` is a slot too: for stateful types the kernel keeps it equal to the
    # committed state, and a read costs what a plain attribute read costs (a property
    # would cost four times as much: benchmarks/RESULTS-state.md). Assigning to it is
    # refused for stateful types, by the ``__setattr__`` they get (see __init_subclass__).
    __slots__ = ("_activation", "state")
    _activation: Activation
    state: Any
    """The agent's state as last loaded or saved (types declared with ``state=``).

    Read-only for those: ``await self.save(new)`` changes and persists it (assigning
    raises ``AttributeError`` saying so). Other agents may use ``self.state`` as a plain
    attribute of their own."""
    __kerna_state__: type[Any] | None = None
    __kerna_event_sourced__: bool = False
    __kerna_snapshot_every__: int = 1000

    def __init_subclass__(
        cls,
        *,
        state: type[Any] | None = None,
        event_sourced: bool = False,
        snapshot_every: int = 1000,
        **kwargs: Any,
    ) -> None:
        """Class options: ``class Counter(Agent, state=Count)``; event-sourced agents add
        ``event_sourced=True`` (and ``snapshot_every=N``, default 1000) and define
        ``@staticmethod apply(state, event) -> state``."""
        super().__init_subclass__(**kwargs)
        if state is not None:
            cls.__kerna_state__ = state
        if cls.__kerna_state__ is not None and "__setattr__" not in vars(cls):
            type.__setattr__(cls, "__setattr__", _stateful_setattr)
        if event_sourced:
            cls.__kerna_event_sourced__ = True
            cls.__kerna_snapshot_every__ = snapshot_every

    @property
    def id(self) -> AgentId:
        """This agent's identity."""
        return self._activation.id

    @property
    def kernel(self) -> Kernel:
        """The kernel hosting this agent."""
        return self._activation.runtime.kernel

    @property
    def context(self) -> MessageContext:
        """The message being handled: sender, ids, kind, topic, headers, time left.

        It describes the message this agent is handling when it is read: a task that a
        handler started and left running sees the agent's later messages (read what it
        needs before the handler returns), or raises once the agent is idle.

        Raises:
            UsageError: no message is being handled (``on_start``, ``on_stop``, a task
                the handler left running after it returned).
        """
        act = self._activation
        env = act.current
        if env is None:
            raise UsageError(f"{act.id}: self.context is only available while a handler runs")
        return MessageContext(env, act.runtime.loop)

    def defer_reply(self) -> PendingReply:
        """Take the reply of the ask being handled, to send it later.

        The handler's return value is then ignored: the asker gets what
        ``pending.reply(value)`` or ``pending.fail(error)`` sends, from any handler of
        this agent, while the agent handles other messages meanwhile. The ask's deadline
        still holds: a reply never sent fails its asker with ``AskTimeout`` then.
        Deactivation and stop fail replies not yet sent with ``KernelStopped``; an agent
        with a reply to send is not deactivated for idleness while its asker waits.

        Raises:
            UsageError: not called from an ask's handler, or called twice for one ask.
        """
        act = self._activation
        env = act.current
        if env is None or env.kind != ASK:
            raise UsageError(f"{act.id}: defer_reply() works only in the handler of an ask")
        reply = env.reply
        if reply is None:
            raise UsageError(f"{act.id}: this ask's reply is already deferred")
        env.reply = None  # the worker no longer answers it: the PendingReply does
        pending = PendingReply(act, env, reply)
        if act.pending is None:
            act.pending = set()
        act.pending.add(pending)
        return pending

    async def on_start(self) -> None:
        """Called once per activation, before the first message.

        If it raises, the kernel retries it with exponential backoff, up to the type's
        ``max_restarts``; then the activation is marked failed (``ActivationFailed``).
        """

    async def on_stop(self) -> None:
        """Called once per activation when it is deactivated or the kernel stops.

        Not called for an activation whose ``on_start`` never succeeded.
        """

    def ref(self, agent_type: type[Agent] | str, key: str) -> AgentRef:
        """A reference to another agent (shortcut for ``self.kernel.ref``)."""
        return self._activation.runtime.kernel.ref(agent_type, key)

    async def publish(
        self, topic: str, message: Message, *, headers: Mapping[str, str] | None = None
    ) -> None:
        """Publish an event; it carries the current message's context (correlation id,
        headers); see ``Kernel.publish``."""
        await self._activation.runtime.kernel.publish(topic, message, headers=headers)

    def schedule(self, delay: float, message: Message, *, repeat: bool = False) -> Timer:
        """Deliver ``message`` to this agent after ``delay`` seconds (every ``delay`` if
        ``repeat``).

        The timer dies with the activation; ``timer.cancel()`` stops it earlier. A tick
        that finds the mailbox full is dropped (and counted as a dead letter) rather than
        blocking. Timers do not keep an agent active: an idle agent is deactivated
        between ticks spaced wider than its idle timeout. A tick starts a conversation
        of its own (no sender's deadline, a fresh correlation id) but carries the headers
        of the message being handled when the timer was started, so a trace continues.

        Raises:
            ValueError: ``delay`` is negative or not finite, or zero with ``repeat``.
            TypeError: ``delay`` is not a number, or ``message`` not a kerna Message.
            UnhandledMessage: this agent has no handler for ``message``.
        """
        return self._activation.schedule(delay, message, repeat=repeat)

    def time_left(self) -> float | None:
        """Seconds until the deadline of the message being handled (None: no deadline)."""
        return self._activation.time_left()

    @property
    def correlation_id(self) -> int:
        """Correlation id of the message being handled (0 outside a handler); the same
        as ``self.context.correlation_id``."""
        current = self._activation.current
        return 0 if current is None else current.correlation_id

    # -- state (for classes declared with state=...) ----------------------------------------

    async def save(self, new_state: Any) -> None:
        """Write ``new_state`` (compare-and-swap on the revision read); then
        ``self.state == new_state``.

        Raises:
            Conflict: the stored state changed since it was read; ``self.state`` now holds
                the stored value. Register with ``conflict_retries=N`` to have the kernel
                re-run the handler (on the reloaded state) instead.
            Fenced: this activation lost its claim (its lease lapsed); it will deactivate.
            Unavailable: the backend could not be reached; the write did not happen, or
                (``OutcomeUnknown``, ``ambiguous``) could not be confirmed either way:
                the agent then reloads its state before its next message.
            ValueTooLarge: the state is over the store's size limit (etcd's request
                limit); not saved.
            TypeError: ``new_state`` is not of the declared state type.
        """
        act = self._activation
        spec = act.atype.state_spec
        if spec is None or spec.sourcing is not None:
            raise TypeError(f"{type(self).__name__}.save() needs class option state=<Struct>")
        await act.save(new_state)

    async def emit(self, *events: Any) -> None:
        """Event-sourced agents: append ``events`` to the log and fold them into
        ``self.state`` with ``apply``. Atomic: all or none are appended.

        Raises:
            Conflict: another writer appended first (the state is reloaded).
            Fenced, Unavailable, ValueTooLarge: as for ``save``.
        """
        act = self._activation
        spec = act.atype.state_spec
        if spec is None or spec.sourcing is None:
            raise TypeError(f"{type(self).__name__}.emit() needs class option event_sourced=True")
        if not events:
            return
        await act.emit(events)

    async def reload(self, *, linearizable: bool = True) -> Any:
        """Re-read the state from the backend and return it (a quorum read when
        ``linearizable``; event-sourced state is always read from the quorum: the latest
        snapshot and the events after it).

        Raises:
            TypeError: the class declares no state.
            Unavailable: the backend could not be reached; ``self.state`` is unchanged.
            DecodeError: the stored state or an event does not decode.
        """
        act = self._activation
        spec = act.atype.state_spec
        if spec is None:
            raise TypeError(f"{type(self).__name__} declares no state")
        await act.reload(linearizable=linearizable)
        return act.state

    def deactivate_on_idle(self) -> None:
        """Deactivate this agent once its mailbox is empty (after ``on_stop``).

        Safe to call from a handler: unlike ``await ref.deactivate()`` it does not wait.
        """
        self._activation.request_deactivation()


def bind(agent: Agent, act: Activation) -> None:
    """Attach a freshly built agent to its activation (before ``on_start``)."""
    agent._activation = act  # noqa: SLF001 - the activation owns its agent's binding


def load_state(agent: Agent, value: Any) -> None:
    """Set the committed state an agent reads as ``self.state`` (past the guard)."""
    object.__setattr__(agent, "state", value)


def _stateful_setattr(self: Agent, name: str, value: Any) -> None:
    """``__setattr__`` of agent types declared with ``state=``: ``self.state`` mirrors
    the stored state, so assigning to it (which would persist nothing) is refused."""
    if name == "state":
        cls = type(self)
        raise AttributeError(
            f"{cls.__qualname__}.state is read-only: it mirrors the stored state. "
            "Use 'await self.save(new_state)' to change and persist it"
            + (" (or 'await self.emit(event)')" if cls.__kerna_event_sourced__ else "")
        )
    object.__setattr__(self, name, value)
