"""The README's Python examples run, in order, as a reader would paste them.

Each ```python block is executed in one namespace (later blocks use the agents of
earlier ones). A block with a top-level ``async with`` (as in a notebook or
``python -m asyncio``) runs inside a coroutine; its etcd URL points at the test's own
etcd server.
"""

from __future__ import annotations

import asyncio
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from .etcd import EtcdMember

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def _blocks() -> list[str]:
    return _BLOCK.findall(README.read_text())


def test_the_readme_has_python_examples() -> None:
    assert len(_blocks()) >= 3


def test_the_readme_examples_run(
    etcd_server: EtcdMember, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace: dict[str, Any] = {"__name__": "readme"}
    for block in _blocks():
        code = block.replace("etcd://127.0.0.1:2379", etcd_server.url)
        top = re.search(r"^(async with|await) ", code, re.MULTILINE)
        if top is None:
            exec(compile(code, README.name, "exec"), namespace)
            continue
        # definitions at module level (annotations resolve there), the rest in a coroutine
        exec(compile(code[: top.start()], README.name, "exec"), namespace)
        body = textwrap.indent(code[top.start() :], "    ")
        source = f"async def _block():\n{body}\n    return locals()"
        exec(compile(source, README.name, "exec"), namespace)
        namespace.update(asyncio.run(namespace.pop("_block")()))
    assert "Pong(n=1)" in capsys.readouterr().out
    assert namespace["pong"].n == 1  # the BlockingKernel example
    assert namespace["total"].n == 1  # the state example, on real etcd
