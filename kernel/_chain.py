"""The middleware chain's mechanism: handlers composed at registration, sends passed
through the chain (what a middleware is, and the ones kerna ships: ``kerna.plugins``).

A middleware is any object with one or both of these coroutine methods::

    async def handle(self, ctx: MessageContext, call_next: Callable[[], Awaitable[Any]]) -> Any
    async def send(self, ctx: MessageContext, call_next: SendNext) -> Any

``handle`` runs around a handler, in the agent's worker (``ctx`` is the message handled,
``call_next()`` runs the rest of the chain and then the handler, and what it returns is
the reply). ``send`` runs around a ``tell`` or an ``ask``, in the sender's task
(``ctx`` is the message sent; ``call_next(timeout=None)`` makes one attempt and returns
the reply of an ask, None for a tell; a later call makes another attempt: the same
message with a fresh message id, the same correlation id). ``timeout`` narrows that
attempt's deadline (never past the message's own); the target sees the narrower one.
``headers`` adds to the attempt's headers, key by key (an inner hook's keys over an
outer one's, both over the sender's). A ``publish`` passes through the same hooks
(``ctx.kind == "event"``, ``ctx.target`` the topic; an attempt returns None once every
subscriber has it).

A middleware that only acts before and after (it never awaits, never retries, never
replaces the result) may define plain methods instead, called inline around the inner
part of the chain, with no coroutine of their own::

    def before_send(self, ctx) -> tuple[state, Mapping[str, str] | None]
    def after_send(self, ctx, state, result, error: BaseException | None) -> None
    def before_handle(self, ctx) -> state
    def after_handle(self, ctx, state, result, error: BaseException | None) -> None

``before_send`` returns its state and the headers to add (None: none), as
``call_next(headers=)`` adds them, and optionally a third element, a timeout in
seconds (None: none) that bounds each attempt inside it as ``call_next(timeout=)``
does; ``after_*`` gets that state and the outcome: the result (error None), or what
was raised (a cancellation too: ``CancelledError``). A before hook that raises fails
that message (the hooks outside it still get their ``after_*``, with that error); an
after hook that raises fails it too, except a cancellation, which goes on (that error
is logged). Either error carries a note naming the hook. Such a middleware sits in the
chain where it is listed, as a coroutine hook would, around every attempt inside it:
``kerna.plugins.Tracing`` is one. The headers ``before_send`` returns are checked (str
to str) and copied, unless the middleware has an attribute ``fresh_headers = True``:
it promises a new ``dict`` of ``str`` to ``str`` each time, never changed after it is
returned, and the chain then takes it as it is (``Tracing`` with the SDK's provider).

A send middleware that handles failures without a coroutine per message (it retries
or replaces the result only when something failed) adds to the plain send pair::

    async def send_failed(self, ctx, state, error: Exception, call_next: SendNext) -> Any

It is awaited instead of ``after_send`` when an attempt inside it failed (``state``:
its ``before_send``'s), or when its own ``before_send`` raised (``state`` None; no
attempt was made); what it returns is the send's result, what it raises the send's
error, and ``call_next`` (as a ``send`` hook's) makes another attempt through the
links inside it, a fresh message with its headers. A cancellation still goes to
``after_send``. ``kerna.plugins.Resilience`` is one: a call whose first attempt
succeeds costs no coroutine or closure of its own.

Where the synchronous links run (``kerna._sends``): an ask whose links are all
synchronous runs every hook inline in ``AgentRef.ask``'s own coroutine (its retries in
one coroutine each, ``ask_sync``); among coroutine hooks, the outermost runs in the
ask's coroutine, the innermost in the attempt's, any other in a coroutine of its own.
A type whose only handle link is synchronous has its hooks called by the worker itself
around the plain handler (``AgentType.around``; ``Activation._call``, for deadline
scopes and re-runs, takes the composed table instead).

The cost of an empty chain is nothing: an agent type's handler table holds the plain
handlers then (the composed ones otherwise, built once here), and a send checks one
tuple attribute (``Runtime.outbound``, or the sending type's ``AgentType.outbound``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol

from ._context import MessageContext
from ._errors import ConfigError

if TYPE_CHECKING:
    from ._registry import HandlerFn

__all__ = [
    "SYNC_HOOKS",
    "InboundHook",
    "OutboundHook",
    "SendNext",
    "SyncHooks",
    "check_middleware",
    "compose",
    "hooks",
    "load_plugins",
    "merge_headers",
    "plugin_names",
]


class SendNext(Protocol):
    """``call_next`` of a ``send`` hook: one attempt of the send, bounded by ``timeout``
    seconds (never past the message's deadline), with ``headers`` added to the message's.

    Raises:
        TypeError: ``headers`` is not a mapping of str to str.
    """

    def __call__(
        self, timeout: float | None = None, headers: Mapping[str, str] | None = None
    ) -> Awaitable[Any]: ...


InboundHook = Callable[[MessageContext, Callable[[], Awaitable[Any]]], Awaitable[Any]]
OutboundHook = Callable[[MessageContext, SendNext], Awaitable[Any]]
Headers = Mapping[str, str] | None
Attempt = Callable[[float | None, Headers], Awaitable[Any]]
FailedHook = Callable[[MessageContext, Any, Exception, SendNext], Awaitable[Any]]

_SHAPE = (
    "it must return (state, headers or None) or (state, headers or None, timeout or None), not {!r}"
)


log = logging.getLogger("kerna.chain")

# The synchronous hooks, by the coroutine hook they stand for.
SYNC_HOOKS = {"send": ("before_send", "after_send"), "handle": ("before_handle", "after_handle")}


def check_middleware(
    chain: Sequence[object], where: str, kernel: bool = False
) -> tuple[object, ...]:
    """``chain`` as a tuple, each element checked to be a middleware.

    In a kernel's chain (``kernel``), one with only an ``attach`` method is one too: it
    watches the kernel (``kerna.plugins.Metrics``) and adds nothing to the chain.

    Raises:
        TypeError: ``chain`` is not a sequence, or an element has neither a ``handle``
            nor a ``send`` coroutine method nor a synchronous hook (nor, in a kernel's
            chain, ``attach``); a synchronous hook is a coroutine function; or one
            direction has both its coroutine hook and a synchronous one.
    """
    if isinstance(chain, str | bytes) or not isinstance(chain, Sequence | tuple | list):
        raise TypeError(f"{where}: middleware must be a list of middleware objects, got {chain!r}")
    for m in chain:
        found = [getattr(m, name, None) for name in ("handle", "send")]
        plain = [getattr(m, name, None) for pair in SYNC_HOOKS.values() for name in pair]
        hooked = any(found) or any(plain) or (kernel and callable(getattr(m, "attach", None)))
        if not hooked or not all(f is None or asyncio.iscoroutinefunction(f) for f in found):
            raise TypeError(
                f"{where}: {m!r} is not a middleware: it needs an 'async def handle(ctx, "
                "call_next)' and/or an 'async def send(ctx, call_next)' method, or the "
                "plain before_send/after_send, before_handle/after_handle hooks"
                + (" (or an 'attach(kernel)' method)" if kernel else "")
            )
        failed = getattr(m, "send_failed", None)
        if failed is not None and (
            not asyncio.iscoroutinefunction(failed)
            or getattr(m, "send", None) is not None
            or all(getattr(m, name, None) is None for name in SYNC_HOOKS["send"])
        ):
            raise TypeError(
                f"{where}: {m!r}: send_failed must be an 'async def' next to the plain "
                "before_send/after_send hooks (not with 'send')"
            )
        for direction, pair in SYNC_HOOKS.items():
            for name in pair:
                fn = getattr(m, name, None)
                if fn is None:
                    continue
                if not callable(fn) or asyncio.iscoroutinefunction(fn):
                    raise TypeError(
                        f"{where}: {m!r}: {name} must be a plain (not async) method: it "
                        f"runs inline (use 'async def {direction}' to await)"
                    )
                if getattr(m, direction, None) is not None:
                    raise TypeError(
                        f"{where}: {m!r} has both {direction!r} and {name!r}: one "
                        "middleware wraps a direction once (split it in two)"
                    )
    return tuple(chain)


class SyncHooks:
    """A middleware's synchronous pair for one direction, as a link of the chain.

    Attributes:
        failed: its ``send_failed`` coroutine method (None: it has none).
        fresh: its ``before_send`` returns a new dict of str to str each time (the
            owner's ``fresh_headers``): the chain takes it as it is.
        rest_sync: this link and every link inside it (after it in the chain) are
            synchronous: an ask through them makes no coroutine of the chain's
            (``ask_sync``).
    """

    __slots__ = ("after", "before", "failed", "fresh", "names", "owner", "rest_sync")

    def __init__(self, owner: object, direction: str) -> None:
        before_name, after_name = SYNC_HOOKS[direction]
        self.owner = owner
        self.names = (f"{owner!r}.{before_name}", f"{owner!r}.{after_name}")
        before = getattr(owner, before_name, None)
        after = getattr(owner, after_name, None)
        if before is None:
            before = _no_headers if direction == "send" else _nothing
        self.before: Callable[[MessageContext], Any] = before
        self.after: Callable[[MessageContext, Any, Any, BaseException | None], Any] = (
            after or _nothing
        )
        self.failed: FailedHook | None = (
            getattr(owner, "send_failed", None) if direction == "send" else None
        )
        # before_send's headers are a new dict of str each time (the owner says so):
        # taken as they are, not checked and copied.
        self.fresh = direction == "send" and getattr(owner, "fresh_headers", False) is True
        self.rest_sync = False

    def __repr__(self) -> str:
        return f"<SyncHooks of {self.owner!r}>"

    def entered(self, error: BaseException, which: int = 0) -> None:
        """``error`` came from the before (0) or after (1) hook: say so on it."""
        error.add_note(f"raised in {self.names[which]}")

    def enter_send(self, ctx: MessageContext, outer: Headers) -> tuple[Any, Headers, float | None]:
        """``before_send``: its state, ``outer`` with its headers added, and the
        timeout it sets on the attempts inside it (None: none).

        Raises:
            TypeError: it returned something else than ``(state, headers or None)``
                or ``(state, headers or None, timeout or None)``.
        """
        try:
            got = self.before(ctx)
            if type(got) is not tuple or not 2 <= len(got) <= 3:
                raise TypeError(_SHAPE.format(got))
            state, headers = got[0], got[1]
            if headers is not None:  # an inner hook's keys win over an outer one's
                outer = merge_headers(outer, headers)
        except Exception as exc:
            self.entered(exc)
            raise
        return state, outer, got[2] if len(got) == 3 else None

    def exit(self, ctx: MessageContext, state: Any, result: Any) -> None:
        """The inner part returned ``result``: the after hook hears it."""
        try:
            self.after(ctx, state, result, None)
        except Exception as exc:
            self.entered(exc, 1)
            raise

    def exit_failed(self, ctx: MessageContext, state: Any, error: BaseException) -> None:
        """The inner part raised ``error``: the after hook hears it. Its own error
        replaces ``error`` (raised here), unless ``error`` is a cancellation."""
        try:
            self.after(ctx, state, None, error)
        except Exception as own:
            if not isinstance(error, Exception):  # never swallow a cancellation
                log.error("%s raised while %r went on", self.names[1], error, exc_info=own)
                return
            self.entered(own, 1)
            raise


def merge_headers(outer: Headers, headers: object) -> dict[str, str]:
    """``headers`` over ``outer``, key by key, checked to map str to str (a copy).

    Raises:
        TypeError: ``headers`` is not a mapping of str to str.
    """
    if type(headers) is dict:  # the usual case: checked without the general check's copy
        for name, value in headers.items():
            if type(name) is not str or type(value) is not str:
                break
        else:
            return {**outer, **headers} if outer else dict(headers)
    from ._options import check_headers  # _options imports _registry, this

    checked = check_headers(headers)
    return {**outer, **checked} if outer else checked


InboundLink = InboundHook | SyncHooks
OutboundLink = OutboundHook | SyncHooks


def _nothing(*args: object) -> None:
    return None


def _no_headers(ctx: MessageContext) -> tuple[None, None]:
    return None, None


def hooks(chain: Sequence[object], name: str) -> tuple[Any, ...]:
    """The chain's links for ``name`` ("handle" or "send"), in order: the bound
    coroutine methods, and ``SyncHooks`` for middleware with synchronous ones."""
    found: list[Any] = []
    before, after = SYNC_HOOKS[name]
    for m in chain:
        hook = getattr(m, name, None)
        if hook is not None:
            found.append(hook)
        elif getattr(m, before, None) is not None or getattr(m, after, None) is not None:
            found.append(SyncHooks(m, name))
    inner_sync = True  # whether every link after this one is synchronous
    for link in reversed(found):
        if isinstance(link, SyncHooks):
            link.rest_sync = inner_sync
        else:
            inner_sync = False
    return tuple(found)


def compose(
    table: dict[type, HandlerFn], inbound: tuple[InboundLink, ...]
) -> dict[type, HandlerFn]:
    """The handler table with the chain around each handler (the plain table's copy
    when the chain is empty: nothing runs between the worker and the handler)."""
    if not inbound:
        return dict(table)
    composed: dict[type, HandlerFn] = {}
    for message_type, fn in table.items():
        for hook in reversed(inbound):
            fn = _wrap_sync(hook, fn) if isinstance(hook, SyncHooks) else _wrap(hook, fn)
        composed[message_type] = fn
    return composed


def _wrap(hook: InboundHook, inner: HandlerFn) -> HandlerFn:
    # A plain function, not a coroutine: a layer adds only the hook's own coroutine.
    def through(agent: Any, message: Any) -> Awaitable[Any]:
        return hook(agent.context, lambda: inner(agent, message))

    return through


def _wrap_sync(hook: SyncHooks, inner: HandlerFn) -> HandlerFn:
    # One coroutine: the before and after hooks run inline in it, in the handler's
    # task and context (a contextvar the before hook sets is the handler's and is
    # reset by the after hook in the same context, whatever the handler did).
    before, after = hook.before, hook.after

    async def through(agent: Any, message: Any) -> Any:
        ctx = agent.context
        try:
            state = before(ctx)
        except Exception as exc:
            hook.entered(exc)
            raise
        try:
            result = await inner(agent, message)
        except BaseException as exc:
            hook.exit_failed(ctx, state, exc)
            raise
        try:
            after(ctx, state, result, None)
        except Exception as exc:
            hook.entered(exc, 1)
            raise
        return result

    return through


# -- plug-ins through entry points -----------------------------------------------------

PLUGIN_GROUP = "kerna.plugins"


def plugin_names() -> list[str]:
    """The names in the ``kerna.plugins`` entry point group, sorted (nothing imported)."""
    return sorted({ep.name for ep in entry_points(group=PLUGIN_GROUP)})


def load_plugins(allow: Sequence[str], where: str = "plugins") -> tuple[object, ...]:
    """Import the ``kerna.plugins`` entry points named in ``allow``, and only those.

    An entry point names a middleware object, or a class or function that builds one
    when called with no arguments.

    Raises:
        ConfigError: a name has no entry point, or its import or factory failed.
        TypeError: ``allow`` is not a list of names, or what an entry point gives is
            not a middleware.
    """
    if isinstance(allow, str) or not all(isinstance(n, str) for n in allow):
        raise TypeError(f"{where} must be a list of plug-in names, got {allow!r}")
    points = {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}
    loaded: list[object] = []
    for name in allow:
        point = points.get(name)
        if point is None:
            raise ConfigError(
                f"{where}: no plug-in {name!r} is installed (entry point group "
                f"{PLUGIN_GROUP!r} has: {', '.join(sorted(points)) or 'none'})"
            )
        try:
            found = point.load()
            made = found() if callable(found) and not _is_middleware(found) else found
        except Exception as exc:
            raise ConfigError(f"{where}: plug-in {name!r} ({point.value}) failed: {exc}") from exc
        loaded.append(made)
    return check_middleware(loaded, f"{where} (entry points)", kernel=True)


def _is_middleware(obj: object) -> bool:
    names = ("handle", "send", *(name for pair in SYNC_HOOKS.values() for name in pair))
    return not isinstance(obj, type) and any(hasattr(obj, name) for name in names)
