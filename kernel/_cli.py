"""The ``kerna`` command line (console script ``kerna``, or ``python -m kerna``).

Commands::

    kerna demo [--docs N] [--seed S] [--loop virtual|auto|asyncio|uvloop] [--nodes N] ...
    kerna schema export [module...] [-o schema.json]
    kerna schema check schema.json [module...]
    kerna node [--config node.toml] [--check]
    kerna status | ask TYPE KEY MESSAGE | tell TYPE KEY MESSAGE | publish TOPIC MESSAGE
    kerna deadletters list | replay ...
    kerna top [--interval SECONDS] [--once]
    kerna --version

``kerna demo`` runs ``kerna.demo`` (its own package, on kerna's public API); this module
parses its flags and draws its progress. Only the command line imports rich (the
``cli`` extra: here and in ``kerna.demo``'s report), and only when it draws: without
rich, or with ``--plain``, progress is a plain text line and the summary plain text.
Exit codes: 0 success, 1 the run failed, 2 bad arguments (argparse), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

from . import __version__
from ._errors import ConfigError

__all__ = ["build_parser", "main"]

log = logging.getLogger("kerna.cli")

ProgressFn = Callable[[int, int], None]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``kerna`` command line; returns the process exit code.

    Raises:
        SystemExit: for ``--help``, ``--version`` and bad arguments (code 2), as argparse
            does.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Callable[[argparse.Namespace], int] | None = getattr(args, "run", None)
    if command is None:
        parser.print_help()
        return 0
    logging.basicConfig(
        level=max(logging.DEBUG, logging.WARNING - 10 * getattr(args, "verbose", 0)),
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return command(args)
    except KeyboardInterrupt:
        print("kerna: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``kerna`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="kerna",
        description="kerna: an embeddable asyncio kernel for multi-agent systems.",
    )
    parser.add_argument("--version", action="version", version=f"kerna {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_demo(commands)
    from ._schema_cli import add_schema

    add_schema(commands)
    from ._node_cli import add_node_commands

    add_node_commands(commands)
    return parser


# -- kerna demo --------------------------------------------------------------------------


def _add_demo(commands: Any) -> None:
    demo: argparse.ArgumentParser = commands.add_parser(
        "demo",
        help="run the document pipeline demo, in process, and print its numbers",
        description=(
            "Upload synthetic documents to a document pipeline of agents: text, entity "
            "and classification agents react to each upload in parallel (choreography) "
            "while an orchestrator asks a summarizer and an indexer in sequence, each "
            "with a timeout (orchestration). A few documents are corrupted or stall, on "
            "purpose, so the summary shows failures. Deterministic for a given --seed; "
            "in process, no network, no server, unless --nodes N runs it across N "
            "`kerna node` processes on an etcd it starts itself, killing one midway."
        ),
    )
    demo.add_argument(
        "--docs", type=_positive_int, default=20_000, metavar="N",
        help="documents to upload (default: %(default)s)",
    )  # fmt: skip
    demo.add_argument(
        "--seed", type=int, default=0, metavar="S",
        help="seed of the corpus and of the injected faults (default: %(default)s)",
    )  # fmt: skip
    demo.add_argument(
        "--loop", choices=("virtual", "auto", "asyncio", "uvloop"), default=None,
        help="event loop; virtual: asyncio with the simulated waits (the model, the "
        "timeouts) on a virtual clock, every count deterministic (the default in "
        "process); auto takes uvloop when installed (the default with --nodes); asyncio "
        "and uvloop run in real time, where how many asks share a model call varies",
    )  # fmt: skip
    demo.add_argument(
        "--concurrency", type=_positive_int, default=64, metavar="N",
        help="documents in flight on the orchestrated path (default: %(default)s)",
    )  # fmt: skip
    demo.add_argument(
        "--step-timeout", type=_positive_seconds, default=0.5, metavar="SECONDS",
        help="timeout of each orchestrated step (default: %(default)s)",
    )  # fmt: skip
    demo.add_argument(
        "--corrupt-rate", type=_rate, default=0.005, metavar="RATE",
        help="fraction of corrupted documents, 0..1 (default: %(default)s)",
    )  # fmt: skip
    demo.add_argument(
        "--stall-rate", type=_rate, default=0.001, metavar="RATE",
        help="fraction of the intact documents whose indexing stalls, 0..1 "
        "(default: %(default)s)",
    )  # fmt: skip
    demo.add_argument(
        "--nodes", type=_positive_int, default=1, metavar="N",
        help="1: in this process (default); N >= 2: across N `kerna node` processes on a "
        "throwaway etcd (etcd-server installed), one of them killed with SIGKILL midway",
    )  # fmt: skip
    demo.add_argument(
        "--lease-ttl", type=_positive_seconds, default=None, metavar="SECONDS",
        help="with --nodes: the nodes' lease TTL, how long a killed node stays a member "
        "(default: 2)",
    )  # fmt: skip
    demo.add_argument("--json", action="store_true", help="print the report as JSON")
    demo.add_argument(
        "--plain", action="store_true", help="plain text output even when rich is installed"
    )
    demo.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv: debug)")
    demo.set_defaults(run=lambda args: _demo(args, demo))


def _demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    # here, so that `kerna --version` stays instant
    from .demo import format_plain, loop_factory, print_rich, run_cluster_demo, run_demo

    if args.loop is None:
        args.loop = "auto" if args.nodes > 1 else "virtual"
    elif args.loop == "virtual" and args.nodes > 1:
        parser.error("argument --loop: virtual runs in process only, not with --nodes")
    try:
        loop_factory(args.loop)
    except ConfigError as exc:
        parser.error(f"argument --loop: {exc}")
    if args.nodes == 1 and args.lease_ttl is not None:
        parser.error("argument --lease-ttl: only with --nodes N (N >= 2)")
    if args.nodes > 1 and args.docs < 2:
        parser.error(
            "argument --docs: --nodes needs at least 2 documents (a half each side of the kill)"
        )
    rich_lib = None if args.plain else _import_rich()
    options: dict[str, Any] = {
        "loop": args.loop,
        "concurrency": args.concurrency,
        "step_timeout": args.step_timeout,
        "corrupt_rate": args.corrupt_rate,
        "stall_rate": args.stall_rate,
    }
    try:
        with _progress(rich_lib, args.docs) as progress:
            if args.nodes > 1:
                report = run_cluster_demo(
                    args.docs, args.seed, nodes=args.nodes, lease_ttl=args.lease_ttl or 2.0,
                    progress=progress, **options,
                )  # fmt: skip
            else:
                report = run_demo(args.docs, args.seed, progress=progress, **options)
    except Exception as exc:
        if args.verbose:
            raise
        print(
            f"kerna demo: failed: {_first_error(exc)!r} (-v shows the traceback)", file=sys.stderr
        )
        return 1
    if args.json:
        import msgspec

        sys.stdout.write(msgspec.json.format(msgspec.json.encode(report)).decode() + "\n")
    elif rich_lib is not None:
        print_rich(report)
    else:
        sys.stdout.write(format_plain(report))
    if report.lost:
        print(f"kerna demo: {report.lost} documents were never accounted for", file=sys.stderr)
        return 1
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text!r}")
    return value


def _first_error(exc: BaseException) -> BaseException:
    """The first leaf of an exception group (task groups wrap what they collect)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


# -- output --------------------------------------------------------------------------------


def _import_rich() -> Any:
    try:
        import rich
    except ImportError:
        return None
    return rich


@contextmanager
def _progress(rich_lib: Any, total: int) -> Iterator[ProgressFn]:
    """A ``progress(done, total)`` callback drawing a bar on stderr while the run lasts."""
    if rich_lib is None:
        plain = _PlainProgress(sys.stderr)
        try:
            yield plain
        finally:
            plain.close()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    columns = ("documents", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("documents", total=total)
        yield lambda done, _total: bar.update(task, completed=done)


class _PlainProgress:
    """Progress without rich: one rewritten line on a terminal, else a line per 10%."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.shown = -1
        self.open_line = False

    def __call__(self, done: int, total: int) -> None:
        percent = 100 * done // total if total else 100
        if self.tty:
            self.stream.write(f"\rdocuments {done:,}/{total:,} ({percent}%)")
            self.open_line = True
        elif percent // 10 > self.shown // 10:
            self.stream.write(f"documents {done:,}/{total:,} ({percent}%)\n")
        else:
            return
        self.shown = percent
        self.stream.flush()

    def close(self) -> None:
        if self.open_line:
            self.stream.write("\n")
            self.stream.flush()
