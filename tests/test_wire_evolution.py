"""Schema evolution across two real processes on two versions of one message module
(tests/evolution/v1, v2, v3: ``evo_msgs``), frames piped from one to the other through
kerna's wire (tests/wire_peer.py); and ``kerna schema export`` / ``check`` on them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
VERSIONS = ROOT / "tests" / "evolution"


def _env(version: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{VERSIONS / version}{os.pathsep}{ROOT}"}


def _run(version: str, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, *args], input=stdin, capture_output=True, cwd=ROOT,
        env=_env(version), timeout=60, check=False,
    )  # fmt: skip


def _across(writer: str, reader: str) -> list[dict[str, Any]]:
    frames = _run(writer, "-m", "tests.wire_peer", "encode")
    assert frames.returncode == 0, frames.stderr.decode()
    read = _run(reader, "-m", "tests.wire_peer", "decode", stdin=frames.stdout)
    assert read.returncode == 0, read.stderr.decode()
    return [json.loads(line) for line in read.stdout.decode().splitlines()]


def test_an_older_reader_ignores_added_fields_and_fills_removed_ones_with_defaults() -> None:
    assert _across("v2", "v1") == [
        {"type": "Order", "value": {"type": "evo.Order", "id": 2, "note": ""}},
        {"type": "Quote", "value": {"type": "evo.Quote", "symbol": "ACME"}},
        {"error": "unknown_tag", "tag": "evo.Cancel"},  # new type: refused by name
        {"type": "Price", "value": {"type": "evo.Price", "value": 2.5}},  # a reply
    ]


def test_a_newer_reader_fills_added_fields_with_defaults_and_ignores_removed_ones() -> None:
    assert _across("v1", "v2") == [
        {"type": "Order", "value": {"type": "evo.Order", "id": 1, "priority": 0}},
        {"type": "Quote", "value": {"type": "evo.Quote", "symbol": "ACME", "venue": "XETRA"}},
        {"type": "Price", "value": {"type": "evo.Price", "value": 1.5, "currency": "EUR"}},
    ]


def test_an_incompatible_version_is_refused_by_tag_never_decoded_into_defaults() -> None:
    assert _across("v1", "v3") == [
        {"error": "unknown_tag", "tag": "evo.Order"},  # v3 renamed the tag
        {"type": "Quote", "value": {"type": "evo.Quote", "symbol": "ACME"}},
        {"error": "bad_payload", "tag": "evo.Price"},  # v3 requires a field v1 lacks
    ]
    assert _across("v3", "v1")[-1] == {"error": "bad_payload", "tag": "evo.Quote"}  # int reply


def _schema(version: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return _run(version, "-m", "kerna", "schema", *args)


def test_schema_check_passes_a_compatible_version(tmp_path: Path) -> None:
    out = tmp_path / "schema.json"
    exported = _schema("v1", "export", "evo_msgs", "-o", str(out))
    assert exported.returncode == 0, exported.stderr.decode()
    doc = json.loads(out.read_text())
    assert sorted(doc["messages"]) == ["evo.Order", "evo.Price", "evo.Quote"]
    quote = doc["messages"]["evo.Quote"]
    assert quote["reply"] == {"$ref": "#/$defs/Price"}
    assert "Price" in quote["structs"]
    assert len(quote["fingerprint"]) == 16
    checked = _schema("v2", "check", str(out), "evo_msgs")
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    assert checked.stdout.decode().startswith("kerna schema: 4 message types compatible")
    assert _schema("v1", "check", str(out), "evo_msgs").returncode == 0


def test_schema_check_prints_one_line_per_breaking_change(tmp_path: Path) -> None:
    out = tmp_path / "schema.json"
    assert _schema("v1", "export", "evo_msgs", "-o", str(out)).returncode == 0
    checked = _schema("v3", "check", str(out), "evo_msgs")
    assert checked.returncode == 1
    lines = checked.stdout.decode().splitlines()
    assert lines == [
        "evo.Order: changed tag: evo_msgs.Order is now tagged 'evo.Order.v3'",
        "evo.Price: new field 'venue' without a default",
        'evo.Quote: changed reply type: {"$ref":"#/$defs/Price"} -> {"type":"integer"}',
    ]
    # v2 to v1: removing v2's Cancel (still in the file) and a field of an old reader
    v2 = tmp_path / "v2.json"
    assert _schema("v2", "export", "evo_msgs", "-o", str(v2)).returncode == 0
    back = _schema("v1", "check", str(v2), "evo_msgs")
    assert back.returncode == 1
    assert back.stdout.decode().splitlines() == [
        "evo.Cancel: removed message type evo_msgs.Cancel (still in the file)"
    ]


def test_schema_check_names_a_retyped_and_a_removed_required_field(tmp_path: Path) -> None:
    from kerna._schema import check, export

    from .wire_messages import Pong, Shape

    old = export([Pong, Shape])
    old["messages"]["test.Pong"]["fields"][0]["schema"] = {"type": "string"}
    old["messages"]["test.Shape"]["fields"].append(
        {"name": "gone", "schema": {"type": "integer"}, "required": True}
    )
    assert check(old, [Pong, Shape]) == [
        'test.Pong: retyped field \'n\': {"type":"string"} -> {"type":"integer"}',
        "test.Shape: removed required field 'gone'",
    ]
    with pytest.raises(ValueError, match="not a kerna schema document"):
        check({"messages": {}}, [Pong])


def test_schema_commands_refuse_a_missing_module_and_a_bad_file(tmp_path: Path) -> None:
    missing = _schema("v1", "export", "no_such_module_here")
    assert missing.returncode == 2
    assert b"cannot import no_such_module_here" in missing.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    refused = _schema("v1", "check", str(bad), "evo_msgs")
    assert refused.returncode == 2
    assert b"not a kerna schema document" in refused.stderr


def test_fingerprints_are_stable_and_change_with_the_schema() -> None:
    from kerna._wire import MessageTypes

    from .wire_messages import ALL

    types = MessageTypes()
    types.add_all(ALL)
    first = types.fingerprints()
    again = MessageTypes()
    again.add_all(reversed(ALL))
    assert again.fingerprints() == first
    assert len(set(first.values())) == len(first)
    prints = [_run(v, "-c", _PRINT).stdout.decode() for v in ("v1", "v1", "v2")]
    assert prints[0] == prints[1]  # two processes, one version: the same fingerprints
    assert prints[0] != prints[2]


_PRINT = (
    "import evo_msgs; from kerna._schema import fingerprint; print(fingerprint(evo_msgs.Order))"
)
