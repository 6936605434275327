"""Forwarding: the messages a node sends on for others, and who owns those sends.

Two kinds of message leave a node with no sender awaiting their send: the ones an
activation here held when it found its agent's claim held by another node (``moved``:
sent on to the holder, once), and the ones placed again as a new send would be
(``redeliver``: a lost member's parked messages once it is gone, a hand-off's, the
messages held until a marker passed). Such a send, while it waits for its connection
(or room), is owned by the link (``Remote.own``); an ask whose send fails gets the error
at its asker, and a message that cannot be sent at all is a dead letter.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ._errors import UnknownAgent
from ._message import DeadLetterReason

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Awaitable

    from ._activation import Activation
    from ._cluster import Cluster
    from ._cluster_placement import ClusterRoute
    from ._envelope import Envelope
    from ._errors import OwnedElsewhere

__all__ = ["Forwarder"]

log = logging.getLogger("kerna.cluster")


class Forwarder:
    """Sends messages on for one node of the cluster (see the module docstring).

    Args:
        cluster: this node's cluster.
    """

    __slots__ = ("cluster", "forwarded")

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.forwarded = 0  # messages forwarded to the holder of their agent's claim

    def redeliver(self, env: Envelope) -> asyncio.Future[None] | None:
        """Route ``env`` again, as a new send would be (its asker, if any, waits on).

        Returns:
            The send, while it waits for its connection (or room): it is owned by the
            link (nobody needs to await it); None once queued, or if it failed.
        """
        rt = self.cluster.runtime
        try:
            sent = rt.deliver(env, None)
        except Exception as exc:  # nobody to place it on, it cannot be encoded
            rt.not_handled(env, env.target, DeadLetterReason.NOT_DELIVERED, exc)
            return None
        return None if sent is None else self._own(sent, env)

    def moved(self, act: Activation, error: OwnedElsewhere) -> bool:
        """``act`` found its agent claimed by another node: forward what it holds to
        that node and retire it; False (nothing done) when the holder is this node
        (a claim of an earlier lease) or not a live member (its lease is ending).
        """
        cluster = self.cluster
        holder = error.holder
        if holder is None or holder == cluster.node_id:
            return False
        try:
            route = cluster.route_to(holder)
        except UnknownAgent:
            return False
        rt = cluster.runtime
        envs = act.take_to_move()  # parked senders' messages too: re-routed, not refused
        rt.retire(act)
        log.debug("%s is held by %s: %d messages forwarded", act.id, holder, len(envs))
        for env in envs:
            self._forward(route, env)
        return True

    def _forward(self, route: ClusterRoute, env: Envelope) -> None:
        self.forwarded += 1
        try:
            sent = route.put(env)
        except Exception as exc:  # the message cannot be encoded
            self.cluster.runtime.not_handled(env, env.target, DeadLetterReason.NOT_DELIVERED, exc)
            return
        if sent is not None:  # nobody awaits a forwarded send: the link owns it
            self._own(sent, env)

    def _own(self, sent: Awaitable[None], env: Envelope) -> asyncio.Future[None]:
        remote = self.cluster.remote
        assert remote is not None
        owned = remote.own(sent)
        reply = env.reply
        if reply is not None:
            owned.add_done_callback(lambda done: _send_done(done, reply))
        return owned


def _send_done(sent: asyncio.Future[None], reply: asyncio.Future[Any]) -> None:
    """A forwarded ask whose send failed: its asker gets the error (nobody awaits the
    send itself)."""
    if sent.cancelled() or reply.done():
        return
    error = sent.exception()
    if error is not None:
        reply.set_exception(error)
