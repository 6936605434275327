"""The Kernel's publish/subscribe: topics, their subscriptions by agent type, events.

A mixin of ``Kernel`` (``kerna._kernel``), kept apart so that the facade stays about
starting, stopping, registering and sending to one agent; the subscriptions live in
the runtime's ``Topics`` (``kerna._topics``), and a publish takes the delivery path
(``Runtime.deliver``, in a cluster ``kerna._cluster_topics``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ._activation import SPAWN_BURST, current_activation
from ._envelope import EVENT, Envelope, outgoing
from ._errors import UnknownAgent
from ._message import Message
from ._options import check_headers
from ._registry import type_name
from ._runtime import RUNNING
from ._sends import publish_through

if TYPE_CHECKING:
    from ._agent import Agent
    from ._runtime import Runtime
    from ._topics import Subscription

__all__ = ["KernelTopics"]


class KernelTopics:
    """A ``Kernel``'s topics (see the module docstring)."""

    _runtime: Runtime

    def subscribe(
        self,
        topic: str,
        agent_type: type[Agent] | str,
        *,
        key: Callable[[Any], str] | None = None,
    ) -> Subscription:
        """Deliver every event published on ``topic`` to an agent of ``agent_type``.

        ``key(event)`` picks the agent key per event (default: always ``"default"``).
        Every subscription gets the same event object. Returns a handle for
        ``unsubscribe``.

        Raises:
            UnknownAgent: ``agent_type`` is not registered (register it first).
            TypeError: ``topic`` is not a string or ``key`` is not callable.
        """
        if not isinstance(topic, str) or not topic:
            raise TypeError(f"topic must be a non-empty str, got {topic!r}")
        if key is not None and not callable(key):
            raise TypeError(f"key must be a callable event -> str, got {key!r}")
        name = type_name(self._runtime.types, agent_type)
        if name not in self._runtime.types:
            raise UnknownAgent(
                f"cannot subscribe {name!r} to {topic!r}: no agent type {name!r} is "
                "registered (register it before subscribing)",
                agent_type=name,
            )
        subscription = self._runtime.topics.subscribe(topic, name, key)
        if self._runtime.cluster is not None:
            self._runtime.cluster.types_changed()  # other nodes learn who subscribes
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Remove a subscription; unknown ones are ignored."""
        self._runtime.topics.unsubscribe(subscription)
        if self._runtime.cluster is not None:
            self._runtime.cluster.types_changed()

    async def publish(
        self, topic: str, message: Message, *, headers: Mapping[str, str] | None = None
    ) -> None:
        """Publish an event to every subscription of ``topic``.

        One envelope, shared by reference, reaches every subscriber. Waits for room in
        ``wait`` mailboxes; a subscriber that cannot take the event (unknown type, no
        handler, ``reject`` mailbox full, failed activation, key function raising)
        gets nothing and the event becomes a dead letter for it: the other subscribers
        still receive it. ``headers`` reach the subscribers' ``self.context.headers``.
        A publish passes through the middleware chain's ``send`` hooks, as a tell does.

        Raises:
            TypeError: ``message`` is not a kerna.Message, ``topic`` not a non-empty
                str, or ``headers`` not a mapping of str to str.
            KernelStopped: the kernel is stopping.
        """
        rt = self._runtime
        sender = current_activation.get()
        if rt.phase is not RUNNING and not rt.accepts(sender):
            raise rt.refusal(f"event on {topic!r} not published")
        if not isinstance(message, Message):
            raise TypeError(
                f"events must be kerna.Message instances, got {type(message).__qualname__}"
            )
        if (type(topic) is not str or not topic) and not (isinstance(topic, str) and topic):
            raise TypeError(f"topic must be a non-empty str, got {topic!r}")  # as subscribe
        if headers is not None:
            headers = check_headers(headers)
        if sender is None:  # a root: no context to carry (built here: the hot path)
            msg_id = next(rt.ids)
            if headers is None:  # fewer arguments: measurably cheaper on W3
                env = Envelope(msg_id, EVENT, topic, message, None, msg_id)
            else:
                env = Envelope(msg_id, EVENT, topic, message, None, msg_id, headers=headers)
        else:
            env = outgoing(
                rt.ids, EVENT, topic, message, sender.id, sender.current, None, None, headers
            )
        outbound = rt.outbound if sender is None else sender.atype.outbound
        if outbound:  # the middleware chain's send hooks (kerna._chain)
            await publish_through(outbound, rt, env)
            return
        pending = rt.deliver(env)
        if pending is not None:
            await pending
        elif rt.unstarted > SPAWN_BURST:
            await asyncio.sleep(0)  # let the workers this publish woke run (see Runtime)
