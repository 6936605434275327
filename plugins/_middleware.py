"""The middleware chain: what a middleware is, and how it is attached.

A middleware wraps an agent type's handling (``handle``) and its agents' sends
(``send``). It is attached per kernel (``Kernel(middleware=[...])``, ``kernel.use(m)``)
or per agent type (``@middleware(m)`` on the class, or
``kernel.register(Cls, middleware=[m])``); the kernel's chain runs outside the type's,
each in the order given. It sees the message through ``kerna.MessageContext`` (read-only:
ids, kind, sender, target, message, headers, deadline), never the kernel's envelope.

Installed packages offer middleware through the ``kerna.plugins`` entry point group
(``available()`` lists their names without importing any); a kernel imports only the
ones it names (``Kernel(plugins=["name"])``, ``[node] plugins`` for ``kerna node``, which
``--no-plugins`` empties).

An empty chain costs nothing: the type's handler table then holds the plain handlers,
and a send checks one empty tuple (``kerna._chain``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from kerna import Agent, MessageContext
from kerna._chain import SendNext, check_middleware, plugin_names

__all__ = ["Middleware", "SendNext", "available", "middleware"]

A = TypeVar("A", bound=type[Agent])


class Middleware:
    """A base for middleware (optional: any object with the methods is one).

    Define either method or both; a method left undefined is not in the chain at all
    (the class attributes below are None), so a middleware that only watches sends
    costs handling nothing.

    ``async def handle(self, ctx, call_next) -> Any``: around a handler, in the
    agent's worker. ``ctx`` is the message handled; ``await call_next()`` runs the
    rest of the chain and the handler and returns its reply (None for a tell, an event,
    or a handler that deferred its reply); what ``handle`` returns is the reply, what
    it raises the handler's failure.

    ``async def send(self, ctx, call_next) -> Any``: around ``tell``, ``ask`` and
    ``publish`` (``ctx.kind == "event"``, ``ctx.target`` the topic), in the sender's task
    (``ctx.sender`` is None for a send from outside any agent).
    ``await call_next()`` makes one attempt and returns the ask's reply (None for a
    tell); ``call_next(timeout=s)`` bounds that attempt by ``s`` seconds (never past
    the message's own deadline, which the target sees narrowed); calling it again makes
    another attempt: the same message with a fresh message id, in the same
    conversation. ``call_next(headers={...})`` adds headers to that attempt (over the
    sender's, key by key; the receiver reads them in ``ctx.headers``, and its own sends
    inherit them). What ``send`` returns is the ask's result, what it raises the send's.

    A middleware that only acts before and after (a span, a timer, a header) may
    define plain methods instead, run inline with no coroutine of their own (cheaper:
    ``kerna.plugins.Tracing`` uses them); one direction takes either its coroutine hook
    or these:

    ``before_send(self, ctx) -> (state, headers)`` or ``(state, headers, timeout)``:
    before each attempt inside it (once per send when it is outside any retrying
    middleware); ``headers`` (a mapping of str to str, or None) are added as
    ``call_next(headers=)`` adds them, ``timeout`` (seconds, or None) bounds each
    attempt inside it as ``call_next(timeout=)`` does.
    ``after_send(self, ctx, state, result, error)``: after it, with its ``state``, the
    reply (None for a tell) or what was raised (``error``, a ``CancelledError`` too).
    ``async def send_failed(self, ctx, state, error, call_next) -> Any`` (optional,
    with the plain send hooks): awaited instead of ``after_send`` when an attempt
    inside it failed, or when its own ``before_send`` raised (``state`` None, no
    attempt made); it returns the send's result or raises its error, and
    ``call_next`` makes another attempt (a fresh message, as a ``send`` hook's): how a
    middleware retries or falls back with no coroutine of its own when nothing fails
    (``Resilience``). A cancellation still goes to ``after_send``.
    ``before_handle(self, ctx) -> state`` and ``after_handle(self, ctx, state, result,
    error)``: around the handling, in the agent's worker and its context (a contextvar
    set before is the handler's; the after hook runs in the same context, however the
    handler ends). After hooks cannot change the outcome. A hook that raises fails
    that message (the error gets a note naming the hook; hooks entered outside it still
    get their after hook with it), except that a cancellation goes on (the after hook's
    error is then logged).

    ``attach(self, kernel)``, if defined, is called once when the middleware joins a
    kernel's chain (``Kernel(middleware=)`` or ``use``); ``stopped(self, kernel)``, if
    defined, once when that kernel's ``stop()`` has ended (no handler runs any more:
    what a middleware buffers, it flushes there), for the kernel's chain and the types'
    own alike. In a kernel's chain a middleware may have only ``attach`` (it watches
    the kernel, as ``Metrics`` does, and adds nothing to handling or sends); a type's
    chain needs a hook.
    """

    handle: Callable[[MessageContext, Callable[[], Awaitable[Any]]], Awaitable[Any]] | None = None
    send: Callable[[MessageContext, SendNext], Awaitable[Any]] | None = None
    before_send: (
        Callable[
            [MessageContext],
            tuple[Any, Mapping[str, str] | None]
            | tuple[Any, Mapping[str, str] | None, float | None],
        ]
        | None
    ) = None
    after_send: Callable[[MessageContext, Any, Any, BaseException | None], None] | None = None
    send_failed: Callable[[MessageContext, Any, Exception, SendNext], Awaitable[Any]] | None = None
    before_handle: Callable[[MessageContext], Any] | None = None
    after_handle: Callable[[MessageContext, Any, Any, BaseException | None], None] | None = None


def middleware(*chain: object) -> Callable[[A], A]:
    """Class decorator: the agent type's own middleware chain (inside the kernel's;
    ``register(..., middleware=)`` adds more after it)::

        @middleware(Audit())
        class Orders(Agent): ...

    Raises:
        TypeError: an argument is not a middleware.
    """
    checked = check_middleware(chain, "@middleware")

    def attach(cls: A) -> A:
        if not (isinstance(cls, type) and issubclass(cls, Agent)):
            raise TypeError(f"@middleware decorates Agent classes, not {cls!r}")
        own = (*getattr(cls, "__kerna_middleware__", ()), *checked)
        type.__setattr__(cls, "__kerna_middleware__", own)  # read by Kernel.register
        return cls

    return attach


def available() -> list[str]:
    """The names of the installed plug-ins (``kerna.plugins`` entry points), sorted;
    none is imported."""
    return plugin_names()
