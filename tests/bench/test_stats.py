"""Figures from outcomes: percentiles, ratios, and the goals of issue 7."""

from __future__ import annotations

import pytest

from modelserver.bench.outcome import Outcome
from modelserver.bench.report import goals, headline_ratios
from modelserver.bench.stats import percentile, ratio, summarize


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile(list(map(float, range(101))), 99) == pytest.approx(99.0)


def _ok(e2e: float, ttft: float | None = None, prompt: int = 100, cached: int = 0,
        worker: str = "a") -> Outcome:
    return Outcome(ok=True, e2e_s=e2e, ttft_s=ttft, prompt_tokens=prompt, cached_tokens=cached,
                   completion_tokens=10, worker=worker, streamed=ttft is not None)


def test_summary_counts_only_completed_requests_in_latency_and_hits() -> None:
    outcomes = [
        _ok(1.0, ttft=0.1, cached=50), _ok(2.0, cached=100, worker="b"),
        Outcome(ok=False, e2e_s=30.0, error="WorkerUnreachable: refused"),
    ]
    f = summarize("x", "ours", outcomes, duration_s=4.0, cpu_s=0.3, to_dead_worker=2)
    assert (f.requests, f.completed, f.failed, f.to_dead_worker) == (3, 2, 1, 2)
    assert f.completed_rps == pytest.approx(0.5)
    assert f.output_tok_s == pytest.approx(5.0)
    assert f.e2e_p50 == pytest.approx(1.5)
    assert f.ttft_p50 == pytest.approx(0.1)
    assert f.cache_hit_ratio == pytest.approx(150 / 200)
    assert f.cpu_ms_per_request == pytest.approx(100.0)
    assert f.per_worker == {"a": 1, "b": 1}
    assert f.errors == ["1 x WorkerUnreachable: refused"]


def test_ratio_is_none_without_both_sides() -> None:
    assert ratio(1.0, 2.0) == 0.5
    assert ratio(None, 2.0) is None and ratio(1.0, 0.0) is None


def _figures(name: str, p99: float, rps: float, hit: float, failed: int = 0) -> object:
    outcomes = [_ok(p99, prompt=100, cached=int(hit * 100))] * 10
    outcomes += [Outcome(ok=False, e2e_s=1.0)] * failed
    return summarize(name, name.split(":")[0], outcomes, duration_s=10 / rps, cpu_s=0.0,
                     to_dead_worker=0)


def test_goals_are_judged_on_the_named_contenders() -> None:
    figures = [
        _figures("ours:cache_aware", p99=1.0, rps=9.5, hit=0.8, failed=1),
        _figures("ours:round_robin", p99=3.0, rps=5.0, hit=0.2),
        _figures("sglang:cache_aware", p99=1.1, rps=9.0, hit=0.7),
        _figures("oracle", p99=0.9, rps=10.0, hit=0.9),
    ]
    by_goal = {g["goal"]: g for g in goals(figures, killed=True)}  # type: ignore[arg-type]
    assert by_goal["p99 e2e / SGLang router <= 0.8"]["met"] is False
    assert by_goal["p99 e2e / round-robin <= 0.5"]["met"] is True
    assert by_goal["cache hit ratio - SGLang router's >= 0"]["met"] is True
    assert by_goal["failed requests with a worker killed == 0"]["met"] is False
    rows = {r["against"]: r for r in headline_ratios(figures)}  # type: ignore[arg-type]
    assert rows["ours:round_robin"]["p99_e2e"] == pytest.approx(1 / 3)
    assert "ours:cache_aware" not in rows


def test_headline_and_goals_read_against_the_best_smg_policy_of_the_run() -> None:
    figures = [
        _figures("ours:cache_aware", p99=1.0, rps=9.0, hit=0.8),
        _figures("smg:cache_aware", p99=2.0, rps=8.0, hit=0.9),
        _figures("smg:least_load", p99=1.5, rps=10.0, hit=0.5),
        _figures("sglang:cache_aware", p99=0.5, rps=20.0, hit=0.9),
    ]
    rows = headline_ratios(figures)  # type: ignore[arg-type]
    assert rows[0]["against"] == "best smg (smg:least_load)"
    assert rows[0]["throughput"] == pytest.approx(0.9)
    by_goal = {g["goal"]: g for g in goals(figures, killed=False)}  # type: ignore[arg-type]
    assert by_goal["p99 e2e / best smg policy <= 0.8"]["value"] == pytest.approx(1 / 1.5)
    assert by_goal["cache hit ratio - best smg policy's >= 0"]["met"] is True


def test_goals_without_the_peers_are_not_measurable() -> None:
    only = [_figures("ours:cache_aware", p99=1.0, rps=1.0, hit=0.5)]
    assert all(g["met"] is None for g in goals(only, killed=False))  # type: ignore[arg-type]
