"""The public face: ``kerna.__all__`` is exactly the public names, sorted."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import kerna


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name in dir(kerna) if not name.startswith("_")}  # loaded or not
    # submodules of the package appear as attributes once imported; they are not API
    modules = {name for name in public if type(getattr(kerna, name)).__name__ == "module"}
    assert sorted(public - modules) == sorted(kerna.__all__)


def test_all_is_sorted() -> None:
    assert list(kerna.__all__) == sorted(kerna.__all__)


def test_errors_form_one_hierarchy() -> None:
    for name in kerna.__all__:
        obj = getattr(kerna, name)
        if isinstance(obj, type) and issubclass(obj, Exception) and obj is not kerna.KernaError:
            if obj is kerna.KernaInternalError:
                assert not issubclass(obj, kerna.KernaError)  # kerna's bugs are not yours
            else:
                assert issubclass(obj, kerna.KernaError), name
    assert issubclass(kerna.AskTimeout, TimeoutError)
    assert issubclass(kerna.Conflict, kerna.StateError)
    for permanent in (kerna.StoreFailed, kerna.ValueTooLarge):  # retrying does not help
        assert issubclass(permanent, kerna.StateError)
        assert not issubclass(permanent, kerna.Unavailable)


def test_state_all_lists_exactly_the_public_names() -> None:
    import kerna.state

    public = {n for n in vars(kerna.state) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(kerna.state, n)).__name__ == "module"}
    assert sorted(public - modules) == sorted(kerna.state.__all__)
    assert list(kerna.state.__all__) == sorted(kerna.state.__all__)


def _python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (nothing of kerna imported yet); its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


KERNEL_MODULES = ("kerna._kernel", "kerna._blocking", "kerna._agent", "anyio")


@pytest.mark.parametrize("module", ["kerna", "kerna.state"])
def test_importing_kerna_or_kerna_state_does_not_load_the_kernel(module: str) -> None:
    loaded = _python(
        f"import sys, {module}\nprint([m for m in {KERNEL_MODULES!r} if m in sys.modules])"
    )
    assert loaded == "[]"


def test_public_names_load_on_first_use_and_are_listed_before() -> None:
    out = _python(
        "import sys, kerna\n"
        "assert set(kerna.__all__) <= set(dir(kerna)), set(kerna.__all__) - set(dir(kerna))\n"
        "from kerna import Kernel, Agent\n"
        "assert Kernel.__module__ == 'kerna._kernel' and 'kerna._kernel' in sys.modules\n"
        "assert kerna.Kernel is Kernel\n"
        "print(len(kerna.__all__))"
    )
    assert out == str(len(kerna.__all__))


def test_an_unknown_name_is_an_attribute_error_naming_it() -> None:
    with pytest.raises(AttributeError, match="'Kernal'"):
        kerna.Kernal  # noqa: B018
    with pytest.raises(ImportError, match="Kernal"):
        exec("from kerna import Kernal", {})


def test_the_export_table_the_type_checker_imports_and_all_agree() -> None:
    """``kernel/__init__.py`` lists each public name three times (the lazy table, the
    imports mypy reads, ``__all__``): a name added to one and not the others fails here."""
    tree = ast.parse(Path(kerna.__file__).read_text())
    table: dict[str, str] = {}
    typed: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and ast.unparse(node.target) == "_EXPORTS":
            assert node.value is not None
            table = ast.literal_eval(node.value)
        if isinstance(node, ast.If) and ast.unparse(node.test) == "typing.TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom), ast.unparse(stmt)
                assert stmt.level == 1
                assert stmt.module is not None
                typed.update((alias.name, stmt.module) for alias in stmt.names)
    assert typed == table
    assert sorted(table) == sorted(kerna.__all__)
    for name, module in table.items():
        assert getattr(kerna, name) is getattr(importlib.import_module(f"kerna.{module}"), name)
