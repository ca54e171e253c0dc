"""The whole benchmark, small: every contender runs on real engine processes and the report
(JSON, table, PNGs) is well formed. Not a timing test: no figure is compared to a number."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from modelserver.bench import parse_engines, resolve_names, run_bench
from modelserver.bench.contenders import CONTENDERS, unavailable
from modelserver.bench.report import print_report
from modelserver.bench.runner import BenchSettings
from modelserver.sim import tokenizer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


async def test_every_contender_completes_a_tiny_run_and_the_report_is_well_formed(
    tmp_path: Path,
) -> None:
    names = list(CONTENDERS)
    settings = BenchSettings(
        workload="agent",
        contenders=names,
        requests=4,  # one agent session of four turns
        engines=parse_engines("1,1,0.5", speed=60.0, max_running=8),
        arrivals="closed:1",
        stream_share=0.5,
        faults=["slow:2@50%"],
        seed=3,
        out=tmp_path,
        attempt_timeout_s=30.0,
    )
    report = await run_bench(settings)

    figures = {f["name"]: f for f in report["figures"]}
    assert list(figures) == names
    for name, f in figures.items():
        reason = unavailable(name)
        if reason is not None:  # only when the peer's package cannot be imported
            assert f["skipped"] == reason
            continue
        assert f["skipped"] is None
        assert f["requests"] == 4 and f["completed"] == 4, (name, f["errors"])
        assert f["e2e_p50"] is not None and f["e2e_p50"] <= f["e2e_p99"]
        assert f["cache_hit_ratio"] is not None and 0 < f["cache_hit_ratio"] < 1, name
        assert f["cpu_ms_per_request"] > 0
    assert figures["ours:cache_aware"]["ttft_p50"] is not None

    runs = {r["name"]: r for r in report["runs"]}
    ran = [n for n in names if figures[n]["skipped"] is None]
    for name in ran:
        run = runs[name]
        assert [f["action"] for f in run["faults"]] == ["slow"]
        assert run["samples"] and {s["engine"] for s in run["samples"]} == {0, 1, 2}
        turns = [r for r in run["requests"] if r["ok"]]
        assert sorted(r["turn"] for r in turns) == [0, 1, 2, 3]
    # Later turns carry the earlier answers: each prompt is longer than the one before.
    prompts = [r["prompt_tokens"] for r in sorted(runs["ours:cache_aware"]["requests"],
                                                   key=lambda r: r["turn"])]
    assert prompts == sorted(prompts) and len(set(prompts)) == 4
    assert prompts[0] == len(tokenizer.apply_chat_template(
        [{"role": "user", "content": _first_turn(settings)}]))

    assert report["machine"]["nproc"] >= 1 and report["workload"]["requests"] == 4
    assert {g["goal"] for g in report["goals"]} >= {"goodput / oracle >= 0.9"}
    saved = (tmp_path / "report.json").read_bytes()
    assert saved.startswith(b"{") and b'"schema": "modelserver-bench/1"' in saved
    markdown = (tmp_path / "report.md").read_text()
    assert all(f"| {name} |" in markdown for name in ran)
    for png in ("latency.png", "load.png"):
        data = (tmp_path / png).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000

    console = Console(record=True, width=220)
    print_report(report, console)
    text = console.export_text()
    for name in ran:
        assert name in text
    assert "goals (issue 7)" in text


def _first_turn(settings: BenchSettings) -> str:
    from modelserver.bench.workloads import build_workload

    workload = build_workload(settings.workload, settings.requests, settings.seed, "llama-8b")
    return workload.sessions[0].turns[0]


def test_contender_names_in_the_smoke_cover_every_family() -> None:
    assert {n.split(":")[0] for n in resolve_names("all")} == {
        "ours", "seed", "smg", "sglang", "litellm", "oracle"}
