"""The example third-party transport (examples/kerna_unix) passes kerna's shipped
conformance suite, found by its entry point, without a change to kerna.

It is installed the way pip installs a package, minus the build: a ``.dist-info``
folder whose ``entry_points.txt`` is written from the example's own pyproject.toml,
next to the module, on ``sys.path`` (a wheel build through pip would take seconds).
"""

from __future__ import annotations

import itertools
import shutil
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kerna import ConfigError
from kerna._schemes import entry_point_values
from kerna.testing import TransportFactory, TransportSuite
from kerna.transports import Transport, open_transport, schemes

PACKAGE = Path(__file__).resolve().parent.parent / "examples" / "kerna_unix"


@pytest.fixture(scope="module")
def installed() -> Iterator[Path]:
    """kerna_unix installed in a temp site folder, on sys.path for this module's tests."""
    project = tomllib.loads((PACKAGE / "pyproject.toml").read_text())["project"]
    site = Path(tempfile.mkdtemp(prefix="kerna-site-"))
    dist = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    lines = []
    for group, points in project["entry-points"].items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {target}" for name, target in points.items()]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
    shutil.copy(PACKAGE / "kerna_unix.py", site / "kerna_unix.py")
    sys.path.insert(0, str(site))
    entry_point_values.cache_clear()  # the documented way to re-read them
    try:
        yield site
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("kerna_unix", None)
        entry_point_values.cache_clear()
        shutil.rmtree(site)


@pytest.fixture
def sockets() -> Iterator[Path]:
    """A short folder for socket paths (sun_path holds 107 bytes; tmp_path can be longer)."""
    folder = Path(tempfile.mkdtemp(prefix="ku-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


_names = itertools.count()


class TestUnixTransport(TransportSuite):
    @pytest.fixture
    def make_transport(self, installed: Path, sockets: Path) -> TransportFactory:
        def make(url: str | None = None, /, **options: Any) -> Transport:
            return open_transport(url or f"unix://{sockets}/{next(_names)}.sock", **options)

        return make


def test_the_unix_scheme_comes_from_the_packages_entry_point(installed: Path) -> None:
    assert schemes()["unix"] == "kerna_unix:UnixTransport"
    transport = open_transport("unix:///tmp/kerna-example.sock")
    assert type(transport).__module__ == "kerna_unix"
    assert Path(sys.modules["kerna_unix"].__file__ or "").parent == installed


@pytest.mark.parametrize("url", ["unix://relative.sock", "unix:///", "unix:///" + "x" * 200])
def test_a_bad_unix_url_is_a_config_error_naming_it(installed: Path, url: str) -> None:
    with pytest.raises(ConfigError, match="unix:///absolute/path"):
        open_transport(url)
