"""How ``kerna demo`` prints a ``DemoReport``: plain text, or rich tables when rich is
installed (the ``cli`` extra; imported only when drawing)."""

from __future__ import annotations

from ._driver import DemoReport
from ._inference import InferenceCounts

__all__ = ["format_plain", "print_rich", "summary_rows"]


def summary_rows(report: DemoReport) -> list[tuple[str, str]]:
    """The summary as (label, text) rows, shared by the plain and the rich output."""
    r = report
    rows = [
        ("loop", r.loop),
        ("documents", f"{r.docs:,} uploaded: {r.completed:,} completed, {r.failed:,} failed"
         + (f", {r.lost:,} LOST" if r.lost else "")),
        ("choreography", f"{r.aggregated:,} aggregated, {r.choreography_failed:,} failed a "
         "stage (DeadLetter)"),
        ("orchestration", f"{r.orchestrated:,} ok, {r.orchestration_errors:,} failed "
         f"(RemoteError), {r.orchestration_timeouts:,} timed out (AskTimeout)"),
        ("failures", f"{_count(r.failed, 'document')}; injected: {r.injected_corrupt:,} "
         f"corrupted, {r.injected_stalls:,} stalled"),
        ("messages", f"{r.messages:,} handled in {r.wall_s:.2f} s = {r.msgs_per_s:,.0f} msgs/s"),
        ("kernel", f"{_count(r.dead_letters, 'dead letter')}, "
         f"{_count(r.handler_failures, 'handler failure')}, "
         f"{_count(r.late_replies, 'late reply', 'late replies')}"),
    ]  # fmt: skip
    if r.inference is not None:
        rows[-1:-1] = _inference_rows(r, r.inference)
    if r.nodes > 1:
        failover = "-" if r.failover_s is None else f"{r.failover_s:.2f} s"
        rows.insert(
            1,
            (
                "cluster",
                f"{r.nodes} kerna node processes on etcd; {r.killed} killed (SIGKILL) midway",
            ),
        )
        rows.append(
            (
                "failover",
                f"{failover} from the kill to the first reply a survivor "
                f"served for an agent {r.killed} hosted",
            )
        )
    return rows


def _inference_rows(r: DemoReport, n: InferenceCounts) -> list[tuple[str, str]]:
    """The cost and degradation story: what the cache and the batcher saved, what the
    breakers did (``_inference``)."""
    return [
        ("model", f"{_count(n.requests, 'scoring request')}: {n.saved_by_cache:,} saved by "
         f"the cache, {n.computed:,} computed in {_count(n.model_calls, 'model call')} "
         f"({n.saved_by_batching:,} saved by batching)"),
        ("degraded", f"{_count(r.degraded, 'document')} scored by the keyword filter "
         f"(sentiment shard down): {n.failed:,} failed, "
         f"{_count(n.breaker_openings, 'breaker opening')}, "
         f"{n.failed_fast:,} refused at once (CircuitOpen)"),
    ]  # fmt: skip


def _count(n: int, singular: str, plural: str | None = None) -> str:
    return f"{n:,} {singular if n == 1 else plural or singular + 's'}"


def _title(report: DemoReport) -> str:
    where = f", {report.nodes} nodes" if report.nodes > 1 else ""
    return f"kerna demo: {_count(report.docs, 'document')}, seed {report.seed}{where}"


_LATENCY_HEADER = ("latency since upload (ms)", "count", "p50", "p95", "p99", "max")


def _latency_rows(report: DemoReport) -> list[tuple[str, ...]]:
    """One row per stage; a stage no document reached shows dashes, not zeros."""
    return [
        (s.stage.replace("_", "-"), f"{s.count:,}",
         *((f"{ms:.2f}" for ms in (s.p50_ms, s.p95_ms, s.p99_ms, s.max_ms)) if s.count
           else ("-",) * 4))
        for s in report.latencies
    ]  # fmt: skip


def format_plain(report: DemoReport) -> str:
    """The summary as plain text (no rich needed)."""
    lines = [_title(report)]
    lines += [f"  {label:<14}{text}" for label, text in summary_rows(report)]
    lines.append("")
    table = [_LATENCY_HEADER, *_latency_rows(report)]
    widths = [max(len(row[i]) for row in table) for i in range(len(_LATENCY_HEADER))]
    for row in table:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  " + "  ".join(cells))
    if report.errors:
        lines.append("")
        lines += [f"  e.g. {text}" for text in report.errors[:3]]
    return "\n".join(lines) + "\n"


def print_rich(report: DemoReport) -> None:
    """Print the summary with rich (which must be installed)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(_title(report), style="bold", highlight=False)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for label, text in summary_rows(report):
        grid.add_row(label, text)
    console.print(grid)
    table = Table(*_LATENCY_HEADER[:1], show_edge=False)
    for name in _LATENCY_HEADER[1:]:
        table.add_column(name, justify="right")
    for row in _latency_rows(report):
        table.add_row(*row)
    console.print(table)
    for text in report.errors[:3]:
        console.print(f"  e.g. {text}", style="dim", markup=False, highlight=False, soft_wrap=True)
