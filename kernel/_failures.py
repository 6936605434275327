"""What user code raised, turned into what reaches its asker or a dead letter.

Two rules hold for everything a handler or a lifecycle hook (``on_start``, ``on_stop``)
raises:

- Any ``BaseException`` is that code's failure, reported to its asker (or as a dead
  letter), except ``KeyboardInterrupt`` and ``SystemExit``, which propagate as they do
  out of any asyncio task (the loop re-raises them: the application is being asked to
  end), and except the kernel's own cancellation of the worker at ``stop()``. A
  ``CancelledError`` raised while the kernel is not stopping (the handler awaited a
  future that something else cancelled, or cancelled its own task) is the handler's
  own failure.
- Formatting an error never raises: an exception whose ``__str__`` or ``__repr__``
  raises, or recurses without end, is described by its type name.
"""

from __future__ import annotations

import asyncio
import sys
import traceback
from typing import Any, TypeVar

from ._errors import RemoteError

__all__ = ["describe", "is_failure", "remote_error", "type_name"]

E = TypeVar("E", bound=RemoteError)


def is_failure(exc: BaseException, worker: asyncio.Task[Any] | None, stopping: bool) -> bool:
    """Whether ``exc``, raised by user code in ``worker``, is that code's failure.

    False for what must propagate: ``KeyboardInterrupt``, ``SystemExit``, and a
    ``CancelledError`` while the kernel is ``stopping`` and ``worker`` is being
    cancelled (``Task.cancelling()``: the kernel's own cancellation). A worker that
    something else cancelled (a handler cancelling its own task) is uncancelled: that
    is the handler's failure, and the worker serves on.
    """
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        return False
    if isinstance(exc, asyncio.CancelledError) and worker is not None and worker.cancelling():
        if stopping:
            return False
        worker.uncancel()
    return True


def type_name(exc: BaseException) -> str:
    """The qualified name of ``exc``'s type; kerna's own errors by their public name."""
    t = type(exc)
    module = t.__module__
    if module == "builtins":
        return t.__qualname__
    kerna = sys.modules.get("kerna")
    if module.startswith("kerna._") and getattr(kerna, t.__name__, None) is t:
        return f"kerna.{t.__qualname__}"
    return f"{module}.{t.__qualname__}"


def _text(exc: BaseException) -> str:
    """``str(exc)``, or the type name when ``str`` fails."""
    try:
        return str(exc)
    except Exception:  # a broken __str__, or endless recursion in it
        return f"<{type(exc).__qualname__}: str() failed>"


def describe(exc: BaseException) -> str:
    """``"TypeName: text"`` for logs and dead letters; never raises."""
    return f"{type(exc).__name__}: {_text(exc)}"


def _formatted_traceback(exc: BaseException) -> str:
    try:
        return "".join(traceback.format_exception(exc))
    except Exception:  # the exception's own text is what failed: keep the frames
        frames = "".join(traceback.format_tb(exc.__traceback__))
        return f"Traceback (most recent call last):\n{frames}{type_name(exc)}: {_text(exc)}\n"


def remote_error(exc: BaseException, cls: type[E], node: str = "") -> E:
    """Wrap a handler's exception for its asker: type name, message, traceback and the
    id of the ``node`` it was raised on.

    A RemoteError that a handler let through from a nested ask keeps its origin's type
    name, message and node, so the root cause reaches the first asker unwrapped.
    """
    if isinstance(exc, RemoteError):
        return cls(exc.type_name, exc.message, exc.traceback, exc.node or node)
    return cls(type_name(exc), _text(exc), _formatted_traceback(exc), node)
