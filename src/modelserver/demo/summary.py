"""What the demo showed, in numbers: computed from the recorded outcomes (pure), then drawn.

`summarize` turns the outcomes and what happened to the killed worker into a `Summary`;
`problems` lists what makes the run a failure (the exit status says so); `render` draws it
for people, `to_json` writes it for programs (`summary.json` in the run folder).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from modelserver.demo.workload import Outcome


@dataclass(frozen=True)
class KillReport:
    """The worker the demo killed, and how the fleet coped."""

    worker: str
    url: str
    pid: int
    at_s: float
    """Seconds into the workload."""
    restarted_after_s: float | None = None
    """From the kill until the supervisor had it ready again (state file)."""
    new_pid: int | None = None
    serving_again_after_s: float | None = None
    """From the kill until it answered a request again (back in the router's rotation)."""
    moved: int = 0
    """Attempts that failed on it and were sent to another worker by the router."""


@dataclass(frozen=True)
class LatencyRow:
    model: str
    op: str
    ok: int
    failed: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None


@dataclass
class Summary:
    seconds: float
    rows: list[LatencyRow]
    ok: int
    failed: int
    failed_plain: int
    """Failed requests that were not streams: the router should have hidden every one."""
    streams_cut: int
    """Streams that were cut when their worker was killed (after the first token, a stream
    cannot move to another worker)."""
    cache: dict[str, tuple[int, int]]
    """model -> (prompt tokens, of which cached), from the engines' usage reports."""
    served: dict[str, dict[str, int]]
    """worker name -> model -> answered requests."""
    restarts: dict[str, int]
    kill: KillReport | None
    failures: list[Outcome] = field(default_factory=list)
    """The first few failed requests, as they were recorded."""
    similarity: dict[str, float] = field(default_factory=dict)
    """Cosine similarities of real MiniLM embeddings, fetched through the gateway."""
    processes_checked: int = 0
    left_running: list[int] = field(default_factory=list)


PARAPHRASE = "cat~kitten (paraphrase)"
UNRELATED = "cat~stocks (unrelated)"
"""The `similarity` entries: a sentence against its paraphrase, and against an unrelated one."""


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation between closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(
    outcomes: Sequence[Outcome],
    names: Mapping[str, str],
    *,
    seconds: float,
    restarts: Mapping[str, int],
    kill: KillReport | None,
) -> Summary:
    """`names` maps worker URL -> worker name."""
    groups: dict[tuple[str, str], list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        groups[(outcome.model, outcome.op)].append(outcome)
    rows = []
    for (model, op), items in sorted(groups.items()):
        times = [o.latency_s * 1000 for o in items if o.ok]
        rows.append(LatencyRow(
            model, op, len(times), len(items) - len(times),
            percentile(times, 50), percentile(times, 90), percentile(times, 99),
        ))
    failed = [o for o in outcomes if not o.ok]
    cut = [o for o in failed if o.op == "stream" and kill is not None and o.worker == kill.url]
    cache: dict[str, tuple[int, int]] = {}
    for outcome in outcomes:
        if outcome.ok and outcome.prompt_tokens:
            prompt, cached = cache.get(outcome.model, (0, 0))
            cache[outcome.model] = (prompt + outcome.prompt_tokens, cached + outcome.cached_tokens)
    served: dict[str, Counter[str]] = defaultdict(Counter)
    for outcome in outcomes:
        if outcome.ok:
            name = names.get(outcome.worker or "", outcome.worker or "?")
            served[name][outcome.model] += 1
    return Summary(
        seconds=seconds,
        rows=rows,
        ok=len(outcomes) - len(failed),
        failed=len(failed),
        failed_plain=sum(1 for o in failed if o.op != "stream"),
        streams_cut=len(cut),
        cache=cache,
        served={name: dict(counts) for name, counts in sorted(served.items())},
        restarts=dict(restarts),
        kill=kill,
        failures=failed[:5],
    )


def problems(summary: Summary, models: Iterable[str]) -> list[str]:
    """What went wrong in the demo itself; empty when it showed what it should."""
    found = []
    if summary.failed_plain:
        found.append(f"{summary.failed_plain} non-streamed requests failed")
    other_streams = summary.failed - summary.failed_plain - summary.streams_cut
    if other_streams:
        found.append(f"{other_streams} streams failed on workers that were not killed")
    answered = {row.model for row in summary.rows if row.ok}
    for model in models:
        if model not in answered:
            found.append(f"no request to {model} succeeded")
    if summary.kill is not None:
        if summary.kill.restarted_after_s is None:
            found.append(f"the supervisor did not restart {summary.kill.worker}")
        elif summary.kill.serving_again_after_s is None:
            found.append(f"{summary.kill.worker} did not serve again after its restart")
    paraphrase, unrelated = summary.similarity.get(PARAPHRASE), summary.similarity.get(UNRELATED)
    if paraphrase is not None and unrelated is not None and not paraphrase > unrelated:
        found.append(
            f"the real embeddings put a paraphrase no closer than an unrelated sentence"
            f" (cosine {paraphrase:.2f} vs {unrelated:.2f})"
        )
    if summary.left_running:
        found.append(f"processes still ran after down (killed now): {summary.left_running}")
    return found


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def render(summary: Summary, broken: Sequence[str]) -> RenderableType:
    parts: list[RenderableType] = [Text(f"Summary of {summary.seconds:.0f} s of traffic through "
                                        "the gateway", style="bold")]
    totals = Text(f"{summary.ok + summary.failed} requests: {summary.ok} answered, ")
    totals.append(f"{summary.failed_plain} non-streamed failed",
                  style="red bold" if summary.failed_plain else "green")
    totals.append(f", {summary.streams_cut} streams cut by the kill")
    parts.append(totals)

    latency = Table(
        title="latency seen by the clients (ms, retries included)", title_justify="left"
    )
    for column in ("model", "request", "answered", "failed", "p50", "p90", "p99"):
        latency.add_column(column, justify="left" if column in ("model", "request") else "right")
    for row in summary.rows:
        latency.add_row(row.model, row.op, str(row.ok),
                        Text(str(row.failed), style="red" if row.failed else ""),
                        _ms(row.p50_ms), _ms(row.p90_ms), _ms(row.p99_ms))
    parts.append(latency)

    if summary.cache:
        cache = Table(title="prefix cache (the engines' cached_tokens)", title_justify="left")
        for column in ("model", "prompt tokens", "cached", "hit ratio"):
            cache.add_column(column, justify="left" if column == "model" else "right")
        for model, (prompt, cached) in sorted(summary.cache.items()):
            cache.add_row(model, f"{prompt:,}", f"{cached:,}", f"{cached / prompt:.0%}")
        parts.append(cache)

    models = sorted({m for counts in summary.served.values() for m in counts})
    served = Table(title="who served what (answered requests)", title_justify="left")
    served.add_column("worker")
    for model in models:
        served.add_column(model, justify="right")
    served.add_column("restarts", justify="right")
    for name, counts in summary.served.items():
        restarts = summary.restarts.get(name, 0)
        served.add_row(name, *(str(counts.get(m, "")) for m in models),
                       Text(str(restarts), style="yellow" if restarts else ""))
    parts.append(served)

    kill = summary.kill
    if kill is not None:
        attempts = "attempt" if kill.moved == 1 else "attempts"
        story = Text(
            f"{kill.worker} (pid {kill.pid}) was killed with SIGKILL {kill.at_s:.1f} s into "
            f"the traffic. The router retried {kill.moved} failed {attempts} on other workers; "
        )
        if kill.restarted_after_s is not None:
            story.append(f"the supervisor restarted it as pid {kill.new_pid} in "
                         f"{kill.restarted_after_s:.1f} s", style="green")
        else:
            story.append("the supervisor did not restart it", style="red bold")
        if kill.serving_again_after_s is not None:
            story.append(f"; it answered again {kill.serving_again_after_s:.1f} s after the kill.")
        parts.append(story)
    if summary.similarity:
        shown = ", ".join(f"{k}: {v:.2f}" for k, v in summary.similarity.items())
        parts.append(Text(f"real MiniLM embeddings (cosine): {shown}"))
    for failure in summary.failures:
        parts.append(Text(f"failed: {failure.model} {failure.op} at {failure.at:.1f} s on "
                          f"{failure.worker or '?'}: {failure.error}", style="red"))
    if summary.processes_checked:
        left = (f"{len(summary.left_running)} were still running" if summary.left_running
                else "none left running")
        parts.append(Text(f"stopped: {summary.processes_checked} processes checked, {left}"))
    if broken:
        parts.append(Text("THE DEMO FAILED: " + "; ".join(broken), style="red bold"))
    else:
        parts.append(Text("demo complete: every non-streamed request was answered, the killed "
                          "worker was routed around and restarted", style="green bold"))
    return Group(*parts)


def to_json(summary: Summary, broken: Sequence[str]) -> dict[str, Any]:
    data = asdict(summary)
    data["failures"] = [asdict(f) for f in summary.failures]
    data["problems"] = list(broken)
    return data
