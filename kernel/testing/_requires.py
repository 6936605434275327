"""Skip a test whose server or module is missing, or fail it when they are required.

``KERNA_REQUIRE_SERVERS=1`` (CI sets it) makes every such skip a failure: a machine
that was meant to have the servers cannot pass by skipping their tests. The variable is
read at each call, so a session (or a subprocess) may set it late.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from types import ModuleType
from typing import NoReturn

import pytest

from ._process import ServerNotInstalled

__all__ = ["require_module", "require_server", "servers_required", "skip_missing_servers"]


def servers_required() -> bool:
    """Whether ``KERNA_REQUIRE_SERVERS=1`` is set."""
    return os.environ.get("KERNA_REQUIRE_SERVERS") == "1"


def _missing(what: str, reason: str) -> NoReturn:
    if servers_required():
        pytest.fail(f"required {what} missing (KERNA_REQUIRE_SERVERS=1): {reason}")
    pytest.skip(reason)


def require_server(reason: str) -> NoReturn:
    """Skip the calling test because its server is missing (``reason`` says which and how
    to install it); fail it instead under ``KERNA_REQUIRE_SERVERS=1``.

    Raises:
        pytest.skip.Exception: the test is skipped.
        pytest.fail.Exception: under ``KERNA_REQUIRE_SERVERS=1``.
    """
    _missing("server", reason)


def require_module(name: str, install: str) -> ModuleType:
    """Import ``name``; when it is missing, skip the test with the reason and how to
    ``install`` it (fail it under ``KERNA_REQUIRE_SERVERS=1``).

    Raises:
        pytest.skip.Exception: the module is not importable.
        pytest.fail.Exception: the same, under ``KERNA_REQUIRE_SERVERS=1``.
    """
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        _missing("module", f"{name} is not importable ({exc}): {install}")


@contextlib.contextmanager
def skip_missing_servers() -> Iterator[None]:
    """Turn a ``ServerNotInstalled`` raised in the block into ``require_server``: for a
    server a test starts itself, ``with skip_missing_servers(), running_nats(...) as s``.

    Raises:
        pytest.skip.Exception: a server's binary is missing.
        pytest.fail.Exception: the same, under ``KERNA_REQUIRE_SERVERS=1``.
    """
    try:
        yield
    except ServerNotInstalled as exc:
        require_server(str(exc))
