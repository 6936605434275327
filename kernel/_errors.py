"""kerna's errors: one hierarchy, named for what happened.

::

    KernaError
    ├── RegistrationError      bad agent/handler/state definition, duplicate registration
    ├── ConfigError            bad URL, config value, missing extra
    ├── UnknownAgent           no such agent type registered
    ├── UnhandledMessage       the agent has no handler for this message type
    ├── MailboxFull            no room: overflow="reject", dropped, or a self-tell
    ├── AskTimeout             also a TimeoutError: .target, .timeout
    ├── IdleTimeout            wait_idle gave up (also a TimeoutError)
    ├── DeadlockError          an ask whose target is already in the current ask chain
    ├── UsageError             an API called where it cannot work (also a RuntimeError)
    ├── RemoteError            a handler raised: .type_name, .message, .traceback, .node
    │   └── ActivationFailed   on_start kept failing until the restart budget ran out
    ├── KernelStopped          sent after stop, or pending when the kernel stopped
    ├── StateError
    │   ├── Conflict           compare-and-swap lost
    │   ├── Fenced             a write from an activation that no longer owns the agent
    │   ├── Unavailable        the backend cannot be reached (fail closed)
    │   │   └── OutcomeUnknown a write may or may not have been applied (settle it)
    │   ├── DecodeError        stored or received bytes do not decode into the type
    │   ├── Compacted          a watch or read asked for history the backend compacted
    │   ├── LeaseLost          the lease expired or was revoked
    │   ├── OwnedElsewhere     another kernel holds the agent's activation claim
    │   ├── StoreFailed        the store cannot take writes until an operator acts
    │   └── ValueTooLarge      a write over the store's size limit (etcd's request limit)
    ├── TransportError         a transport failed to carry a frame
    │   └── PeerUnreachable    the peer cannot be reached (kerna.transports)
    │       └── NodeLost       the node went away with the ask in flight: .peer
    └── CircuitOpen            raised by circuit breakers (from the middleware issue on)
    KernaInternalError         a bug in kerna, never the user's fault

This module imports nothing from kerna, so that ``kerna.state`` and
``kerna.transports`` may use it without pulling in the kernel.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ActivationFailed",
    "AskTimeout",
    "CircuitOpen",
    "Compacted",
    "ConfigError",
    "Conflict",
    "DeadlockError",
    "DecodeError",
    "Fenced",
    "IdleTimeout",
    "KernaError",
    "KernaInternalError",
    "KernelStopped",
    "LeaseLost",
    "MailboxFull",
    "NodeLost",
    "OutcomeUnknown",
    "OwnedElsewhere",
    "PeerUnreachable",
    "RegistrationError",
    "RemoteError",
    "StateError",
    "StoreFailed",
    "TransportError",
    "Unavailable",
    "UnhandledMessage",
    "UnknownAgent",
    "UsageError",
    "ValueTooLarge",
]


class KernaError(Exception):
    """Base class of every error kerna raises on purpose."""


class RegistrationError(KernaError):
    """An agent type, handler or state definition is invalid, or registered twice."""


class ConfigError(KernaError):
    """A URL, configuration value or option is invalid, or an extra is missing."""


class UnknownAgent(KernaError):
    """A message was addressed to an agent type that is not registered.

    Attributes:
        agent_type: the type name that is not registered ("" if not known).
    """

    def __init__(self, message: str, *, agent_type: str = "") -> None:
        super().__init__(message)
        self.agent_type = agent_type


class UnhandledMessage(KernaError):
    """The target agent type has no handler for the message's type.

    Attributes:
        agent_type: the agent type's name.
        message_type: the message's class (None if not known).
    """

    def __init__(
        self, message: str, *, agent_type: str = "", message_type: type | None = None
    ) -> None:
        super().__init__(message)
        self.agent_type = agent_type
        self.message_type = message_type


class MailboxFull(KernaError):
    """The target's mailbox is full and its policy refuses to wait.

    Raised for ``overflow="reject"``, for an ask that ``overflow="drop_oldest"`` pushed
    out, and for an agent telling itself into its own full ``wait`` mailbox (waiting
    would deadlock it).

    Attributes:
        target: the agent whose mailbox is full (an ``AgentId``; None if not known).
        capacity: that mailbox's capacity (0 if not known).
    """

    def __init__(self, message: str, *, target: Any = None, capacity: int = 0) -> None:
        super().__init__(message)
        self.target = target
        self.capacity = capacity


class AskTimeout(KernaError, TimeoutError):
    """No reply arrived before the ask's deadline.

    Attributes:
        target: the agent asked (an ``AgentId``; None if not known).
        timeout: the seconds the asker waited.
    """

    def __init__(self, message: str, *, target: Any = None, timeout: float = 0.0) -> None:
        super().__init__(message)
        self.target = target
        self.timeout = timeout


class IdleTimeout(KernaError, TimeoutError):
    """``Kernel.wait_idle`` timed out: agents were still busy.

    Attributes:
        busy: workers still running when it gave up.
        timeout: the seconds it waited.
    """

    def __init__(self, message: str, *, busy: int = 0, timeout: float = 0.0) -> None:
        super().__init__(message)
        self.busy = busy
        self.timeout = timeout


class DeadlockError(KernaError):
    """An ask's target is already waiting further up the same ask chain."""


class UsageError(KernaError, RuntimeError):
    """An API called where it cannot work: ``self.context`` outside a handler,
    ``defer_reply`` outside an ask handler, a deferred reply sent twice."""


class RemoteError(KernaError):
    """A handler raised; the asker gets this, the agent lives on.

    Across nodes it is the same error: the remote type name, message and traceback
    travel in the error reply, with the id of the node where it was raised (a failure
    passed up a chain of asks keeps its origin's).

    Attributes:
        type_name: qualified name of the original exception type.
        message: ``str()`` of the original exception.
        traceback: the formatted traceback, as a string.
        node: the id of the node whose handler raised it (``Kernel.node_id``; "" if
            not known: an error reply from a node of an older version).
    """

    def __init__(self, type_name: str, message: str, traceback: str = "", node: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback = traceback
        self.node = node


class ActivationFailed(RemoteError):
    """The agent's ``on_start`` kept failing until its restart budget ran out.

    The activation is marked failed: messages to it fail fast with this error until it
    is deactivated (``await ref.deactivate()``), after which the next message tries a
    fresh activation.
    """


class KernelStopped(KernaError):
    """The kernel is stopping or stopped: the message was refused or left pending."""


class StateError(KernaError):
    """Base class for state backend errors."""


class Conflict(StateError):
    """A compare-and-swap lost: someone else wrote first."""


class Fenced(StateError):
    """A write came from an activation that no longer owns the agent."""


class Unavailable(StateError):
    """The state backend cannot be reached; kerna fails closed.

    ``ambiguous`` is False when the operation certainly did not happen.
    """

    ambiguous = False


class OutcomeUnknown(Unavailable):
    """A write may or may not have been applied (the connection failed after sending).

    A backend raises it; kerna then sends the same conditional write once more to settle
    it, and raises it to the agent only if that fails too (the activation then reloads
    its state before its next message). Callers of a backend must settle it themselves
    (re-send the conditional write, or read again) before retrying.
    """

    ambiguous = True


class DecodeError(StateError):
    """Stored or received bytes do not decode into the expected type."""


class Compacted(StateError):
    """The requested revision was compacted away; resync from a fresh read.

    Attributes:
        compact_revision: the oldest revision still available (0 if unknown).
    """

    def __init__(self, message: str, compact_revision: int = 0) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision


class LeaseLost(StateError):
    """A lease expired or was revoked: what it held is gone."""


class OwnedElsewhere(StateError):
    """Another kernel holds this agent's activation claim; it cannot activate here.

    Attributes:
        holder: the node id named in the claim (None when it could not be read).
        revision: the store revision at which that claim was last written (0: not
            known); a replica of the directory that has applied it shows the claim.
    """

    def __init__(self, message: str, *, holder: str | None = None, revision: int = 0) -> None:
        super().__init__(message)
        self.holder = holder
        self.revision = revision


class StoreFailed(StateError):
    """The store cannot take writes, and retrying will not change that until an
    operator acts: its file or directory is read-only, or the database file was deleted
    or replaced while open (writes would go to a file nobody will find again).

    Unlike ``Unavailable`` it is not transient: the write was not applied, and the next
    ones fail the same way. The message names the file and the reason.
    """


class ValueTooLarge(StateError):
    """A write is larger than the store accepts (etcd: ``--max-request-bytes``, 1.5 MiB
    by default); it was not applied, and sending it again will not help.

    Attributes:
        size: the size of the request, in bytes.
        limit: the store's limit, in bytes (0 if the store did not say).
    """

    def __init__(self, message: str, size: int = 0, limit: int = 0) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class TransportError(KernaError):
    """A transport failed to carry a frame (``kerna.transports`` raises its subclasses)."""


class PeerUnreachable(TransportError):
    """The peer cannot be reached (refused, unknown, or its connection failed).

    Exported by ``kerna.transports``; defined here so that ``NodeLost`` can extend it.
    """


class NodeLost(PeerUnreachable):
    """The node an ask was sent to was lost (its connection broke, or it fell silent
    past the transport's heartbeat timeout) before it replied.

    The ask may or may not have been handled there: it is not retried (delivery is at
    most once). It is a ``PeerUnreachable``, so code catching that keeps working; a
    message sent *after* the loss to an agent of that node is not failed but waits for
    the agent to be placed again (in a cluster, see ``Kernel``), within its deadline.

    Attributes:
        peer: the lost node's transport address.
    """

    def __init__(self, message: str, *, peer: str = "") -> None:
        super().__init__(message)
        self.peer = peer


class CircuitOpen(KernaError):
    """A circuit breaker is open: the call was not attempted.

    Raised by ``kerna.plugins.Resilience`` to the caller of a target whose breaker is
    open, or half-open with every probe in flight, at once (nothing is sent); a
    policy's fallback, if any, answers instead.
    """


class KernaInternalError(Exception):
    """A bug in kerna, never the user's fault. Please report it."""
