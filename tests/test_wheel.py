"""The distribution builds from the repository's files alone, and the built wheel installs
into a fresh virtualenv where kerna imports and runs: every module of the source tree is
in it (the package list in pyproject.toml is explicit), with ``py.typed``, the
``kerna.state_backends`` entry points and the ``kerna`` script.

Offline: the wheel is built with this environment's setuptools (``--no-build-isolation``;
the ``test`` extra brings setuptools >= 77) and installed without its dependencies,
which the fresh environment borrows from this one through a ``.pth`` line (a path
listed there is added as a plain directory: the editable install of kerna it holds is
not activated, so ``import kerna`` can only find the wheel's copy).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

import kerna

ROOT = Path(__file__).resolve().parent.parent
# source folder -> where its modules go in the wheel (pyproject's package-dir)
PACKAGES = {
    "kernel": "kerna",
    "state": "kerna/state",
    "transports": "kerna/transports",
    "plugins": "kerna/plugins",
}

_CHECK = textwrap.dedent(
    """
    import asyncio, sys
    from importlib.metadata import distribution, entry_points
    import kerna, kerna.state
    from kerna import Agent, Kernel, Message, handler

    assert kerna.__file__.startswith(sys.prefix), kerna.__file__
    assert distribution("kerna").version == kerna.__version__
    assert {"memory", "sqlite", "etcd"} <= set(entry_points(group="kerna.state_backends").names)

    class Ping(Message):
        n: int

    class Echo(Agent):
        @handler
        async def ping(self, msg: Ping) -> Ping:
            return msg

    async def main() -> None:
        async with Kernel(state="sqlite://:memory:") as kernel:  # through the entry point
            kernel.register(Echo)
            assert await kernel.ref(Echo, "a").ask(Ping(n=1), timeout=5) == Ping(n=1)

    asyncio.run(main())
    print("ok", kerna.__version__)
    """
)


def _run(*args: str | Path, cwd: Path) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done.stdout


def _pip(*args: str | Path, cwd: Path) -> str:
    return _run(sys.executable, "-m", "pip", "-q", *args, cwd=cwd)


def _repository_files(dest: Path) -> None:
    """Copy what a clone has (tracked files, and new ones not ignored) to ``dest``."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git repository (to list its files)")
    listed = _run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT)
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a file deleted in the work tree is still "cached"
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def test_the_wheel_builds_from_a_clean_tree_installs_and_runs(tmp_path: Path) -> None:
    tree, dist, venv = tmp_path / "tree", tmp_path / "dist", tmp_path / "venv"
    _repository_files(tree)
    _pip("wheel", "--no-build-isolation", "--no-deps", "--no-index", "-w", dist, tree, cwd=tmp_path)
    (wheel,) = dist.glob("kerna-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    expected = {
        f"{package}/{module.relative_to(ROOT / folder)}"
        for folder, package in PACKAGES.items()
        for module in (ROOT / folder).rglob("*.py")
        if "__pycache__" not in module.parts
    }
    assert expected - names == set(), "modules missing from the wheel (pyproject packages)"
    assert "kerna/py.typed" in names

    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    _pip("--python", python, "install", "--no-deps", "--no-index", wheel, cwd=tmp_path)
    site = _run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=venv)
    (Path(site.strip()) / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    assert _run(python, "-c", _CHECK, cwd=tmp_path) == f"ok {kerna.__version__}\n"
    assert _run(venv / "bin" / "kerna", "--version", cwd=tmp_path).split() == [
        "kerna",
        kerna.__version__,
    ]
