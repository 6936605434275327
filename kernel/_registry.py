"""Agent types: the handler table of an Agent class and its per-type options and counters.

Registration validates a class once, so that dispatch is a dict lookup: the table maps
a message type to the plain function that handles it; a subclass of a handled type
falls back to its nearest handled base, and the answer is cached.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, Union

import msgspec

from ._chain import SyncHooks, compose, hooks
from ._errors import RegistrationError
from ._message import Message
from ._replies import check_reply
from ._timing import TypeTiming

if TYPE_CHECKING:
    from ._agent import Agent
    from ._persistence import StateSpec

__all__ = ["AgentType", "HandlerFn", "Overflow", "TypeStats", "build_handler_table", "type_name"]

Overflow = Literal["wait", "reject", "drop_oldest"]
OVERFLOW_POLICIES: tuple[str, ...] = ("wait", "reject", "drop_oldest")
HandlerFn = Callable[[Any, Any], Awaitable[Any]]
HANDLER_MARK = "__kerna_handler__"


class TypeStats(msgspec.Struct):
    """Counters of one agent type, as returned by ``Kernel.stats()``.

    Every message sent to an agent of the type is counted once, in exactly one of
    ``handled``, ``failed``, ``expired``, ``dropped``, ``dead_letters`` (its fate once
    accepted into a mailbox) or ``rejected`` (never accepted); a message whose handler
    is still running is counted when the handler returns.

    Attributes:
        active: activations alive now.
        queued: messages waiting in mailboxes now.
        handled: messages whose handler returned.
        failed: messages whose handler raised (including a handler interrupted by
            ``stop``). A failed tell or event is also published as a ``DeadLetter``.
            Also counts ``on_stop`` hooks that raised (not messages).
        dead_letters: accepted messages that never reached a handler: no handler for
            an event, a failed activation, the kernel stopping, a timer tick into a
            full mailbox.
        late_replies: replies that came after their asker gave up (also ``handled``
            or ``failed``).
        dropped: messages pushed out by ``overflow="drop_oldest"``.
        rejected: sends refused: a full ``reject`` mailbox, an agent telling itself
            into its full mailbox, a failed activation, a stopping kernel (parked
            senders included), or a sender that gave up while parked.
        expired: asks nobody waited for any more when their turn came (their asker
            timed out or was cancelled): their handler was not run.
        restarts: ``on_start`` retries.
        activations: activations created since the kernel started.
        deactivations: activations that left since the kernel started (idle, asked
            to, fenced, failed).
        in_flight: handlers running now (one per activation at most).
        pending: the type's work now: ``queued + in_flight``, the autoscaling signal
            (queued messages count, not only running ones).
    """

    active: int = 0
    queued: int = 0
    handled: int = 0
    failed: int = 0
    dead_letters: int = 0
    late_replies: int = 0
    dropped: int = 0
    rejected: int = 0
    expired: int = 0
    restarts: int = 0
    activations: int = 0
    deactivations: int = 0
    in_flight: int = 0
    pending: int = 0


def _message_types(annotation: Any, where: str) -> tuple[type[Message], ...]:
    """The Message classes an annotation names (a class or a union of classes)."""
    if isinstance(annotation, type):
        candidates: tuple[Any, ...] = (annotation,)
    elif typing.get_origin(annotation) in (Union, types.UnionType):
        candidates = typing.get_args(annotation)
    else:
        candidates = (annotation,)
    for candidate in candidates:
        if not (isinstance(candidate, type) and issubclass(candidate, Message)):
            raise RegistrationError(
                f"{where}: the message parameter must be annotated with a kerna.Message "
                f"subclass (or a union of them), not {candidate!r}"
            )
    return typing.cast(tuple[type[Message], ...], candidates)


def build_handler_table(cls: type) -> dict[type, HandlerFn]:
    """Collect ``@handler`` methods of ``cls`` (inherited ones included) into a table.

    A handler of a ``Request[Reply]`` must be annotated with its reply type, or a
    subclass of it (``-> Reply | None`` only if the request declares
    ``Request[Reply | None]``); without a return annotation it is not checked. The
    rules are in ``check_reply``.

    Raises:
        RegistrationError: a handler is not ``async``, lacks a Message annotation, two
            handlers claim one message type, a handler's return annotation disagrees
            with the reply type its request declares, or that reply type does not
            resolve.
    """
    methods: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if getattr(value, HANDLER_MARK, False):
                methods[name] = value
            elif name in methods:  # overridden by a plain attribute: no longer a handler
                del methods[name]
    table: dict[type, HandlerFn] = {}
    owners: dict[type, str] = {}
    for name, fn in methods.items():
        where = f"{cls.__qualname__}.{name}"
        if not inspect.iscoroutinefunction(fn):
            raise RegistrationError(f"{where}: a handler must be 'async def'")
        params = list(inspect.signature(fn).parameters.values())
        if len(params) != 2:
            raise RegistrationError(
                f"{where}: a handler takes exactly one message argument after self"
            )
        try:
            hints = typing.get_type_hints(fn)
        except Exception as exc:  # a forward reference that does not resolve
            raise RegistrationError(
                f"{where}: cannot resolve annotations: {exc}. Annotations are resolved in "
                "the module's globals when the class is registered (with 'from __future__ "
                "import annotations' they are strings): define the message class at module "
                "level, or drop 'from __future__ import annotations' from that module"
            ) from exc
        if params[1].name not in hints:
            raise RegistrationError(
                f"{where}: annotate the message parameter {params[1].name!r} with its "
                "kerna.Message type"
            )
        handled = _message_types(hints[params[1].name], where)
        if "return" in hints:
            check_reply(where, handled, hints["return"])
        for message_type in handled:
            if message_type in table:
                raise RegistrationError(
                    f"{cls.__qualname__}: two handlers for {message_type.__qualname__}: "
                    f"{owners[message_type]} and {name}"
                )
            table[message_type] = fn
            owners[message_type] = name
    return table


class AgentType:
    """A registered agent class with its options, handler table and counters."""

    __slots__ = (
        "around",
        "bare",
        "cancel_at_deadline",
        "capacity",
        "claims",
        "cls",
        "conflict_retries",
        "declared",
        "direct",
        "factory",
        "handlers",
        "has_on_stop",
        "idle_timeout",
        "max_restarts",
        "middleware",
        "name",
        "outbound",
        "overflow",
        "placement",
        "plain",
        "restart_backoff",
        "state_spec",
        "stats",
        "table",
        "timing",
    )

    def __init__(
        self,
        cls: type[Agent],
        name: str,
        *,
        capacity: int,
        overflow: str,
        idle_timeout: float | None,
        max_restarts: int,
        restart_backoff: float,
        cancel_at_deadline: bool,
        has_on_stop: bool,
        state_spec: StateSpec | None = None,
        conflict_retries: int = 0,
        factory: Callable[[], Agent] | None = None,
        placement: str = "directory",
        claims: bool = False,
    ) -> None:
        self.cls = cls
        self.name = name
        # ``table``: the plain handlers; ``handlers``: what the worker calls, the same
        # functions with an empty middleware chain, composed with it otherwise
        # (``chain``); ``outbound``: the ``send`` hooks around this type's sends.
        self.table = build_handler_table(cls)
        self.handlers = dict(self.table)
        self.declared = tuple(self.table)
        self.middleware: tuple[object, ...] = ()
        self.outbound: tuple[Any, ...] = ()
        self.around: SyncHooks | None = None
        self.bare = dict(self.table)  # the plain handlers, and their cached fallbacks
        self.capacity = capacity
        self.overflow = overflow
        self.idle_timeout = idle_timeout
        self.max_restarts = max_restarts
        self.restart_backoff = restart_backoff
        self.cancel_at_deadline = cancel_at_deadline
        self.has_on_stop = has_on_stop
        self.state_spec = state_spec
        self.conflict_retries = conflict_retries
        self.factory: Callable[[], Agent] = factory or cls
        # Cluster placement ("directory", "hash", "local"), and whether an activation
        # claims the agent first (stateful types; directory placement in a cluster).
        self.placement = placement
        self.claims = claims or state_spec is not None
        # Handlers of a "plain" type are awaited directly: no deadline scope, no retries
        # (a stateful activation whose state must be reloaded first goes through
        # Activation._call, whatever its type).
        self.direct = not cancel_at_deadline and not conflict_retries
        # ... and with no handle hook the worker calls itself (``around``, see ``chain``).
        self.plain = self.direct
        self.stats = TypeStats()
        # Mailbox wait and handling histograms, with Kernel(timing=N) only.
        self.timing: TypeTiming | None = None

    def chain(self, kernel_chain: tuple[object, ...]) -> None:
        """Compose the handler table and the send hooks with the kernel's chain and
        this type's own (``middleware``), in that order (outermost first)."""
        chain = (*kernel_chain, *self.middleware)
        inbound = hooks(chain, "handle")
        # One synchronous handle link (Tracing's, say): the worker calls its hooks itself
        # around the plain handlers (``around``; no coroutine of the chain's per
        # message). The composed table stays what Activation._call runs.
        self.around = (
            inbound[0] if len(inbound) == 1 and isinstance(inbound[0], SyncHooks) else None
        )
        self.plain = self.direct and self.around is None
        composed = compose(self.table, inbound)
        # In place: a worker draining its mailbox now holds this dict, and its next
        # message takes the new chain (cached fallbacks are found again).
        self.handlers.clear()
        self.handlers.update(composed)
        self.outbound = hooks(chain, "send")

    def handled_types(self) -> tuple[type, ...]:
        """The message types this type's handlers declare (not the cached fallbacks)."""
        return self.declared

    def plain_for(self, message_type: type) -> HandlerFn:
        """The plain handler for ``message_type`` (one ``handler_for`` found)."""
        fn = self.bare.get(message_type)
        if fn is None:
            for base in message_type.__mro__[1:]:
                fn = self.table.get(base)
                if fn is not None:
                    self.bare[message_type] = fn  # cache the fallback
                    break
        assert fn is not None  # (handler_for found the composed one)
        return fn

    def handler_for(self, message_type: type) -> HandlerFn | None:
        """The handler for ``message_type``, falling back to its nearest handled base."""
        fn = self.handlers.get(message_type)
        if fn is None:
            for base in message_type.__mro__[1:]:
                fn = self.handlers.get(base)
                if fn is not None:
                    self.handlers[message_type] = fn  # cache the fallback
                    break
        return fn


def build_state_spec(cls: type, where: str) -> StateSpec | None:
    """The state declaration of an agent class (``class A(Agent, state=S)``), checked.

    Raises:
        RegistrationError: the state type is not a frozen msgspec Struct, its initial
            value cannot be built, or an event-sourced class has no usable ``apply``.
    """
    from kerna.state._eventlog import EventSourcing

    from ._persistence import StateSpec

    state_type = getattr(cls, "__kerna_state__", None)
    if state_type is None:
        if getattr(cls, "__kerna_event_sourced__", False):
            raise RegistrationError(f"{where}: event_sourced=True needs state=<Struct type>")
        return None
    if not (isinstance(state_type, type) and issubclass(state_type, msgspec.Struct)):
        raise RegistrationError(f"{where}: state must be a msgspec.Struct type, got {state_type!r}")
    if not state_type.__struct_config__.frozen:
        raise RegistrationError(
            f"{where}: state type {state_type.__qualname__} must be frozen "
            "(class S(msgspec.Struct, frozen=True)): self.state is shared, never mutated"
        )
    initial = getattr(cls, "initial_state", None) or state_type
    try:
        first = initial()
    except Exception as exc:
        raise RegistrationError(
            f"{where}: cannot build the initial state: {exc}; give the state's fields "
            "defaults or define a staticmethod initial_state()"
        ) from exc
    if type(first) is not state_type:
        raise RegistrationError(f"{where}: initial_state() must return a {state_type.__qualname__}")
    sourcing = None
    if getattr(cls, "__kerna_event_sourced__", False):
        owner = next((k for k in cls.__mro__ if "apply" in vars(k)), None)
        if owner is None or not isinstance(vars(owner)["apply"], staticmethod):
            raise RegistrationError(
                f"{where}: an event-sourced agent needs "
                "'@staticmethod def apply(state: S, event: E) -> S'"
            )
        apply: Any = vars(owner)["apply"].__func__
        try:
            sourcing = EventSourcing(
                state_type,
                apply,
                initial=initial,
                snapshot_every=getattr(cls, "__kerna_snapshot_every__", 1000),
            )
        except TypeError as exc:
            raise RegistrationError(f"{where}: {exc}") from exc
    return StateSpec(state_type, initial, sourcing)


def type_name(registered: Mapping[str, AgentType], agent_type: type[Agent] | str) -> str:
    """The type name ``agent_type`` stands for: a name as given; a class by the name it
    is registered under in ``registered``, else by its class name.

    Raises:
        TypeError: ``agent_type`` is neither a class nor a name.
    """
    if isinstance(agent_type, str):
        return agent_type
    if isinstance(agent_type, type):
        for name, atype in registered.items():
            if atype.cls is agent_type:
                return name
        return agent_type.__name__
    raise TypeError(f"agent type must be an Agent class or a name, got {agent_type!r}")
