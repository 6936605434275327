"""The typed asks of ``tests/typecheck/plugins.py`` (checked by mypy), run: what mypy
says an ask through ``@cached`` or ``@batched`` returns is what it returns."""

from __future__ import annotations

import pytest

from kerna import Kernel

from .typecheck.plugins import Completion, Model, Summarizer, Summary, asks

pytestmark = pytest.mark.anyio


async def test_asks_through_the_plugin_decorators_return_their_declared_types(
    kernel: Kernel,
) -> None:
    kernel.register(Summarizer)
    kernel.register(Model)
    summary, completion = await asks(kernel)
    assert summary == Summary(text="a long tex")
    assert completion == Completion(text="HI")
