"""The routes a ``Remote`` hands the delivery path, and the reply future of an ask
from another node.

- ``RemoteRoute``: where a ref to an agent on another node sends (``put`` is
  ``Remote.send`` bound to that node).
- ``LocalRoute``: the route cache slot of a local target of messages from other nodes
  (what a ref's ``route`` is for a local send).
- ``RemoteReply``: an ask from another node's reply future; completing it sends the
  reply.
- ``takes``: whether a route takes a message at once (the warm path's check).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from ._envelope import Envelope
from ._runtime import RUNNING

if TYPE_CHECKING:
    from ._remote import Remote
    from ._runtime import Runtime

__all__ = ["LocalRoute", "RemoteReply", "RemoteRoute", "RemoteType", "takes"]


class LocalRoute:
    """A route cache slot for ``Runtime.deliver`` (the role an ``AgentRef`` plays)."""

    __slots__ = ("route",)

    # Runtime.deliver: a message another node sent here is not placed again.
    inbound = True

    def __init__(self) -> None:
        self.route: Any = None


class RemoteType:
    """The agent type a remote route stands for: the destination checks handlers
    itself, so every message type is handled here. ``handlers`` learns each type sent
    (``handler_for``, asked by ``check_handled`` on a send's first, slow path), so a
    warm send's check (``type(message) in route.atype.handlers``) is a dict lookup."""

    __slots__ = ("handlers", "name")

    def __init__(self) -> None:
        self.handlers: dict[type, bool] = {}
        self.name = "remote"

    def handler_for(self, message_type: type) -> bool:
        self.handlers[message_type] = True
        return True


_REMOTE_TYPE = RemoteType()


class RemoteRoute:
    """Where a ref to an agent on another node sends: that node's address.

    It has the shape ``Runtime.deliver`` and ``AgentRef`` read of a local activation
    (``closed``, ``failure``, ``atype.handlers``, ``put``), so a remote send takes the
    same path as a local one up to ``put``.
    """

    __slots__ = ("closed", "failure", "node", "put", "remote")

    atype = _REMOTE_TYPE

    def __init__(self, remote: Remote, node: str) -> None:
        self.remote = remote
        self.node = node
        self.closed = False
        self.failure = None
        # put(env): encode and send ``env`` (``Remote.send`` for this node, bound here:
        # no call of its own per message). None once the frame is queued, or an
        # awaitable that completes when it is (the transport had to connect or wait
        # for room); the sender must await it. Raises WireError: the message cannot
        # be encoded (UNENCODABLE, TOO_LARGE).
        self.put: Callable[[Envelope], Awaitable[None] | None] = partial(remote.send, node)

    def __repr__(self) -> str:
        return f"<RemoteRoute {self.node}>"


# Future's own methods, called as functions: RemoteReply's overrides run per remote ask,
# and a super() call builds an object each time (Python 3.11).
_future_init = asyncio.Future.__init__
_future_done = asyncio.Future.done
_future_cancel = asyncio.Future.cancel
_future_set_result = asyncio.Future.set_result


class RemoteReply(asyncio.Future[Any]):
    """The reply future of an ask from another node (what ``env.reply`` is for it).

    Completing it sends the reply at once, in the worker's own step: no done callback,
    no extra loop pass, no timer. The asker's deadline is checked when the worker asks
    ``done()``: past it, the future reads as done (cancelled), so an expired ask is not
    run and its reply not sent (the asker has given up; a handler that finishes late
    is counted as a late reply, as in-process).
    """

    __slots__ = ("_deadline", "_message_id", "_node", "_remote", "_request")

    def __init__(
        self,
        remote: Remote,
        node: str,
        message_id: int,
        request: type[Any],
        deadline: float | None,
    ) -> None:
        _future_init(self, loop=remote.runtime.loop)
        self._remote = remote
        self._node = node
        self._message_id = message_id
        self._request = request
        self._deadline = deadline

    def done(self) -> bool:
        if _future_done(self):
            return True
        deadline = self._deadline
        if deadline is not None and self.get_loop().time() >= deadline:
            _future_cancel(self)
            return True
        return False

    def set_result(self, result: Any, /) -> None:
        _future_set_result(self, result)
        self._remote.send_reply(self._node, self._message_id, self._request, result)

    def set_exception(self, exception: type | BaseException, /) -> None:
        super().set_exception(exception)
        error = self.exception()  # retrieved here: it goes to the asker
        assert error is not None
        self._remote.send_error(self._node, self._message_id, error)


def takes(route: Any, env: Envelope, runtime: Runtime) -> bool:
    """Whether ``route`` (what ``Runtime.deliver`` chose for ``env``) takes the messages
    of ``env``'s type at once, as a warm send checks (the kernel runs, the route is open,
    has not failed and handles the type)."""
    return (
        route is not None
        and runtime.phase is RUNNING
        and not route.closed
        and route.failure is None
        and type(env.payload) in route.atype.handlers
    )
