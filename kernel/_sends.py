"""Sends through the middleware chain's ``send`` links (the chain itself: ``kerna._chain``).

A send's links are the bound ``send`` coroutine methods and ``SyncHooks`` (a
middleware's plain ``before_send``/``after_send``, and its ``send_failed`` coroutine if
it has one), outermost first. An attempt is one message: the first is the envelope the
sender built (its deadline narrowed, headers added, by the links it passes), every later
one a fresh message (a new id and reply future, the same conversation).

- An ask whose links are all synchronous (``SyncHooks.rest_sync``) goes through
  ``ask_sync``: every ``before_send`` inline, one attempt, every ``after_send`` inline,
  in one coroutine (none of the chain's own per link, no closure per attempt). A
  failure goes outward link by link (``unwind``); a link with ``send_failed`` gets it
  instead of its ``after_send`` and may make further attempts through the links inside
  it (``_retry``: built only then).
- Any other chain: each coroutine link is a layer of plain functions around the next
  (``_layer``), each synchronous one a coroutine of its own (``_sync_layer``) except the
  innermost, which runs in the attempt's (``ask_through``, ``tell_through``,
  ``publish_through``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import msgspec

from ._chain import (
    _SHAPE,
    Attempt,
    Headers,
    OutboundHook,
    OutboundLink,
    SendNext,
    SyncHooks,
    merge_headers,
)
from ._context import MessageContext
from ._errors import AskTimeout

if TYPE_CHECKING:
    from ._envelope import Envelope
    from ._ids import AgentId
    from ._ref import AgentRef
    from ._runtime import Runtime

__all__ = [
    "NOT_ENTERED",
    "ask_sync",
    "ask_through",
    "attempt_envelope",
    "enter_sends",
    "exit_sends",
    "expire",
    "publish_through",
    "tell_through",
    "unwind",
    "wait_for_room",
    "with_headers",
]


def expire(reply: asyncio.Future[Any], target: AgentId, message: Any, timeout: float) -> None:
    if not reply.done():
        reply.set_exception(
            AskTimeout(
                f"no reply from {target} to {type(message).__qualname__} in {timeout:.3g}s",
                target=target,
                timeout=timeout,
            )
        )


async def wait_for_room(waiter: Any, reply: asyncio.Future[Any]) -> None:
    """Wait for a mailbox slot, but give up when the ask's own deadline fires first."""
    if reply.done():
        waiter.cancel()
        return
    try:
        done, _ = await asyncio.wait((waiter, reply), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        waiter.cancel()  # a cancelled asker's parked message is skipped
        raise
    if waiter not in done:
        waiter.cancel()  # the parked message is skipped; the reply carries the timeout
        return
    error = waiter.exception()
    if error is not None:
        raise error


def _narrow(limit: float | None, timeout: float | None, loop: asyncio.AbstractEventLoop) -> Any:
    """``limit`` narrowed to ``timeout`` seconds from now (None: not narrowed)."""
    if timeout is not None:
        at = loop.time() + timeout
        if limit is None or at < limit:
            return at
    return limit


def _layer(
    hook: OutboundHook, ctx: MessageContext, inner: Attempt, loop: asyncio.AbstractEventLoop
) -> Attempt:
    # Plain functions, not coroutines: a layer adds the hook's own coroutine and nothing
    # else to a send (the hook awaits what call_next returns: the inner layer's hook).
    def invoke(deadline: float | None, outer: Headers) -> Awaitable[Any]:
        def call_next(timeout: float | None = None, headers: Headers = None) -> Awaitable[Any]:
            limit = deadline  # (as _next's, inline: the hot path)
            if timeout is not None:
                at = loop.time() + timeout
                if limit is None or at < limit:
                    limit = at
            if headers is not None:  # an inner hook's keys win over an outer one's
                headers = merge_headers(outer, headers)
            return inner(limit, outer if headers is None else headers)

        return hook(ctx, call_next)

    return invoke


def _next(
    inner: Attempt, deadline: float | None, outer: Headers, loop: asyncio.AbstractEventLoop
) -> SendNext:
    """``call_next`` of a link whose attempts go to ``inner``: bounded by ``deadline``,
    with ``outer`` (the headers of the links outside, and the link's own)."""

    def call_next(timeout: float | None = None, headers: Headers = None) -> Awaitable[Any]:
        if headers is not None:  # an inner hook's keys win over an outer one's
            headers = merge_headers(outer, headers)
        return inner(_narrow(deadline, timeout, loop), outer if headers is None else headers)

    return call_next


def _sync_layer(
    hook: SyncHooks, ctx: MessageContext, inner: Attempt, loop: asyncio.AbstractEventLoop
) -> Attempt:
    # One coroutine around every attempt inside it, the hooks called inline (the
    # helpers only on the error paths: a call less per hook on the hot path).
    before, after, failed = hook.before, hook.after, hook.failed

    async def invoke(deadline: float | None, outer: Headers) -> Any:
        try:  # (as hook.enter_send, inline)
            got = before(ctx)
            if type(got) is not tuple or not 2 <= len(got) <= 3:
                raise TypeError(_SHAPE.format(got))
            state, headers = got[0], got[1]
            if headers is not None:  # an inner hook's keys win over an outer one's
                outer = merge_headers(outer, headers)
            limit = deadline if len(got) == 2 else _narrow(deadline, got[2], loop)
        except Exception as exc:
            if failed is None:
                hook.entered(exc)
                raise
            return await failed(ctx, None, exc, _next(inner, deadline, outer, loop))
        try:
            result = await inner(limit, outer)
        except BaseException as exc:
            if failed is not None and isinstance(exc, Exception):
                return await failed(ctx, state, exc, _next(inner, deadline, outer, loop))
            hook.exit_failed(ctx, state, exc)
            raise
        try:
            after(ctx, state, result, None)
        except Exception as exc:
            hook.entered(exc, 1)
            raise
        return result

    return invoke


def _around(
    links: Sequence[OutboundLink],
    ctx: MessageContext,
    attempt: Attempt,
    loop: asyncio.AbstractEventLoop,
) -> Attempt:
    """``attempt`` inside ``links`` (outermost first)."""
    call = attempt
    for hook in reversed(links):
        if isinstance(hook, SyncHooks):
            call = _sync_layer(hook, ctx, call, loop)
        else:
            call = _layer(hook, ctx, call, loop)
    return call


# -- an ask through synchronous links only ---------------------------------------------

NOT_ENTERED = (None, None)  # a link whose before_send raised, for its send_failed


def enter_sends(
    links: Sequence[SyncHooks],
    ctx: MessageContext,
    headers: Headers,
    limit: float,
    now: float,
    entered: list[Any],
) -> tuple[Headers, float]:
    """The ``before_send`` of each of ``links``, outermost first: the headers they add
    (over ``headers``) and the attempt's deadline (``limit`` narrowed by their
    timeouts, counted from ``now``: the send's ``loop.time()``). ``entered`` gets, per
    link entered, what its hook returned and the deadline outside it.

    Raises:
        Exception: what a hook raised (or the ``TypeError`` of a wrong answer); the
            links to unwind are then ``links[: len(entered) // 2]`` (``unwind``): it
            included, when it has ``send_failed``.
    """
    for link in links:
        try:
            got = link.before(ctx)
            if type(got) is not tuple or not 2 <= (n := len(got)) <= 3:
                raise TypeError(_SHAPE.format(got))
            added = got[1]
            if added is None:
                pass
            elif headers is None and link.fresh:  # its own new dict of str (SyncHooks)
                headers = added
            elif headers is None and type(added) is dict:  # (merge_headers, inline)
                for name, value in added.items():
                    if type(name) is not str or type(value) is not str:
                        headers = merge_headers(None, added)  # (checked there)
                        break
                else:
                    headers = dict(added)
            else:  # an inner hook's keys win over an outer one's
                headers = merge_headers(headers, added)
        except Exception as exc:
            if link.failed is None:  # the links outside it hear the error
                link.entered(exc)
            else:  # its send_failed gets it (no attempt made inside it)
                entered += (NOT_ENTERED, limit)
            raise
        entered += (got, limit)
        if n == 3 and got[2] is not None:
            at = now + got[2]
            if at < limit:
                limit = at
    return headers, limit


def exit_sends(
    links: Sequence[SyncHooks], ctx: MessageContext, entered: list[Any], result: Any
) -> None:
    """The ``after_send`` of each of ``links``, innermost first, with ``result``.

    Raises:
        Exception: what an after hook raised (a note on it names the hook); ``entered``
            is then cut to the links outside it, which are to unwind (``unwind``).
    """
    i = len(links)
    while i:
        i -= 1
        link = links[i]
        try:
            link.after(ctx, entered[2 * i][0], result, None)
        except Exception as exc:
            link.entered(exc, 1)
            del entered[2 * i :]
            raise


async def ask_sync(
    links: Sequence[SyncHooks],
    rt: Runtime,
    ref: AgentRef,
    env: Envelope,
    ctx: MessageContext | None = None,
    headers: Headers = None,
    deadline: float | None = None,
    fresh: bool = False,
) -> Any:
    """``env``, an ask, through ``links``, all synchronous, in this one coroutine
    (``AgentRef.ask`` makes the first attempt of a root chain of them itself, the same
    way).

    ``headers``: what links outside ``links`` added; ``deadline``: the attempt's bound
    (None: the envelope's); ``fresh``: the attempt is a fresh message (a retry of a
    link outside).
    """
    loop = rt.loop
    if ctx is None:
        ctx = MessageContext(env, loop)
    base = headers
    limit = env.deadline if deadline is None else deadline
    assert limit is not None  # an ask always has one
    entered: list[Any] = []
    try:
        headers, limit = enter_sends(links, ctx, headers, limit, loop.time(), entered)
    except Exception as exc:
        return await unwind(links, ctx, entered, exc, len(entered) // 2, rt, ref, env, base)
    try:
        if fresh:  # another attempt: a fresh message (id, reply) of the same conversation
            one = msgspec.structs.replace(
                env, id=next(rt.ids), deadline=limit, reply=loop.create_future()
            )
            if headers is not None:
                one = with_headers(one, headers)
        else:
            one = attempt_envelope(env, headers, limit)
        reply = one.reply
        assert reply is not None
        waiter = rt.deliver(one, ref)
        timer = loop.call_at(
            limit, expire, reply, ref.id, one.payload, max(0.0, limit - loop.time())
        )
        try:
            if waiter is not None:
                await wait_for_room(waiter, reply)
            result = await reply
        finally:
            timer.cancel()
    except BaseException as exc:
        return await unwind(links, ctx, entered, exc, len(links), rt, ref, env, base)
    try:
        exit_sends(links, ctx, entered, result)
    except Exception as exc:
        return await unwind(links, ctx, entered, exc, len(entered) // 2, rt, ref, env, base)
    return result


def attempt_envelope(env: Envelope, headers: Headers, deadline: float) -> Envelope:
    """The first attempt of ``env``: with ``headers`` added and ``deadline`` (one copy
    for both changes; ``env`` itself when neither changes it)."""
    if headers is not None:
        own = env.headers
        return msgspec.structs.replace(
            env, deadline=deadline, headers={**own, **headers} if own else headers
        )
    if deadline == env.deadline:
        return env
    return msgspec.structs.replace(env, deadline=deadline)


async def unwind(
    links: Sequence[SyncHooks],
    ctx: MessageContext,
    entered: list[Any],
    error: BaseException | None,
    start: int,
    rt: Runtime,
    ref: AgentRef,
    env: Envelope,
    base: Headers,
) -> Any:
    """``error`` goes out through ``links[:start]``, innermost first: a link with
    ``send_failed`` gets an ``Exception`` there (what it returns goes on out as the
    result, the after hooks of the links outside hear it), any other its after hook."""
    result = None
    j = start
    while j:
        j -= 1
        link = links[j]
        state = entered[2 * j][0]
        if error is None:
            try:
                link.after(ctx, state, result, None)
            except Exception as exc:
                link.entered(exc, 1)
                error = exc
            continue
        failed = link.failed
        if failed is not None and isinstance(error, Exception):
            try:
                result = await failed(
                    ctx, state, error, _retry(links, j, ctx, entered, rt, ref, env, base)
                )
                error = None
            except BaseException as exc:  # (a cancellation goes on out too)
                error = exc
            continue
        try:
            link.exit_failed(ctx, state, error)
        except Exception as exc:
            error = exc
    if error is not None:
        raise error
    return result


def _retry(
    links: Sequence[SyncHooks],
    j: int,
    ctx: MessageContext,
    entered: list[Any],
    rt: Runtime,
    ref: AgentRef,
    env: Envelope,
    base: Headers,
) -> SendNext:
    """``call_next`` of ``links[j]``'s ``send_failed``: another attempt, a fresh message,
    through the links inside it, with the headers of the links up to it."""
    loop = rt.loop
    outer = base
    for i in range(j + 1):
        added = entered[2 * i][1]
        if added is not None:
            outer = merge_headers(outer, added)
    deadline = entered[2 * j + 1]

    def call_next(timeout: float | None = None, headers: Headers = None) -> Awaitable[Any]:
        merged = outer if headers is None else merge_headers(outer, headers)
        limit = _narrow(deadline, timeout, loop)
        return ask_through(links[j + 1 :], rt, ref, env, ctx, merged, limit, True)

    return call_next


# -- any chain -------------------------------------------------------------------------


def ask_through(
    outbound: Sequence[OutboundLink],
    rt: Runtime,
    ref: AgentRef,
    env: Envelope,
    ctx: MessageContext | None = None,
    headers: Headers = None,
    deadline: float | None = None,
    fresh: bool = False,
) -> Awaitable[Any]:
    """``env``, an ask, through the ``send`` hooks; its first attempt is ``env``
    (with ``headers``: what the links outside ``outbound`` added; ``ctx``: their view
    of it, shared; ``deadline``: that attempt's bound, None: the envelope's; ``fresh``:
    it is a fresh message, a retry of a link outside)."""
    if not outbound or (isinstance(outbound[0], SyncHooks) and outbound[0].rest_sync):
        links = cast("Sequence[SyncHooks]", outbound)  # (rest_sync: every one is)
        return ask_sync(links, rt, ref, env, ctx, headers, deadline, fresh)
    loop = rt.loop
    if ctx is None:
        ctx = MessageContext(env, loop)
    sent = fresh
    # The innermost link, when synchronous, runs in the attempt (no coroutine of its own).
    last = outbound[-1]
    inline = last if isinstance(last, SyncHooks) and last.failed is None else None

    async def attempt(deadline: float | None, headers: Headers) -> Any:
        nonlocal sent
        assert deadline is not None  # an ask always has one
        state = None
        if inline is not None:
            try:  # (as inline.enter_send, inline: the hot path)
                got = inline.before(ctx)
                if type(got) is not tuple or not 2 <= len(got) <= 3:
                    raise TypeError(_SHAPE.format(got))
                state, extra = got[0], got[1]
                if extra is not None:  # an inner hook's keys win over an outer one's
                    headers = merge_headers(headers, extra)
                if len(got) == 3:
                    deadline = _narrow(deadline, got[2], loop)
            except Exception as exc:
                inline.entered(exc)
                raise
        try:
            if sent:  # another attempt: a fresh message (id, reply) of the same conversation
                one = msgspec.structs.replace(
                    env, id=next(rt.ids), deadline=deadline, reply=loop.create_future()
                )
            else:
                sent = True
                if headers is not None:  # one copy of the envelope for both changes
                    own = env.headers
                    one = msgspec.structs.replace(
                        env, deadline=deadline, headers={**own, **headers} if own else headers
                    )
                    headers = None
                elif deadline == env.deadline:
                    one = env
                else:
                    one = msgspec.structs.replace(env, deadline=deadline)
            if headers is not None:
                one = with_headers(one, headers)
            reply = one.reply
            assert reply is not None
            waiter = rt.deliver(one, ref)
            timeout = max(0.0, deadline - loop.time())
            timer = loop.call_at(deadline, expire, reply, ref.id, one.payload, timeout)
            try:
                if waiter is not None:
                    await wait_for_room(waiter, reply)
                result = await reply
            finally:
                timer.cancel()
        except BaseException as exc:
            if inline is not None:
                inline.exit_failed(ctx, state, exc)
            raise
        if inline is not None:
            try:
                inline.after(ctx, state, result, None)
            except Exception as exc:
                inline.entered(exc, 1)
                raise
        return result

    call = _around(outbound if inline is None else outbound[:-1], ctx, attempt, loop)
    # The outermost hook's coroutine: no frame of its own.
    return call(env.deadline if deadline is None else deadline, headers)


def tell_through(
    outbound: tuple[OutboundLink, ...], rt: Runtime, ref: AgentRef, env: Envelope
) -> Awaitable[None]:
    """``env``, a tell, through the ``send`` hooks (an attempt returns None once the
    message is in the mailbox; ``timeout`` does not apply: a tell has no deadline)."""
    return _one_way_through(outbound, rt, env, lambda one: rt.deliver(one, ref))


def publish_through(
    outbound: tuple[OutboundLink, ...], rt: Runtime, env: Envelope
) -> Awaitable[None]:
    """``env``, an event, through the ``send`` hooks (as a tell: an attempt returns None
    once every subscriber has it; another attempt publishes it again, a fresh id)."""
    return _one_way_through(outbound, rt, env, rt.deliver)


def _one_way_through(
    outbound: tuple[OutboundLink, ...],
    rt: Runtime,
    env: Envelope,
    deliver: Callable[[Envelope], Awaitable[None] | None],
) -> Awaitable[None]:
    """A tell or an event through the ``send`` hooks: each attempt ``deliver``s it (a
    retry with a fresh id) and waits for room when ``deliver`` says so."""
    ctx = MessageContext(env, rt.loop)
    sent = False
    last = outbound[-1]
    inline = last if isinstance(last, SyncHooks) and last.failed is None else None

    async def attempt(deadline: float | None, headers: Headers) -> None:
        nonlocal sent
        state = None
        if inline is not None:
            state, headers, _ = inline.enter_send(ctx, headers)  # (no deadline)
        try:
            one = msgspec.structs.replace(env, id=next(rt.ids)) if sent else env
            sent = True
            if headers is not None:
                one = with_headers(one, headers)
            waiter = deliver(one)
            if waiter is not None:
                await waiter
        except BaseException as exc:
            if inline is not None:
                inline.exit_failed(ctx, state, exc)
            raise
        if inline is not None:
            inline.exit(ctx, state, None)

    links = outbound if inline is None else outbound[:-1]
    awaited: Awaitable[None] = _around(links, ctx, attempt, rt.loop)(None, None)
    return awaited


def with_headers(env: Envelope, headers: Mapping[str, str]) -> Envelope:
    """``env`` with ``headers`` added (key by key over its own)."""
    own = env.headers
    return msgspec.structs.replace(env, headers={**own, **headers} if own else dict(headers))
