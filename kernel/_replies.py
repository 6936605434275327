"""Typed replies: a handler's return annotation checked against its requests' reply types.

A ``Request[Reply]`` promises its asker a ``Reply`` (``AgentRef.ask`` is typed so). Type
checkers cannot see which handler answers which request (dispatch is by the message
parameter's annotation, at run time), so registration does that part of their job, once,
on annotations: the handler of a ``Request[Pong]`` must be annotated ``-> Pong`` (or a
subclass). The rules, and the choices where Python's typing leaves room, are in
``check_reply``.
"""

from __future__ import annotations

import sys
import types
import typing
from typing import Any, Union

from ._deferred import PendingReply
from ._errors import RegistrationError
from ._message import Message, declared_reply, type_name

__all__ = ["check_reply", "resolved_reply"]

_DEFERRED_HINT = "; a handler that defers its reply is annotated '-> PendingReply' and returns it"


def check_reply(where: str, handled: tuple[type[Message], ...], returns: Any) -> None:
    """Check a handler's return annotation against the replies its requests declare.

    The rules are what a type checker would enforce if it could see the dispatch:

    - Each request the handler takes must find its reply among the annotation's
      alternatives (the reply or a subclass of it): ``-> str`` for a ``Request[Pong]``
      is refused, and so is ``-> None`` (a handler that forgot to return).
    - Each alternative must be the reply of one of its requests: ``-> Pong | None`` for
      a ``Request[Pong]`` is refused, as its asker is promised a ``Pong``; declare
      ``Request[Pong | None]`` when "no reply" is a valid answer. A handler of a union
      (``msg: Ping | Lookup``) is annotated with the union of their replies
      (``-> Pong | Found``); which goes with which is up to the handler.
    - A handler that also takes plain messages may return anything besides: their
      reply is ``Any``.
    - A handler that defers its reply (``self.defer_reply()``) says so by returning the
      ``PendingReply`` (``-> PendingReply``, or ``-> Pong | PendingReply`` when it
      answers now or later): the kernel ignores the return value of a deferred ask,
      and the reply sent later is the asker's. ``-> None`` stays refused.
    - Not checked: a missing annotation or ``Any`` (gradual typing; mypy --strict flags
      the missing annotation in the user's code), ``NoReturn``, type variables,
      ``Literal`` and protocols that are not runtime-checkable. Generic types compare
      by origin and arguments.

    The value a handler returns is not inspected at run time: dispatch stays a lookup.

    Args:
        where: the handler, as ``Class.method``, for the error text.
        handled: the message types of its parameter's annotation.
        returns: its resolved return annotation.

    Raises:
        RegistrationError: the annotation and a declared reply disagree (the text names
            the handler, the request, its declared reply and the annotation), or a
            quoted reply type does not resolve.
    """
    returned = _members(returns)
    if returned is None:
        return
    # A PendingReply is no reply: what it sends later is not checked here.
    returned = [member for member in returned if not _is_pending(member)]
    if not returned:
        return
    declared: dict[type[Message], list[Any]] = {}
    takes_plain = False  # a plain message (or a Request[Any]): its reply is Any
    for message_type in handled:
        replies = _resolved_reply(message_type, where)
        if replies is None:
            takes_plain = True
        else:
            declared[message_type] = replies
    shown = type_name(returns)
    for message_type, replies in declared.items():
        if not any(_fits(member, reply) for member in returned for reply in replies):
            every_reply = _names([r for rs in declared.values() for r in rs])
            raise RegistrationError(
                f"{where}: returns {shown}, but {message_type.__qualname__} is a "
                f"Request[{_names(replies)}]: annotate it '-> {every_reply}' (or subclasses)"
                + (_DEFERRED_HINT if type(None) in returned else "")
            )
    if takes_plain or not declared:
        return
    for member in returned:
        if any(_fits(member, reply) for replies in declared.values() for reply in replies):
            continue
        requests = ", ".join(
            f"{m.__qualname__} (Request[{_names(replies)}])" for m, replies in declared.items()
        )
        hint = ""
        if member is type(None):  # a lookup that may find nothing, or a deferred reply
            if len(declared) == 1:
                ((message_type, replies),) = declared.items()
                hint = (
                    f"; declare {message_type.__qualname__}(Request"
                    f"[{_names([*replies, None])}]) if no reply is a valid answer"
                )
            else:
                hint = "; declare Request[... | None] if no reply is a valid answer"
            hint += _DEFERRED_HINT
        raise RegistrationError(
            f"{where}: returns {shown}, but {type_name(member)} is not a reply of {requests}{hint}"
        )


def _is_pending(form: Any) -> bool:
    return isinstance(form, type) and issubclass(form, PendingReply)


def _members(form: Any) -> list[Any] | None:
    """The alternatives of a type (a union flattened, ``None`` as ``NoneType``).

    ``None`` when the type says nothing checkable (``Any`` or a union with ``Any``).
    """
    if form is None:
        return [type(None)]
    if form is Any:
        return None
    if typing.get_origin(form) in (Union, types.UnionType):
        found: list[Any] = []
        for arg in typing.get_args(form):
            inner = _members(arg)
            if inner is None:
                return None
            found.extend(inner)
        return found
    return [form]


def _fits(returned: Any, reply: Any) -> bool:
    """Whether a value of type ``returned`` is a ``reply``: its class or a subclass.

    Generic types compare by origin and arguments (``list[int]`` is a
    ``Sequence[int]``, not a ``list[str]``; a bare ``list`` is any list). What is not a
    class (a type variable, a ``Literal``, ``NoReturn``) or cannot be compared (a
    protocol that is not runtime-checkable) is not checked: it fits.
    """
    if returned == reply:
        return True
    returned_class = typing.get_origin(returned) or returned
    reply_class = typing.get_origin(reply) or reply
    if not (isinstance(returned_class, type) and isinstance(reply_class, type)):
        return True
    try:
        if not issubclass(returned_class, reply_class):
            return False
    except TypeError:
        return True
    reply_args, returned_args = typing.get_args(reply), typing.get_args(returned)
    return not reply_args or not returned_args or returned_args == reply_args


def _resolved_reply(message_type: type[Message], where: str) -> list[Any] | None:
    """The declared reply of a request as alternatives, quoted names resolved.

    ``None`` for a plain message (or a request declaring ``Any``): its reply is unchecked.

    Raises:
        RegistrationError: a quoted reply type does not resolve.
    """
    try:
        reply = resolved_reply(message_type)
    except NameError as exc:
        raise RegistrationError(f"{where}: {exc}") from exc
    if reply is None:
        return None
    return _members(reply)


def resolved_reply(message_type: type[Message]) -> Any:
    """The reply type a request declares, quoted names resolved in its module (None for
    a plain message): what ``ask`` returns, and what the wire decodes a reply into.

    Raises:
        NameError: a quoted reply type does not resolve (the text says how to fix it).
    """
    reply = declared_reply(message_type)
    if reply is None:
        return None
    module = sys.modules.get(message_type.__module__)
    holder = types.SimpleNamespace(__annotations__={"reply": reply})
    try:
        return typing.get_type_hints(holder, globalns=vars(module) if module else {})["reply"]
    except Exception as exc:  # a quoted name that is not defined in the request's module
        raise NameError(
            f"cannot resolve the reply type {type_name(reply)} of "
            f"{message_type.__qualname__}: {exc}; define it at the module level of "
            f"{message_type.__module__}, or name the class itself instead of a string"
        ) from exc


def _names(members: list[Any]) -> str:
    """Alternatives as a union is written: ``Pong | None``; each once."""
    names: list[str] = []
    for member in members:
        name = type_name(member)
        if name not in names:
            names.append(name)
    return " | ".join(names)
