"""kerna: an embeddable asyncio kernel for multi-agent systems.

The public API is re-exported here; everything else lives in private modules.
"""

from ._agent import Agent, handler
from ._blocking import BlockingKernel, BlockingRef
from ._context import MessageContext
from ._deferred import PendingReply
from ._errors import (
    ActivationFailed,
    AskTimeout,
    CircuitOpen,
    Compacted,
    ConfigError,
    Conflict,
    DeadlockError,
    DecodeError,
    Fenced,
    IdleTimeout,
    KernaError,
    KernaInternalError,
    KernelStopped,
    LeaseLost,
    MailboxFull,
    OutcomeUnknown,
    OwnedElsewhere,
    RegistrationError,
    RemoteError,
    StateError,
    StoreFailed,
    TransportError,
    Unavailable,
    UnhandledMessage,
    UnknownAgent,
    UsageError,
    ValueTooLarge,
)
from ._ids import AgentId
from ._kernel import Kernel, KernelStats, Subscription
from ._message import DeadLetter, DeadLetterReason, Message, Request
from ._ref import AgentRef
from ._registry import TypeStats
from ._timers import Timer

__version__ = "0.1.0"

__all__ = [
    "ActivationFailed",
    "Agent",
    "AgentId",
    "AgentRef",
    "AskTimeout",
    "BlockingKernel",
    "BlockingRef",
    "CircuitOpen",
    "Compacted",
    "ConfigError",
    "Conflict",
    "DeadLetter",
    "DeadLetterReason",
    "DeadlockError",
    "DecodeError",
    "Fenced",
    "IdleTimeout",
    "KernaError",
    "KernaInternalError",
    "Kernel",
    "KernelStats",
    "KernelStopped",
    "LeaseLost",
    "MailboxFull",
    "Message",
    "MessageContext",
    "OutcomeUnknown",
    "OwnedElsewhere",
    "PendingReply",
    "RegistrationError",
    "RemoteError",
    "Request",
    "StateError",
    "StoreFailed",
    "Subscription",
    "Timer",
    "TransportError",
    "TypeStats",
    "Unavailable",
    "UnhandledMessage",
    "UnknownAgent",
    "UsageError",
    "ValueTooLarge",
    "handler",
]
