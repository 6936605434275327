"""The README is executed and checked as a reader would use it.

Its ```python blocks run verbatim, in order, in one namespace, as if pasted into one
interpreter session (later blocks use the agents of earlier ones): no block may need an
event loop of its own (a top-level ``await`` or ``async with`` is a SyntaxError here, as
in ``python`` itself). The state example runs once more with the one-line change the
README gives for etcd, against the test's etcd server. The README links and names only
files that are in the repository and no private module, and its logging section names
every logger kerna logs to.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from kerna.testing import EtcdMember

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_FILE = re.compile(r"(?<![\w./-])((?:[\w-]+/)*[\w-]+\.(?:md|py))\b")
_MEMORY = 'Kernel(state="memory://")'
_ETCD = 'Kernel(state="etcd://127.0.0.1:2379")'


def _blocks() -> list[str]:
    """The python blocks, each padded so that its line numbers are the README's."""
    text = README.read_text()
    return ["\n" * text.count("\n", 0, m.start(1)) + m[1] for m in _BLOCK.finditer(text)]


def _run(code: str, namespace: dict[str, Any] | None = None) -> dict[str, Any]:
    namespace = {"__name__": "readme"} if namespace is None else namespace
    exec(compile(code, README.name, "exec"), namespace)
    return namespace


def _in_repository(base: Path, target: str) -> bool:
    path = (base / target).resolve()
    return path.is_relative_to(ROOT) and path.exists()


def test_the_readme_has_python_examples() -> None:
    assert len(_blocks()) >= 3


def test_the_readme_examples_run_verbatim(capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict[str, Any] = {"__name__": "readme"}
    for block in _blocks():
        _run(block, namespace)
    out = capsys.readouterr().out
    assert "Pong(n=1)" in out  # the quick start
    assert namespace["pong"].n == 1  # the BlockingKernel example
    assert "Total(n=3)" in out  # the state example, on memory://
    assert "CacheStats(hits=0, misses=1, coalesced=9, size=1, in_flight=0," in out  # plugins
    assert "replayed 2 []" in out  # dead letters, fixed and replayed
    assert "pending 40 -> 4" in out  # the worker pool
    assert "Mood(label='positive') True open 3" in out  # failure handling
    assert "Completion(text='P0') 1" in out
    assert "'send BreakerChanged', 'send Quote'] 1" in out  # tracing: one trace


def test_the_state_example_runs_on_etcd_with_the_one_line_change(
    etcd_server: EtcdMember, capsys: pytest.CaptureFixture[str]
) -> None:
    (block,) = [b for b in _blocks() if _MEMORY in b]
    assert _ETCD in README.read_text()  # the change the README tells the reader to make
    _run(block.replace(_MEMORY, f'Kernel(state="{etcd_server.url}")'))
    assert "Total(n=3)" in capsys.readouterr().out


@pytest.mark.parametrize("page", ["README.md", "examples/README.md"])
def test_a_readme_links_only_to_files_in_the_repository(page: str) -> None:
    path = ROOT / page
    text = path.read_text()
    targets = {t.partition("#")[0] for t in _LINK.findall(text) if "://" not in t}
    if path == README:  # file names in its prose too ("see DESIGN.md")
        targets |= set(_FILE.findall(text))
    missing = {t for t in targets if t and not _in_repository(path.parent, t)}
    assert missing == set(), f"{page} names files that are not in the repository"


def test_the_readme_names_no_private_module() -> None:
    assert re.findall(r"\bkerna(?:\.\w+)*\._\w+", README.read_text()) == []


def test_the_readme_logging_section_names_every_logger() -> None:
    sources = [*ROOT.glob("kernel/**/*.py"), *ROOT.glob("state/**/*.py")]
    sources += [*ROOT.glob("transports/**/*.py"), *ROOT.glob("plugins/**/*.py")]
    loggers = {n for p in sources for n in re.findall(r'getLogger\("([\w.]+)"\)', p.read_text())}
    assert loggers, "no logger found: the pattern is stale"
    text = README.read_text()
    assert "\n## Logging\n" in text
    section = text.split("\n## Logging\n", 1)[1].split("\n## ", 1)[0]
    assert {n for n in loggers if f"`{n}`" not in section} == set()
