"""Wire schemas of an application's messages: export, compatibility check, fingerprints.

``kerna schema export myapp.messages -o schema.json`` writes, for every ``Message``
class defined in the named modules, its tag, its fields (msgspec's JSON schema of each
field's type, and whether it is required), the reply type a ``Request`` declares, the
Structs its fields use, and a fingerprint. ``kerna schema check schema.json
myapp.messages`` compares today's code with that file and prints one line per breaking
change, exiting 1 if there is any:

- a removed field that was required (old readers still need it; a removed field that
  had a default is compatible: old readers fill the default),
- a retyped field (its JSON schema changed; a changed default is not a change),
- a new field without a default (old writers do not send it),
- a changed tag (the class, by module and name, is there under another tag),
- a removed message type (a tag in the file that no class has any more),
- a changed reply type of a request,
- for ``array_like`` Structs, fields that moved (their position is their identity).

Fingerprints (``fingerprint``) are a stable hash of what the check compares, per tag:
equal fingerprints mean the same wire schema. Nodes exchange their schema documents
when they meet (the tcp handshake, nats presence probes) and run the same check on each
tag whose fingerprints differ (``peer_problems``): a compatible difference is logged at
INFO, an incompatible one at WARNING and kept for ``Kernel.schema_mismatches()``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import typing
from collections.abc import Iterable
from typing import Any

import msgspec

from ._message import Message
from ._replies import resolved_reply

__all__ = [
    "SCHEMA_VERSION",
    "check",
    "describe",
    "export",
    "fingerprint",
    "message_types",
    "peer_problems",
]

SCHEMA_VERSION = 1
_REF = "#/$defs/{name}"


def message_types(modules: Iterable[str]) -> list[type[Message]]:
    """The Message classes defined in the named modules (imported), in definition order.

    Raises:
        ImportError: a module does not import.
    """
    found: list[type[Message]] = []
    for name in modules:
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, Message)
                and value.__module__ == module.__name__
                and value not in found
            ):
                found.append(value)
    return found


def _schema_of(form: Any) -> Any:
    """msgspec's JSON schema of a type, nested Structs as references by name."""
    (schema,), _ = msgspec.json.schema_components([form], ref_template=_REF)
    return _without_defaults(schema)


def _without_defaults(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {
            k: _without_defaults(v)
            for k, v in schema.items()
            if k not in ("default", "title", "description")
        }
    if isinstance(schema, list):
        return [_without_defaults(v) for v in schema]
    return schema


def _structs_in(form: Any) -> list[type[msgspec.Struct]]:
    if isinstance(form, type) and issubclass(form, msgspec.Struct):
        return [form]
    return [s for arg in typing.get_args(form) for s in _structs_in(arg)]


def _struct_entry(cls: type[msgspec.Struct]) -> dict[str, Any]:
    config = cls.__struct_config__
    tag_field = config.tag_field
    fields = [
        {"name": f.encode_name, "schema": _schema_of(f.type), "required": f.required}
        for f in msgspec.structs.fields(cls)
        if f.encode_name != tag_field
    ]
    return {
        "type": f"{cls.__module__}.{cls.__qualname__}",
        "tag": config.tag if isinstance(config.tag, str) else None,
        "array_like": config.array_like,
        "fields": fields,
    }


def describe(cls: type[Message]) -> dict[str, Any]:
    """The schema entry of one message type (see the module docstring).

    Raises:
        TypeError: msgspec cannot describe a field's type.
    """
    entry = _struct_entry(cls)
    reply: Any = None
    try:
        declared = resolved_reply(cls)
    except NameError:
        declared = None
    if declared is not None:
        reply = _schema_of(declared)
    entry["reply"] = reply
    structs: dict[str, Any] = {}
    pending = [f.type for f in msgspec.structs.fields(cls)]
    if declared is not None:
        pending.append(declared)
    while pending:
        for struct in _structs_in(pending.pop()):
            if struct.__name__ not in structs and struct is not cls:
                structs[struct.__name__] = _struct_entry(struct)
                pending.extend(f.type for f in msgspec.structs.fields(struct))
    entry["structs"] = dict(sorted(structs.items()))
    entry["fingerprint"] = _hash(entry)
    return entry


def _hash(entry: dict[str, Any]) -> str:
    text = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint(cls: type[Message]) -> str:
    """A stable hash of ``cls``'s wire schema (fields, reply type, Structs it uses).

    Raises:
        TypeError: msgspec cannot describe a field's type.
    """
    fp: str = describe(cls)["fingerprint"]
    return fp


def export(types: Iterable[type[Message]]) -> dict[str, Any]:
    """The schema document of ``types``, by tag (what ``kerna schema export`` writes).

    Raises:
        TypeError: msgspec cannot describe a field's type.
    """
    messages = {}
    for cls in types:
        entry = describe(cls)
        messages[entry["tag"]] = entry
    return {"kerna_schema": SCHEMA_VERSION, "messages": dict(sorted(messages.items()))}


def check(old: dict[str, Any], types: Iterable[type[Message]]) -> list[str]:
    """The breaking changes from the schema document ``old`` to ``types``, one line each.

    Raises:
        ValueError: ``old`` is not a kerna schema document.
    """
    if not isinstance(old, dict) or old.get("kerna_schema") != SCHEMA_VERSION:
        raise ValueError(f"not a kerna schema document (version {SCHEMA_VERSION})")
    new = export(types)["messages"]
    by_type = {entry["type"]: tag for tag, entry in new.items()}
    problems: list[str] = []
    for tag, before in old["messages"].items():
        after = new.get(tag)
        if after is None:
            moved = by_type.get(before["type"])
            if moved is not None:
                problems.append(f"{tag}: changed tag: {before['type']} is now tagged {moved!r}")
            else:
                problems.append(f"{tag}: removed message type {before['type']} (still in the file)")
            continue
        problems += _entry_problems(tag, before, after)
    return problems


def peer_problems(theirs: dict[str, Any], ours: dict[str, Any]) -> dict[str, list[str]]:
    """For each tag that two nodes' schema documents (their ``messages``) both have with
    different fingerprints, what breaks between them (an empty list: they differ
    compatibly, e.g. a field added with a default). A tag only one side knows is not a
    problem: a new message type is compatible."""
    out: dict[str, list[str]] = {}
    for tag, before in theirs.items():
        after = ours.get(tag)
        if after is None or not isinstance(before, dict):
            continue
        if before.get("fingerprint") == after.get("fingerprint"):
            continue
        try:
            out[tag] = _entry_problems(tag, before, after)
        except (KeyError, TypeError) as exc:  # a peer's document we cannot read
            out[tag] = [f"{tag}: the peer's schema is not readable ({exc!r})"]
    return out


def _entry_problems(tag: str, before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    problems = _fields(tag, before, after)
    if before.get("reply") != after.get("reply"):
        problems.append(
            f"{tag}: changed reply type: {_show(before.get('reply'))} -> "
            f"{_show(after.get('reply'))}"
        )
    for name, struct in before.get("structs", {}).items():
        now = after.get("structs", {}).get(name)
        if now is not None:
            problems += _fields(f"{tag}: struct {name}", struct, now)
    return problems


def _fields(where: str, before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    old_fields = {f["name"]: f for f in before["fields"]}
    new_fields = {f["name"]: f for f in after["fields"]}
    for name, field in old_fields.items():
        now = new_fields.get(name)
        if now is None:
            if field["required"]:
                problems.append(f"{where}: removed required field {name!r}")
        elif now["schema"] != field["schema"]:
            problems.append(
                f"{where}: retyped field {name!r}: {_show(field['schema'])} -> "
                f"{_show(now['schema'])}"
            )
    for name, field in new_fields.items():
        if name not in old_fields and field["required"]:
            problems.append(f"{where}: new field {name!r} without a default")
    if before.get("array_like") or after.get("array_like"):
        old_order = [f["name"] for f in before["fields"]]
        new_order = [f["name"] for f in after["fields"]]
        if new_order[: len(old_order)] != old_order:
            problems.append(
                f"{where}: array_like fields moved: {old_order} -> {new_order} "
                "(append new fields at the end, remove none)"
            )
    return problems


def _show(schema: Any) -> str:
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))
