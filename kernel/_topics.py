"""Topics: subscriptions of agent types to topics, and event delivery.

A publish builds one envelope and puts that same envelope in every subscriber's
mailbox. A subscriber that cannot take an event gets nothing, and the event becomes a
dead letter for it; the others still receive it. Dead letters themselves are published
here on ``kerna.dead_letters``, never blocking and never about a dead letter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._activation import SPAWN_BURST, Activation
from ._envelope import EVENT, Envelope
from ._errors import ActivationFailed, Fenced, MailboxFull, UnknownAgent
from ._failures import describe
from ._ids import AgentId
from ._message import DeadLetter, Message

if TYPE_CHECKING:
    from ._kernel import Kernel

__all__ = ["DEAD_LETTERS", "Subscription", "Topics"]

DEAD_LETTERS = "kerna.dead_letters"


class Subscription:
    """A topic bound to an agent type; ``key(message)`` picks the agent per event."""

    __slots__ = ("_last", "_last_key", "key", "topic", "type_name")

    def __init__(self, topic: str, type_name: str, key: Callable[[Any], str]) -> None:
        self.topic = topic
        self.type_name = type_name
        self.key = key
        self._last_key: str | None = None  # one-entry cache: most topics hit few keys
        self._last: Activation | None = None

    def __repr__(self) -> str:
        return f"Subscription({self.topic!r} -> {self.type_name})"


def default_key(_: Any) -> str:
    return "default"


class Topics:
    """The kernel's subscriptions, by topic."""

    __slots__ = ("_by_topic", "_kernel")

    def __init__(self, kernel: Kernel) -> None:
        self._kernel = kernel
        self._by_topic: dict[str, list[Subscription]] = {}

    def subscribe(
        self, topic: str, type_name: str, key: Callable[[Any], str] | None
    ) -> Subscription:
        sub = Subscription(topic, type_name, key or default_key)
        self._by_topic.setdefault(topic, []).append(sub)
        return sub

    def unsubscribe(self, subscription: Subscription) -> None:
        subs = self._by_topic.get(subscription.topic)
        if subs and subscription in subs:
            subs.remove(subscription)
            if not subs:
                del self._by_topic[subscription.topic]

    async def publish(self, topic: str, message: Message, sender: Activation | None) -> None:
        subs = self._by_topic.get(topic)
        if not subs:
            return
        kernel = self._kernel
        env = self._envelope(topic, message, sender)
        for sub in subs if len(subs) == 1 else tuple(subs):
            act = self._subscriber(sub, env)
            if act is None:
                continue
            try:
                waiter = act.put(env)
                if waiter is not None:
                    await waiter
            except MailboxFull as exc:  # counted as rejected by the mailbox
                kernel._publish_dead_letter(env, act.id, "mailbox_full", exc)
            except (ActivationFailed, Fenced) as exc:  # refused while parked: counted
                kernel._publish_dead_letter(env, act.id, "not_delivered", exc)
        if kernel._unstarted > SPAWN_BURST:
            await asyncio.sleep(0)

    def _envelope(self, topic: str, message: Message, sender: Activation | None) -> Envelope:
        msg_id = next(self._kernel._ids)
        if sender is None:
            return Envelope(msg_id, EVENT, topic, message, None, msg_id)
        parent = sender.current
        if parent is None:
            return Envelope(msg_id, EVENT, topic, message, sender.id, msg_id)
        return Envelope(msg_id, EVENT, topic, message, sender.id, parent.correlation_id, parent.id)

    def _subscriber(self, sub: Subscription, env: Envelope) -> Activation | None:
        """The activation that receives ``env`` through ``sub``, or None (dead-lettered)."""
        kernel = self._kernel
        try:
            key: object = sub.key(env.payload)
        except Exception as exc:
            kernel._undeliverable(env, sub.type_name, "subscription_key_failed", exc)
            return None
        last = sub._last
        if last is not None and key == sub._last_key and not last.closed:
            act = last
        else:
            atype = kernel._types.get(sub.type_name)
            if atype is None:
                error: Exception = UnknownAgent(
                    f"{sub!r}: no agent type {sub.type_name!r} is registered"
                )
                kernel._undeliverable(env, sub.type_name, "unknown_agent", error)
                return None
            if not isinstance(key, str):
                error = TypeError(
                    f"key function of {sub!r} returned {type(key).__qualname__}, not str"
                )
                kernel._undeliverable(env, sub.type_name, "subscription_key_failed", error)
                return None
            act = kernel._activation(AgentId(sub.type_name, key), atype)
            sub._last, sub._last_key = act, key
        if act.failure is not None:
            kernel._undeliverable(env, act.id, "activation_failed", act.copy_failure())
            return None
        return act

    def publish_dead_letter(
        self, env: Envelope, target: AgentId | str, reason: str, error: BaseException | None
    ) -> None:
        """Publish a ``DeadLetter`` about ``env`` to its subscribers without blocking."""
        message = env.payload
        subs = self._by_topic.get(DEAD_LETTERS)
        if not subs or isinstance(message, DeadLetter):
            return  # a dead letter about a dead letter would loop
        dead = DeadLetter(
            target=str(target),
            message=message,
            reason=reason,
            error=None if error is None else describe(error),
            correlation_id=env.correlation_id,
        )
        kernel = self._kernel
        dl_env = Envelope(
            next(kernel._ids), EVENT, DEAD_LETTERS, dead, None, env.correlation_id, env.id
        )
        for sub in tuple(subs):
            act = self._subscriber(sub, dl_env)
            if act is not None:
                try:
                    act.put(dl_env, may_wait=False)
                except MailboxFull as exc:  # counted; not published again (a DeadLetter)
                    kernel._undeliverable(dl_env, act.id, "mailbox_full", exc)
