"""kerna: an embeddable asyncio kernel for multi-agent systems.

The public API is re-exported here from private modules, lazily: a name's module is
imported when the name is first used (``from kerna import Kernel``, ``kerna.Kernel``).
So ``import kerna`` is cheap, and ``import kerna.state`` (which runs this file first)
does not load the kernel, anyio or anything a backend does not need.

``_EXPORTS`` is the one table of public names and their modules. A new public name
goes into it, into the imports for type checkers below (mypy and IDEs read those) and
into ``__all__``; ``tests/test_exports.py`` checks that the three agree.
"""

import importlib
import typing  # as a module: no helper names among the public ones

__version__ = "0.1.0"

# name -> private module (under kerna) that defines it
_EXPORTS: dict[str, str] = {
    "Agent": "_agent",
    "handler": "_agent",
    "BlockingKernel": "_blocking",
    "BlockingRef": "_blocking",
    "BlockingEventLog": "_blocking_state",
    "BlockingReplica": "_blocking_state",
    "Member": "_cluster_members",
    "PlacementStrategy": "_cluster_placement",
    "Rendezvous": "_cluster_placement",
    "MessageContext": "_context",
    "PendingReply": "_deferred",
    "ActivationFailed": "_errors",
    "AskTimeout": "_errors",
    "CircuitOpen": "_errors",
    "Compacted": "_errors",
    "ConfigError": "_errors",
    "Conflict": "_errors",
    "DeadlockError": "_errors",
    "DecodeError": "_errors",
    "Fenced": "_errors",
    "IdleTimeout": "_errors",
    "KernaError": "_errors",
    "KernaInternalError": "_errors",
    "KernelStopped": "_errors",
    "LeaseLost": "_errors",
    "MailboxFull": "_errors",
    "NodeLost": "_errors",
    "OutcomeUnknown": "_errors",
    "OwnedElsewhere": "_errors",
    "RegistrationError": "_errors",
    "RemoteError": "_errors",
    "StateError": "_errors",
    "StoreFailed": "_errors",
    "TransportError": "_errors",
    "Unavailable": "_errors",
    "UnhandledMessage": "_errors",
    "UnknownAgent": "_errors",
    "UsageError": "_errors",
    "ValueTooLarge": "_errors",
    "DeadLetterRecord": "_dead_letters",
    "DeadLetterStats": "_dead_letters",
    "ReplayResult": "_dead_letters",
    "ScalingPolicy": "_autoscale",
    "WorkerPool": "_autoscale",
    "Histogram": "_timing",
    "TypeTimings": "_timing",
    "AgentId": "_ids",
    "DeliveryStats": "_delivery_order",
    "Kernel": "_kernel",
    "KernelStats": "_kernel",
    "Subscription": "_kernel",
    "DeadLetter": "_message",
    "DeadLetterReason": "_message",
    "Message": "_message",
    "Request": "_message",
    "AgentRef": "_ref",
    "TypeStats": "_registry",
    "Timer": "_timers",
}

if typing.TYPE_CHECKING:
    from ._agent import Agent, handler
    from ._autoscale import ScalingPolicy, WorkerPool
    from ._blocking import BlockingKernel, BlockingRef
    from ._blocking_state import BlockingEventLog, BlockingReplica
    from ._cluster_members import Member
    from ._cluster_placement import PlacementStrategy, Rendezvous
    from ._context import MessageContext
    from ._dead_letters import DeadLetterRecord, DeadLetterStats, ReplayResult
    from ._deferred import PendingReply
    from ._delivery_order import DeliveryStats
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
        NodeLost,
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
    from ._timing import Histogram, TypeTimings

__all__ = [
    "ActivationFailed",
    "Agent",
    "AgentId",
    "AgentRef",
    "AskTimeout",
    "BlockingEventLog",
    "BlockingKernel",
    "BlockingRef",
    "BlockingReplica",
    "CircuitOpen",
    "Compacted",
    "ConfigError",
    "Conflict",
    "DeadLetter",
    "DeadLetterReason",
    "DeadLetterRecord",
    "DeadLetterStats",
    "DeadlockError",
    "DecodeError",
    "DeliveryStats",
    "Fenced",
    "Histogram",
    "IdleTimeout",
    "KernaError",
    "KernaInternalError",
    "Kernel",
    "KernelStats",
    "KernelStopped",
    "LeaseLost",
    "MailboxFull",
    "Member",
    "Message",
    "MessageContext",
    "NodeLost",
    "OutcomeUnknown",
    "OwnedElsewhere",
    "PendingReply",
    "PlacementStrategy",
    "RegistrationError",
    "RemoteError",
    "Rendezvous",
    "ReplayResult",
    "Request",
    "ScalingPolicy",
    "StateError",
    "StoreFailed",
    "Subscription",
    "Timer",
    "TransportError",
    "TypeStats",
    "TypeTimings",
    "Unavailable",
    "UnhandledMessage",
    "UnknownAgent",
    "UsageError",
    "ValueTooLarge",
    "WorkerPool",
    "handler",
]


if not typing.TYPE_CHECKING:  # hidden from mypy, which would otherwise accept any name

    def __getattr__(name: str) -> object:
        module = _EXPORTS.get(name)
        if module is None:
            raise AttributeError(f"module 'kerna' has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value  # later uses are plain global lookups
        return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
