"""The demo's verdict, computed from recorded outcomes: what counts as a failure of the demo."""

from __future__ import annotations

import pytest

from modelserver.demo.summary import (
    PARAPHRASE,
    UNRELATED,
    KillReport,
    percentile,
    problems,
    summarize,
)
from modelserver.demo.workload import Outcome

KILLED = "http://127.0.0.1:9000"
OTHER = "http://127.0.0.1:9001"
NAMES = {KILLED: "llama-8b-0@local", OTHER: "llama-8b-1@local"}
MODELS = ("llama-8b",)


def ok(worker: str, op: str = "chat", latency: float = 0.1, prompt: int = 0,
       cached: int = 0) -> Outcome:
    return Outcome(1.0, "llama-8b", op, True, latency, worker, prompt, cached)  # type: ignore[arg-type]


def failed(worker: str | None, op: str) -> Outcome:
    return Outcome(2.0, "llama-8b", op, False, 0.5, worker, error="boom")  # type: ignore[arg-type]


def recovered() -> KillReport:
    return KillReport("llama-8b-0@local", KILLED, 10, 5.0, restarted_after_s=2.0, new_pid=11,
                      serving_again_after_s=4.0)


def test_percentile_interpolates_between_closest_ranks() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([float(v) for v in range(1, 101)], 90) == pytest.approx(90.1)


def test_a_clean_run_with_a_recovered_kill_has_no_problem() -> None:
    summary = summarize([ok(KILLED), ok(OTHER)], NAMES, seconds=10, restarts={}, kill=recovered())
    assert problems(summary, MODELS) == []
    assert summary.served == {"llama-8b-0@local": {"llama-8b": 1},
                              "llama-8b-1@local": {"llama-8b": 1}}


def test_a_stream_cut_by_the_kill_is_counted_but_a_failed_plain_request_breaks_the_demo() -> None:
    outcomes = [ok(OTHER), failed(KILLED, "stream"), failed(None, "chat")]
    summary = summarize(outcomes, NAMES, seconds=10, restarts={}, kill=recovered())
    assert (summary.failed, summary.streams_cut, summary.failed_plain) == (2, 1, 1)
    assert problems(summary, MODELS) == ["1 non-streamed requests failed"]


def test_a_stream_failing_on_a_worker_that_was_not_killed_breaks_the_demo() -> None:
    summary = summarize([ok(OTHER), failed(OTHER, "stream")], NAMES, seconds=10, restarts={},
                        kill=recovered())
    assert problems(summary, MODELS) == ["1 streams failed on workers that were not killed"]


def test_a_worker_not_restarted_or_a_model_never_answered_breaks_the_demo() -> None:
    not_back = KillReport("llama-8b-0@local", KILLED, 10, 5.0)
    summary = summarize([ok(OTHER)], NAMES, seconds=10, restarts={}, kill=not_back)
    assert problems(summary, ("llama-8b", "minilm")) == [
        "no request to minilm succeeded", "the supervisor did not restart llama-8b-0@local",
    ]


def test_cache_ratio_and_latency_rows_come_from_successful_requests() -> None:
    outcomes = [ok(OTHER, prompt=1000, cached=900, latency=0.2),
                ok(OTHER, prompt=1000, cached=0, latency=0.4), failed(OTHER, "chat")]
    summary = summarize(outcomes, NAMES, seconds=10, restarts={}, kill=None)
    assert summary.cache == {"llama-8b": (2000, 900)}
    [row] = summary.rows
    assert (row.ok, row.failed) == (2, 1)
    assert row.p50_ms == pytest.approx(300.0)


def test_real_embeddings_that_miss_a_paraphrase_break_the_demo() -> None:
    summary = summarize([ok(OTHER)], NAMES, seconds=10, restarts={}, kill=None)
    summary.similarity = {PARAPHRASE: 0.81, UNRELATED: 0.12}
    assert problems(summary, MODELS) == []
    summary.similarity = {PARAPHRASE: 0.30, UNRELATED: 0.30}
    assert problems(summary, MODELS) == [
        "the real embeddings put a paraphrase no closer than an unrelated sentence"
        " (cosine 0.30 vs 0.30)"
    ]
