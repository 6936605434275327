"""``kerna demo``: every document accounted for, failures as the seed predicts, CLI contract.

The numbers checked here are counts, never timings: which documents fail, and how,
follows from the seed (``fault_plan``); only the latencies vary between runs. The
report's failures are checked against the faults the documents' text carries, not
against the plan its own ``injected_*`` counts are taken from.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections import Counter
from typing import Any

import msgspec
import pytest

from kerna import ConfigError, __version__
from kerna._cli import main
from kerna.demo import (
    BREAKER_FAILURES,
    SENTIMENT_SHARDS,
    DemoReport,
    down_shard,
    fault_plan,
    format_plain,
    keywords,
    make_corpus,
    phrase,
    run_cluster_demo,
    run_demo,
    summary_rows,
)
from kerna.testing import require_module

DOCS = 500
SEED = 7
CORRUPT_RATE, STALL_RATE = 0.02, 0.01  # enough faults of each kind in 500 docs
EXAMPLE = re.compile(
    r"doc (?P<doc>\d+): (?P<path>choreography|orchestration), (?P<step>\w+): "
    r"(?P<error>\w+): (?P<text>.+)"
)
"""An example failure: the document, the path and step it failed in, the error's type
(its class name, the same way for every kind of failure) and its text."""


@pytest.fixture(scope="module")
def report() -> DemoReport:
    return run_demo(
        DOCS,
        seed=SEED,
        step_timeout=1.0,  # generous: only the stalled documents may time out
        corrupt_rate=CORRUPT_RATE,
        stall_rate=STALL_RATE,
    )


@pytest.fixture(scope="module")
def carried() -> dict[int, str]:
    """The fault each document carries, read from the text the demo is fed (not taken
    from ``fault_plan``, which the report's ``injected_*`` counts come from): NUL bytes
    corrupt a document, a cold tier stalls it."""
    return {
        doc_id: "corrupt" if "\x00" in body else "stall" if 'tier="cold"' in body else ""
        for doc_id, body in make_corpus(DOCS, SEED, CORRUPT_RATE, STALL_RATE)
    }


def test_every_document_is_accounted_for(report: DemoReport) -> None:
    assert report.docs == DOCS
    assert report.lost == 0
    assert report.completed + report.failed == DOCS
    assert report.aggregated + report.choreography_failed == DOCS


def test_failures_are_the_injected_ones(report: DemoReport, carried: dict[int, str]) -> None:
    faults = Counter(carried.values())
    corrupt, stalled = faults["corrupt"], faults["stall"]
    assert corrupt > 0
    assert stalled > 0
    assert (report.injected_corrupt, report.injected_stalls) == (corrupt, stalled)
    # A corrupted document fails its Classifier (no asker: a dead letter) and its
    # Summarizer (the Orchestrator gets a RemoteError); a stalled one times out.
    assert report.choreography_failed == corrupt
    assert report.dead_letters == corrupt
    assert report.orchestration_errors == corrupt
    assert report.orchestration_timeouts == stalled
    assert report.failed == corrupt + stalled
    assert report.handler_failures >= 2 * corrupt
    # one example per kind, each naming a document that carries that fault
    examples = {}
    for text in report.errors:
        found = EXAMPLE.match(text)
        assert found, text
        examples[found["path"], found["step"], found["error"]] = carried[int(found["doc"])]
    assert examples == {
        ("choreography", "classify", "CorruptDocument"): "corrupt",
        ("orchestration", "summarize", "CorruptDocument"): "corrupt",
        ("orchestration", "index", "AskTimeout"): "stall",
    }


def test_orchestrated_path_answered_every_document(report: DemoReport) -> None:
    answered = report.orchestrated + report.orchestration_errors + report.orchestration_timeouts
    assert answered == DOCS
    assert report.orchestrated == DOCS - report.failed


def test_messages_and_rates(report: DemoReport) -> None:
    assert report.messages > DOCS * 5
    assert report.wall_s > 0
    assert report.msgs_per_s == pytest.approx(report.messages / report.wall_s)
    assert report.loop == "asyncio, virtual clock"  # run_demo's default


def test_latency_percentiles_are_ordered(report: DemoReport) -> None:
    stages = {s.stage: s for s in report.latencies}
    # The orchestrated path's answer is what ends a document (its asks run in sequence,
    # the choreographed stages side by side), so it is the end-to-end row: a separate
    # "orchestrated" row would repeat it, number for number.
    assert list(stages) == ["extract", "entities", "classify", "aggregate", "end_to_end"]
    for s in report.latencies:
        assert 0 <= s.p50_ms <= s.p95_ms <= s.p99_ms <= s.max_ms, s
    assert stages["extract"].count == DOCS
    assert stages["classify"].count == DOCS - report.choreography_failed
    assert stages["aggregate"].count == report.aggregated
    assert stages["end_to_end"].count == report.completed
    assert stages["aggregate"].p50_ms <= stages["end_to_end"].max_ms


def test_the_corpus_follows_the_seed() -> None:
    assert make_corpus(50, seed=1) == make_corpus(50, seed=1)
    assert make_corpus(50, seed=1) != make_corpus(50, seed=2)
    plan = fault_plan(2000, seed=1, corrupt_rate=0.1, stall_rate=0.1)
    corpus = make_corpus(2000, seed=1, corrupt_rate=0.1, stall_rate=0.1)
    for fault, (_, body) in zip(plan, corpus, strict=True):
        assert ("\x00" in body) == (fault == "corrupt")
        assert ('tier="cold"' in body) == (fault == "stall")


def test_run_demo_without_faults_completes_everything() -> None:
    report = run_demo(100, seed=3, loop="asyncio", corrupt_rate=0.0, stall_rate=0.0)
    assert report.completed == 100
    assert report.failed == report.dead_letters == 0
    # The corpus has no faults, but one sentiment shard is still down: its failures
    # (until its breaker opened) are the only failed handlings, and nothing failed.
    assert report.handler_failures == BREAKER_FAILURES
    assert report.errors == ()


def test_run_demo_on_uvloop() -> None:
    require_module("uvloop", "pip install 'kerna[uvloop]'")
    report = run_demo(50, loop="uvloop")
    assert report.loop.startswith("uvloop ")
    assert report.completed + report.failed == 50


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"docs": 0}, "docs must be an int >= 1"),
        ({"docs": 10, "concurrency": 0}, "concurrency must be an int >= 1"),
        ({"docs": 10, "step_timeout": 0.0}, "step_timeout must be a positive number"),
        ({"docs": 10, "step_timeout": math.inf}, "step_timeout must be a positive number"),
        ({"docs": 10, "settle_timeout": -1.0}, "settle_timeout must be a positive number"),
        ({"docs": 10, "corrupt_rate": 1.5}, "corrupt_rate must be between 0 and 1"),
        ({"docs": 10, "stall_rate": -0.1}, "stall_rate must be between 0 and 1"),
        ({"docs": 10, "stall_rate": math.nan}, "stall_rate must be between 0 and 1"),
    ],
)
def test_run_demo_rejects_out_of_range_arguments(kwargs: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        run_demo(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"docs": "10"}, "docs must be an int, got str"),
        ({"docs": True}, "docs must be an int, got bool"),
        ({"docs": 10, "concurrency": 2.0}, "concurrency must be an int, got float"),
        ({"docs": 10, "seed": "1"}, "seed must be an int, got str"),
        ({"docs": 10, "step_timeout": "1"}, "step_timeout must be a number of seconds, got str"),
        ({"docs": 10, "corrupt_rate": "0.1"}, "corrupt_rate must be a number, got str"),
        ({"docs": 10, "stall_rate": None}, "stall_rate must be a number, got NoneType"),
    ],
)
def test_run_demo_rejects_arguments_of_the_wrong_type(kwargs: dict[str, Any], error: str) -> None:
    with pytest.raises(TypeError, match=error):
        run_demo(**kwargs)


def test_every_document_can_carry_a_fault() -> None:
    """The rates are independent: ``stall_rate`` is the fraction of the documents that
    reach indexing (the intact ones; a corrupted one fails before), so any two rates
    between 0 and 1 make a plan."""
    assert fault_plan(20, corrupt_rate=1.0, stall_rate=1.0) == ["corrupt"] * 20
    assert fault_plan(20, corrupt_rate=0.0, stall_rate=1.0) == ["stall"] * 20
    faults = Counter(fault_plan(4000, seed=2, corrupt_rate=0.5, stall_rate=0.5))
    assert 1850 < faults["corrupt"] < 2150  # about half of them (binomial sd ~32)
    assert 850 < faults["stall"] < 1150  # about half of the other half (sd ~27)
    report = run_demo(1, loop="asyncio", corrupt_rate=1.0)
    assert (report.failed, report.injected_corrupt, report.injected_stalls) == (1, 1, 0)


def test_run_demo_rejects_an_unknown_loop() -> None:
    with pytest.raises(ConfigError, match="loop must be one of"):
        run_demo(10, loop="trio")


# -- the command line ----------------------------------------------------------------------


def test_console_script_runs_the_demo() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kerna", "demo", "--docs", "200", "--loop", "asyncio"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "200 uploaded" in out
    for word in ("completed", "failed", "msgs/s", "p50", "p95", "p99", "end-to-end", "asyncio"):
        assert word in out, (word, out)


@pytest.mark.parametrize(
    ("argv", "argument"),
    [
        (["demo", "--docs", "-5"], "--docs"),
        (["demo", "--docs", "abc"], "--docs"),
        (["demo", "--docs", "0"], "--docs"),
        (["demo", "--docs", "1.5"], "--docs"),
        (["demo", "--seed", "x"], "--seed"),
        (["demo", "--seed", "1.5"], "--seed"),
        (["demo", "--loop", "trio"], "--loop"),
        (["demo", "--concurrency", "0"], "--concurrency"),
        (["demo", "--concurrency", "many"], "--concurrency"),
        (["demo", "--step-timeout", "0"], "--step-timeout"),
        (["demo", "--step-timeout", "-1"], "--step-timeout"),
        (["demo", "--step-timeout", "inf"], "--step-timeout"),
        (["demo", "--step-timeout", "nan"], "--step-timeout"),
        (["demo", "--step-timeout", "soon"], "--step-timeout"),
        (["demo", "--corrupt-rate", "2"], "--corrupt-rate"),
        (["demo", "--corrupt-rate", "-0.1"], "--corrupt-rate"),
        (["demo", "--corrupt-rate", "nan"], "--corrupt-rate"),
        (["demo", "--corrupt-rate", "1%"], "--corrupt-rate"),
        (["demo", "--stall-rate", "1.01"], "--stall-rate"),
        (["demo", "--stall-rate", "nan"], "--stall-rate"),
        (["demo", "--stall-rate", "x"], "--stall-rate"),
        (["demo", "--bogus"], "--bogus"),
        (["bogus"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_naming_the_argument(
    argv: list[str], argument: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc_info:
        main(argv)
    assert exc_info.value.code == 2
    err = capsys.readouterr().err
    assert "error: " in err
    assert argument in err
    others = {"--docs", "--seed", "--loop", "--concurrency", "--step-timeout"}
    others |= {"--corrupt-rate", "--stall-rate"}
    for other in others - {argument}:  # the flag at fault, and no other, is blamed
        assert f"argument {other}" not in err, err


@pytest.mark.parametrize(
    ("docs", "corrupt_rate", "stall_rate"),
    [(1, "1", None), (12, "0.6", "0.6"), (6, "0", "1"), (6, "1", "1")],
)
def test_any_two_rates_are_accepted(
    docs: int, corrupt_rate: str, stall_rate: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["demo", "--docs", str(docs), "--corrupt-rate", corrupt_rate]
    argv += [] if stall_rate is None else ["--stall-rate", stall_rate]
    assert main([*argv, "--step-timeout", "0.05", "--loop", "asyncio", "--plain"]) == 0
    plan = Counter(fault_plan(docs, 0, float(corrupt_rate), float(stall_rate or 0.001)))
    failed = plan["corrupt"] + plan["stall"]
    out = capsys.readouterr().out
    assert f"{docs} uploaded: {docs - failed} completed, {failed} failed" in out
    assert f"injected: {plan['corrupt']} corrupted, {plan['stall']} stalled" in out
    if (docs, corrupt_rate) == (1, "1"):  # one document, and no stage it did not reach
        assert "kerna demo: 1 document, seed 0" in out
        assert "  failures      1 document; " in out
        assert re.search(r"\n  classify +0 +- +- +- +-\n", out), out


def test_bad_arguments_in_a_subprocess() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kerna", "demo", "--docs", "-5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "argument --docs" in proc.stderr


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "usage: kerna" in out
    assert "demo" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc_info:
        main(["--version"])
    assert exc_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"kerna {__version__}"


def test_plain_output_without_rich(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [m for m in sys.modules if m == "rich" or m.startswith("rich.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "rich", None)  # `import rich` now raises ImportError
    assert main(["demo", "--docs", "60", "--loop", "asyncio", "--stall-rate", "0"]) == 0
    captured = capsys.readouterr()
    assert "latency since upload (ms)" in captured.out
    assert "60 uploaded" in captured.out
    assert "documents 60/60 (100%)" in captured.err  # the plain progress line


def test_the_cluster_demo_refuses_the_virtual_clock(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc_info:
        main(["demo", "--nodes", "3", "--loop", "virtual"])
    assert exc_info.value.code == 2
    assert "argument --loop: virtual runs in process only" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="not virtual"):
        run_cluster_demo(10, loop="virtual")


def test_missing_uvloop(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` now raises ImportError
    with pytest.raises(SystemExit) as exc_info:
        main(["demo", "--docs", "10", "--loop", "uvloop"])
    assert exc_info.value.code == 2
    assert "argument --loop: uvloop is not installed" in capsys.readouterr().err
    assert run_demo(10, loop="auto").loop == "asyncio"


def test_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--docs", "40", "--json", "--plain", "--seed", "5", "--stall-rate", "0"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["docs"] == 40
    assert data["seed"] == 5
    assert data["completed"] + data["failed"] == 40


def test_format_plain_lists_every_stage(report: DemoReport) -> None:
    text = format_plain(report)
    for stage in ("extract", "entities", "classify", "aggregate", "end-to-end"):
        assert f"\n  {stage} " in text
    assert "\n  orchestrated " not in text
    assert f"{report.orchestration_errors} failed (RemoteError)" in text
    assert f"{report.orchestration_timeouts} timed out (AskTimeout)" in text
    assert f"{report.choreography_failed} failed a stage (DeadLetter)" in text
    examples = [line for line in text.splitlines() if line.startswith("  e.g. ")]
    assert len(examples) == 3
    for line in examples:
        assert EXAMPLE.match(line.removeprefix("  e.g. ")), line


def test_timeouts_print_the_step_timeout_as_given() -> None:
    report = run_demo(
        8, loop="asyncio", step_timeout=0.25, corrupt_rate=0.0, stall_rate=1.0, concurrency=8
    )
    assert report.orchestration_timeouts == 8
    (example,) = report.errors
    assert example.endswith(" in 0.25s"), example  # not 0.249999s
    found = EXAMPLE.match(example)
    assert found, example
    assert found.group("path", "step", "error") == ("orchestration", "index", "AskTimeout")


# -- the cost and degradation story (kerna.demo._inference) ---------------------------


def _sentiment_docs(carried: dict[int, str]) -> tuple[list[int], list[int]]:
    """The documents that reach a Sentiment shard (every one whose summary succeeded),
    split into those on the healthy shards and those on the seed's down shard."""
    down = SENTIMENT_SHARDS.index(down_shard(SEED))
    reached = [doc for doc, fault in carried.items() if fault != "corrupt"]
    healthy = [doc for doc in reached if doc % len(SENTIMENT_SHARDS) != down]
    return healthy, [doc for doc in reached if doc % len(SENTIMENT_SHARDS) == down]


def test_the_down_shard_opens_its_breaker_once_and_degrades_its_documents(
    report: DemoReport, carried: dict[int, str]
) -> None:
    _, on_down_shard = _sentiment_docs(carried)
    counts = report.inference
    assert counts is not None
    assert len(on_down_shard) > BREAKER_FAILURES
    # One call at a time per shard: exactly BREAKER_FAILURES calls fail, the breaker
    # opens once and refuses every later call; each one is answered by the fallback.
    assert counts.failed == BREAKER_FAILURES
    assert counts.breaker_openings == 1
    assert counts.failed_fast == len(on_down_shard) - BREAKER_FAILURES
    assert counts.fallbacks == len(on_down_shard)
    assert report.degraded == len(on_down_shard)
    # Degraded is not failed: those documents still completed.
    assert report.failed == report.injected_corrupt + report.injected_stalls


def test_the_cache_computes_each_distinct_phrase_once(
    report: DemoReport, carried: dict[int, str]
) -> None:
    healthy, _ = _sentiment_docs(carried)
    bodies = dict(make_corpus(DOCS, SEED, CORRUPT_RATE, STALL_RATE))
    phrases = [phrase(" ".join(keywords(doc, bodies[doc]))) for doc in healthy]
    counts = report.inference
    assert counts is not None
    assert counts.requests == len(phrases)
    assert counts.computed == len(set(phrases))
    assert counts.saved_by_cache == len(phrases) - len(set(phrases)) > 0


def test_batching_makes_fewer_model_calls_than_items(report: DemoReport) -> None:
    counts = report.inference
    assert counts is not None
    # How many asks share a call is up to timing; at most 64 do (max_size).
    assert math.ceil(counts.computed / 64) <= counts.model_calls < counts.computed
    assert counts.saved_by_batching == counts.computed - counts.model_calls


def test_the_summary_shows_the_cost_and_degradation_lines(report: DemoReport) -> None:
    text = format_plain(report)
    counts = report.inference
    assert counts is not None
    assert (
        f"  model         {counts.requests:,} scoring requests: {counts.saved_by_cache:,} "
        f"saved by the cache, {counts.computed:,} computed in {counts.model_calls:,} model "
        f"calls ({counts.saved_by_batching:,} saved by batching)\n"
    ) in text
    assert (
        f"  degraded      {report.degraded:,} documents scored by the keyword filter "
        f"(sentiment shard down): {BREAKER_FAILURES} failed, 1 breaker opening, "
        f"{counts.failed_fast:,} refused at once (CircuitOpen)\n"
    ) in text


def _counts_only(report: DemoReport) -> dict[str, Any]:
    """The report without what real time decides: wall time, rates, latencies. Every
    count stays, the model calls and what batching saved too: the batch window and the
    model's cost run on the demo's virtual clock."""
    data = msgspec.to_builtins(report)
    for timing in ("wall_s", "msgs_per_s", "latencies"):
        del data[timing]
    return data


def test_a_second_run_gives_the_same_counts(report: DemoReport) -> None:
    again = run_demo(
        DOCS,
        seed=SEED,
        step_timeout=1.0,
        corrupt_rate=CORRUPT_RATE,
        stall_rate=STALL_RATE,
    )
    assert again.inference is not None
    assert report.inference is not None
    assert again.inference.model_calls == report.inference.model_calls
    assert _counts_only(again) == _counts_only(report)
    assert dict(summary_rows(again))["model"] == dict(summary_rows(report))["model"]


def _cli_counts(seed: int, hash_seed: str) -> dict[str, Any]:
    """``kerna demo --json`` in a fresh process (its own string hash seed), counts only."""
    done = subprocess.run(
        [sys.executable, "-m", "kerna", "demo", "--docs", "3000", "--seed", str(seed), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONHASHSEED": hash_seed},
        check=True,
    )
    return _counts_only(msgspec.json.decode(done.stdout, type=DemoReport))


def test_the_cli_reports_the_same_counts_model_calls_included_in_every_process() -> None:
    first, second = _cli_counts(11, "1"), _cli_counts(11, "2")
    assert first["inference"]["model_calls"] == second["inference"]["model_calls"]
    assert first == second
    # batching did save calls, and a model call carried more than one ask
    assert 0 < first["inference"]["model_calls"] < first["inference"]["computed"]
