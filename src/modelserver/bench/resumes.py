"""Resume figures of a bench run, from its report.json: per contender, failed requests,
streams resumed, resumes, the wait a resume added (p50 / p99) and the tokens prefilled again.

    python -m modelserver.bench.resumes bench-results/kill/report.json
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson

from modelserver.bench.stats import percentile


def resume_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for run in report["runs"]:
        requests = run["requests"]
        gaps = [g for r in requests for g in r.get("resume_gaps_s") or ()]
        rows.append(
            {
                "contender": run["name"],
                "requests": len(requests),
                "streamed": sum(1 for r in requests if r.get("streamed")),
                "failed": sum(1 for r in requests if not r["ok"]),
                "streams_resumed": sum(1 for r in requests if r.get("resume_gaps_s")),
                "resumes": len(gaps),
                "gap_p50_ms": _ms(percentile(gaps, 50)),
                "gap_p99_ms": _ms(percentile(gaps, 99)),
                "prefilled_again": sum(r.get("prefilled_again") or 0 for r in requests),
            }
        )
    return rows


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def markdown(rows: list[dict[str, Any]]) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    lines = [
        "| contender | failed | streamed | streams resumed | resumes | wait added p50 / p99 ms"
        " | tokens prefilled again |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['contender']} | {row['failed']} | {row['streamed']} |"
            f" {row['streams_resumed']} | {row['resumes']} |"
            f" {ms(row['gap_p50_ms'])} / {ms(row['gap_p99_ms'])} | {row['prefilled_again']} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m modelserver.bench.resumes REPORT_JSON", file=sys.stderr)
        return 2
    report = orjson.loads(Path(argv[0]).read_bytes())
    print(markdown(resume_rows(report)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
