"""``kerna schema export`` and ``kerna schema check`` (see ``kerna._schema``).

Exit codes: 0 compatible (or written), 1 breaking changes (one line each on stdout),
2 bad arguments, a module that does not import, or a file that is not a schema.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_schema"]


def add_schema(commands: Any) -> None:
    """Add the ``schema`` command and its ``export`` and ``check`` subcommands."""
    schema: argparse.ArgumentParser = commands.add_parser(
        "schema",
        help="export the wire schemas of your messages, or check code against them",
        description=(
            "Wire schemas of the kerna.Message classes defined in the named modules: "
            "'export' writes them; 'check' compares today's code with an exported file "
            "and prints one line per breaking change (exit 1), for CI before a rolling "
            "upgrade."
        ),
    )
    actions = schema.add_subparsers(title="actions", metavar="ACTION", required=True)
    export = actions.add_parser("export", help="write the schemas of the modules' messages")
    export.add_argument("modules", nargs="+", metavar="module", help="e.g. myapp.messages")
    export.add_argument(
        "-o", "--output", metavar="FILE", help="where to write (default: standard output)"
    )
    export.set_defaults(run=_export)
    check = actions.add_parser("check", help="compare the modules' messages with a file")
    check.add_argument("schema_file", metavar="schema.json")
    check.add_argument("modules", nargs="+", metavar="module")
    check.set_defaults(run=_check)


def _types(modules: list[str]) -> Any:
    from ._schema import message_types

    # as `python -m` does: modules of the current directory import
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return message_types(modules)
    except ImportError as exc:
        print(f"kerna schema: cannot import {exc.name or modules}: {exc}", file=sys.stderr)
        return None


def _export(args: argparse.Namespace) -> int:
    from ._schema import export

    types = _types(args.modules)
    if types is None:
        return 2
    text = json.dumps(export(types), indent=2, sort_keys=True) + "\n"
    if args.output:
        Path(args.output).write_text(text)
        print(f"kerna schema: {len(types)} message types written to {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def _check(args: argparse.Namespace) -> int:
    from ._schema import check

    try:
        old = json.loads(Path(args.schema_file).read_text())
    except (OSError, ValueError) as exc:
        print(f"kerna schema: cannot read {args.schema_file}: {exc}", file=sys.stderr)
        return 2
    types = _types(args.modules)
    if types is None:
        return 2
    try:
        problems = check(old, types)
    except ValueError as exc:
        print(f"kerna schema: {args.schema_file}: {exc}", file=sys.stderr)
        return 2
    for line in problems:
        print(line)
    if problems:
        print(f"kerna schema: {len(problems)} breaking changes", file=sys.stderr)
        return 1
    print(f"kerna schema: {len(types)} message types compatible with {args.schema_file}")
    return 0
