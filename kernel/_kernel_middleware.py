"""The Kernel's middleware chain: the kernel-wide one, outermost, around every agent
type's own, and the hooks a middleware gets from the kernel (``attach``, ``stopped``).

A mixin of ``Kernel`` (``kerna._kernel``), kept apart so that the facade stays about
starting, stopping, registering and sending; the chains themselves are composed by
``kerna._chain``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._chain import check_middleware, hooks

if TYPE_CHECKING:
    from ._runtime import Runtime

__all__ = ["KernelMiddleware"]


class KernelMiddleware:
    """A ``Kernel``'s middleware chain (see the module docstring)."""

    _runtime: Runtime
    _middleware: tuple[object, ...]

    def use(self, *middleware: object) -> None:
        """Add middleware to the end (the inner side) of the kernel's chain; it applies
        to every agent type, registered or not yet, from their next message.

        A middleware with an ``attach(kernel)`` method has it called once, here; one
        with a ``stopped(kernel)`` method has that called once, when ``stop()`` has
        ended (no handler runs any more: ``kerna.plugins.Tracing`` flushes its spans).

        Raises:
            TypeError: an argument is not a middleware (see ``Kernel``'s ``middleware``).
        """
        added = check_middleware(middleware, "Kernel.use()", kernel=True)
        for m in added:
            attach = getattr(m, "attach", None)
            if callable(attach):
                attach(self)
        self._middleware += added
        rt = self._runtime
        rt.outbound = hooks(self._middleware, "send")
        for atype in rt.types.values():
            atype.chain(self._middleware)

    @property
    def middleware(self) -> tuple[object, ...]:
        """The kernel's middleware chain, outermost first (agent types' own come after)."""
        return self._middleware

    def _tell_stopped(self) -> None:
        """Call ``stopped(kernel)`` once on each middleware of the kernel's chain and of
        the types' own chains that has it (a buffering one flushes there)."""
        told: set[int] = set()
        chains = [self._middleware, *(t.middleware for t in self._runtime.types.values())]
        for m in (m for chain in chains for m in chain):
            stopped = getattr(m, "stopped", None)
            if callable(stopped) and id(m) not in told:
                told.add(id(m))
                stopped(self)
