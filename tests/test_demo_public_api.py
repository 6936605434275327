"""``kerna.demo`` is written against kerna's public API only, like any user's program.

The demo's modules are read as source (AST), not run: every import of a kerna module
outside the demo package must name a public module and public names (``__all__``), and
every private attribute (``x._name``) the demo touches must be one the demo itself
defines, never one of kerna's (``kernel._types``, ``self._activation``).
"""

from __future__ import annotations

import ast
import importlib
import textwrap
from pathlib import Path

import pytest

import kerna

DEMO = "kerna.demo"
_LEAVING = {"Envelope"}
"""Public today, leaving the public API (issue 7): the demo must not start using them."""


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _absolute(module: str | None, level: int, package: str) -> str:
    """The absolute name of ``from <level dots><module> import ...`` inside ``package``."""
    if level == 0:
        return module or ""
    parts = package.split(".")
    base = parts[: len(parts) - level + 1]
    return ".".join([*base, module] if module else base)


def _kerna_private_names() -> set[str]:
    """Private attribute names of kerna's public classes (``Agent._activation``, ...)."""
    names: set[str] = set()
    for public in kerna.__all__:
        obj = getattr(kerna, public)
        if isinstance(obj, type):
            for klass in obj.__mro__:
                names.update(n for n in vars(klass) if _is_private(n))
                names.update(n for n in getattr(klass, "__slots__", ()) if _is_private(n))
    return names


def violations(source: str, package: str) -> list[str]:
    """What in ``source`` (a module of ``package``) is not kerna's public API."""
    tree = ast.parse(source)
    found: list[str] = []

    def check_module(name: str, line: int) -> bool:
        """Whether importing module ``name`` is allowed (records why not)."""
        if name == DEMO or name.startswith(f"{DEMO}.") or not name.startswith("kerna"):
            return True
        if name != "kerna" and not name.startswith("kerna."):
            return True  # e.g. a third-party "kernax"
        private = [part for part in name.split(".") if _is_private(part)]
        if private:
            found.append(f"line {line}: imports private module {name}")
            return False
        return True

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check_module(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node.module, node.level, package)
            if not check_module(module, node.lineno) or not module.startswith("kerna"):
                continue
            if module == DEMO or module.startswith(f"{DEMO}."):
                continue
            public = set(getattr(importlib.import_module(module), "__all__", ()))
            for alias in node.names:
                name = alias.name
                if (name in public and name not in _LEAVING) or name == "__version__":
                    continue
                try:
                    importlib.import_module(f"{module}.{name}")
                except ImportError:
                    found.append(f"line {node.lineno}: imports {name} from {module}, not public")
                else:
                    check_module(f"{module}.{name}", node.lineno)

    # Private attributes the demo defines itself: assigned as self._x, or defined in a
    # class body of the demo. kerna's own private members never count as the demo's.
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    own.add(item.name)
                elif isinstance(item, ast.Assign):
                    own.update(t.id for t in item.targets if isinstance(t, ast.Name))
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    own.add(item.target.id)
    own -= _kerna_private_names()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr) and node.attr not in own:
            found.append(f"line {node.lineno}: uses private attribute .{node.attr}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in {"getattr", "setattr", "hasattr", "delattr"}
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _is_private(node.args[1].value)
            and node.args[1].value not in own
        ):
            found.append(f"line {node.lineno}: {node.func.id}(..., {node.args[1].value!r})")
    return found


def demo_sources() -> list[Path]:
    package = importlib.import_module(DEMO)
    assert package.__file__ is not None
    return sorted(Path(package.__file__).parent.glob("*.py"))


def test_the_demo_package_has_its_modules() -> None:
    names = {path.name for path in demo_sources()}
    # the cluster demo (kerna demo --nodes) too: its driver and its node processes'
    # agent module are checked like the rest
    assert {"__init__.py", "_agents.py", "_driver.py", "_cluster.py", "_nodes.py"} <= names
    # kernel/ holds the kernel only (the source tree: an editable install links only
    # the modules it was built with)
    kernel_dir = Path(__file__).resolve().parents[1] / "kernel"
    assert sorted(p.name for p in kernel_dir.glob("*demo*.py")) == []


def test_the_demo_uses_only_kernas_public_api() -> None:
    found = [
        f"{path.name} {text}"
        for path in demo_sources()
        for text in violations(path.read_text(), DEMO)
    ]
    assert found == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from .._kernel import Kernel", "imports private module kerna._kernel"),
        ("from kerna._ref import AgentRef", "imports private module kerna._ref"),
        ("import kerna._errors", "imports private module kerna._errors"),
        ("from kerna.state._layout import Layout", "imports private module kerna.state._layout"),
        ("from kerna import _errors", "imports private module kerna._errors"),
        ("from kerna import Envelope", "imports Envelope from kerna, not public"),
        ("from kerna import Kernel_", "imports Kernel_ from kerna, not public"),
        ("from .. import Kernel\nKernel()._types", "uses private attribute ._types"),
        (
            "class A:\n    async def on_start(self):\n        self._activation.kernel",
            "uses private attribute ._activation",
        ),
        ("getattr(kernel, '_directory')", "getattr(..., '_directory')"),
    ],
)
def test_the_check_finds_what_is_not_public(source: str, expected: str) -> None:
    found = violations(textwrap.dedent(source), DEMO)
    assert any(expected in text for text in found), found


def test_the_check_allows_the_public_api_and_the_demos_own_names() -> None:
    source = textwrap.dedent(
        """
        from kerna import Agent, AgentRef, Kernel, Message, handler
        from kerna.state import StateBackend
        from . import _agents
        from ._work import classify

        class Orchestrator(Agent):
            def __init__(self, step: float) -> None:
                self._step = step

            def step(self) -> float:
                return self._step
        """
    )
    assert violations(source, DEMO) == []
