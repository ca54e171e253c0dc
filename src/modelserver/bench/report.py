"""The report of a run: `report.json`, a table on the terminal, and the headline ratios.

The headline compares our cache-aware policy (the default policy; `HEADLINE`) with each
other contender, as ratios: a ratio says more than an absolute time measured on simulated
engines on a shared machine. Its first row is the best policy of SGLang's gateway today
(`smg`) in this run, the one with the most completed requests per second; the goals of
issue 7 are checked against it (against the older `sglang:cache_aware` when no `smg`
contender ran).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from modelserver._files import atomic_write_json
from modelserver.bench.runner import BenchResult
from modelserver.bench.stats import ContenderFigures, ratio

HEADLINE = "ours:cache_aware"
SCHEMA = "modelserver-bench/1"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def best_smg(figures: list[ContenderFigures]) -> ContenderFigures | None:
    """The `smg` policy with the most completed requests per second (then the lower p99)."""
    ran = [f for f in figures if f.skipped is None and f.family == "smg"]
    if not ran:
        return None
    return max(ran, key=lambda f: (f.completed_rps, -(f.e2e_p99 or float("inf"))))


def headline_ratios(figures: list[ContenderFigures]) -> list[dict[str, Any]]:
    """Ours (cache-aware) against the best smg policy, then each other contender that ran."""
    by_name = {f.name: f for f in figures if f.skipped is None}
    ours = by_name.get(HEADLINE)
    if ours is None:
        return []
    best = best_smg(figures)
    against = [(f"best smg ({best.name})", best)] if best is not None else []
    against += [(other.name, other) for other in by_name.values() if other.name != HEADLINE]
    rows = []
    for label, other in against:
        rows.append({
            "against": label,
            "p99_e2e": ratio(ours.e2e_p99, other.e2e_p99),
            "p99_ttft": ratio(ours.ttft_p99, other.ttft_p99),
            "throughput": ratio(ours.completed_rps, other.completed_rps),
            "output_tok_s": ratio(ours.output_tok_s, other.output_tok_s),
            "cache_hit": {"ours": ours.cache_hit_ratio, "theirs": other.cache_hit_ratio},
            "cpu_per_request": ratio(ours.cpu_ms_per_request, other.cpu_ms_per_request),
            "failed": {"ours": ours.failed, "theirs": other.failed},
        })
    return rows


def goals(figures: list[ContenderFigures], killed: bool) -> list[dict[str, Any]]:
    """Issue 7's goals, each with the figures it is judged on; `met` None = not measurable
    in this run (a contender missing, or no kill planned)."""
    by_name = {f.name: f for f in figures if f.skipped is None}
    ours = by_name.get(HEADLINE)
    sg = best_smg(figures) or by_name.get("sglang:cache_aware")
    peer = "best smg policy" if sg is not None and sg.family == "smg" else "SGLang router"
    rr = by_name.get("ours:round_robin")
    oracle = by_name.get("oracle")

    def check(name: str, value: float | None, bound: float, below: bool) -> dict[str, Any]:
        met = None if value is None else (value <= bound if below else value >= bound)
        return {"goal": name, "value": value, "bound": bound, "met": met}

    out = [
        check(f"p99 e2e / {peer} <= 0.8",
              ratio(ours.e2e_p99, sg.e2e_p99) if ours and sg else None, 0.8, True),
        check("p99 e2e / round-robin <= 0.5",
              ratio(ours.e2e_p99, rr.e2e_p99) if ours and rr else None, 0.5, True),
        check(f"cache hit ratio - {peer}'s >= 0",
              (ours.cache_hit_ratio - sg.cache_hit_ratio)
              if ours and sg and ours.cache_hit_ratio is not None
              and sg.cache_hit_ratio is not None else None, 0.0, False),
        check("goodput / oracle >= 0.9",
              ratio(ours.completed_rps, oracle.completed_rps) if ours and oracle else None,
              0.9, False),
    ]
    if killed:
        out.append(check("failed requests with a worker killed == 0",
                         float(ours.failed) if ours else None, 0.0, True))
    return out


def to_json(result: BenchResult) -> dict[str, Any]:
    figures = [run.figures for run in result.runs]
    killed = any(f["action"] == "kill" for run in result.runs for f in run.faults)
    return {
        "schema": SCHEMA,
        "started_at": result.started_at,
        "wall_s": result.wall_s,
        "machine": result.machine,
        "settings": result.settings,
        "workload": result.workload,
        "arrivals": result.arrivals,
        "fleet": result.fleet,
        "figures": [f.to_json() for f in figures],
        "headline": headline_ratios(figures),
        "goals": goals(figures, killed),
        "runs": [
            {
                "name": run.figures.name,
                "faults": run.faults,
                "samples": run.samples,
                "requests": [
                    {k: v for k, v in asdict(o).items() if k != "text"} for o in run.outcomes
                ],
            }
            for run in result.runs
        ],
    }


def write_json(report: dict[str, Any], out: Path) -> Path:
    path = out / "report.json"
    atomic_write_json(path, report, 0o644)
    return path


def figures_table(report: dict[str, Any]) -> Table:
    table = Table(title=f"{report['workload']['description']}; {report['arrivals']}")
    for column, justify in (
        ("contender", "left"), ("done", "right"), ("failed", "right"), ("to dead", "right"),
        ("req/s", "right"), ("out tok/s", "right"), ("TTFT p50/p90/p99 ms", "right"),
        ("e2e p50/p90/p99 ms", "right"), ("cache hit", "right"), ("CPU ms/req", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for f in report["figures"]:
        if f["skipped"]:
            table.add_row(f["name"], *["-"] * 8, f"skipped: {f['skipped']}")
            continue
        table.add_row(
            f["name"], f"{f['completed']}/{f['requests']}", str(f["failed"]),
            str(f["to_dead_worker"]), f"{f['completed_rps']:.2f}", f"{f['output_tok_s']:.0f}",
            "/".join(_ms(f[k]) for k in ("ttft_p50", "ttft_p90", "ttft_p99")),
            "/".join(_ms(f[k]) for k in ("e2e_p50", "e2e_p90", "e2e_p99")),
            _pct(f["cache_hit_ratio"]), f"{f['cpu_ms_per_request']:.1f}",
        )
    return table


def headline_table(report: dict[str, Any]) -> Table:
    table = Table(title=f"{HEADLINE} against each contender (ours / theirs)")
    for column in ("against", "p99 e2e", "p99 TTFT", "req/s", "cache hit ours/theirs",
                   "CPU/req", "failed ours/theirs"):
        table.add_column(column)
    for row in report["headline"]:
        hit = row["cache_hit"]
        table.add_row(
            row["against"], _x(row["p99_e2e"]), _x(row["p99_ttft"]), _x(row["throughput"]),
            f"{_pct(hit['ours'])} / {_pct(hit['theirs'])}", _x(row["cpu_per_request"]),
            f"{row['failed']['ours']} / {row['failed']['theirs']}",
        )
    return table


def goals_table(report: dict[str, Any]) -> Table:
    table = Table(title="goals (issue 7)")
    for column in ("goal", "value", "met"):
        table.add_column(column)
    for g in report["goals"]:
        value = "-" if g["value"] is None else f"{g['value']:.3f}"
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: "n/a"}[g["met"]]
        table.add_row(g["goal"], value, met)
    return table


def print_report(report: dict[str, Any], console: Console) -> None:
    console.print(figures_table(report))
    if report["headline"]:
        console.print(headline_table(report))
    console.print(goals_table(report))


def _cell(value: float | None, scale: float = 1.0, fmt: str = "{:.0f}") -> str:
    return "-" if value is None else fmt.format(value * scale)


def to_markdown(report: dict[str, Any]) -> str:
    """The figures, headline ratios and goals as Markdown tables (for docs/BENCHMARKS.md)."""
    lines = [
        f"Workload: {report['workload']['description']}; {report['arrivals']}.",
        "",
        "| contender | done | failed | to dead | req/s | out tok/s | TTFT p50 / p90 / p99 ms "
        "| e2e p50 / p90 / p99 ms | cache hit | client CPU ms/req |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for f in report["figures"]:
        if f["skipped"]:
            lines.append(f"| {f['name']} | skipped: {f['skipped']} |||||||||")
            continue
        ttft = " / ".join(_cell(f[k], 1000) for k in ("ttft_p50", "ttft_p90", "ttft_p99"))
        e2e = " / ".join(_cell(f[k], 1000) for k in ("e2e_p50", "e2e_p90", "e2e_p99"))
        lines.append(
            f"| {f['name']} | {f['completed']}/{f['requests']} | {f['failed']} "
            f"| {f['to_dead_worker']} | {f['completed_rps']:.2f} | {f['output_tok_s']:.0f} "
            f"| {ttft} | {e2e} | {_pct(f['cache_hit_ratio'])} "
            f"| {f['cpu_ms_per_request']:.1f} |"
        )
    if report["headline"]:
        lines += [
            "",
            f"{HEADLINE} / each contender:",
            "",
            "| against | p99 e2e | p99 TTFT | req/s | cache hit ours / theirs | CPU per request "
            "| failed ours / theirs |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in report["headline"]:
            hit = row["cache_hit"]
            lines.append(
                f"| {row['against']} | {_x(row['p99_e2e'])} | {_x(row['p99_ttft'])} "
                f"| {_x(row['throughput'])} | {_pct(hit['ours'])} / {_pct(hit['theirs'])} "
                f"| {_x(row['cpu_per_request'])} "
                f"| {row['failed']['ours']} / {row['failed']['theirs']} |"
            )
    lines += ["", "| goal (issue 7) | value | met |", "| --- | ---: | --- |"]
    for g in report["goals"]:
        met = {True: "yes", False: "**no**", None: "n/a"}[g["met"]]
        lines.append(f"| {g['goal']} | {_cell(g['value'], 1, '{:.3f}')} | {met} |")
    return "\n".join(lines) + "\n"


def write_markdown(report: dict[str, Any], out: Path) -> Path:
    path = out / "report.md"
    path.write_text(to_markdown(report))
    return path
