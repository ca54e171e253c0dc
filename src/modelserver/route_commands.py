"""Routing commands: `modelserver latency`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from modelserver._console import print_whole
from modelserver.config import load_fleet
from modelserver.routing.latency import LatencyResult, measure_latency
from modelserver.routing.router import WorkerEntry
from modelserver.routing.transport import AiohttpTransport

console = Console(width=160)  # a table of URLs: do not wrap them on narrow terminals


def register(app: typer.Typer) -> None:
    app.command()(latency)


def latency(
    fleet: Annotated[Path, typer.Argument(help="The fleet file (TOML).", show_default=False)],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Only this model's workers.")
    ] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="Tokens each probe asks for.")] = 8,
    cutoff: Annotated[
        float,
        typer.Option(min=1.0, help="Stop waiting for workers slower than this × the fastest."),
    ] = 2.0,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds before giving up.")] = 30.0,
) -> None:
    """Probe every worker at once with a short request; table sorted by latency."""
    loaded = load_fleet(fleet)
    if model is not None:
        loaded.model(model)  # UnknownModel, naming the fleet's models, if there is none
    entries = [
        WorkerEntry(w.model, w.url, w.kind, name=w.name, api_key=w.api_key)
        for w in loaded.workers()
        if model is None or w.model == model
    ]
    results = asyncio.run(_run(entries, max_tokens, cutoff, timeout))
    print_whole(console, render_table(results))
    if not any(r.latency_s is not None for r in results):
        raise typer.Exit(1)


async def _run(
    entries: list[WorkerEntry], max_tokens: int, cutoff: float, timeout_s: float
) -> list[LatencyResult]:
    transport = AiohttpTransport(connect_timeout_s=min(timeout_s, 3.0))
    try:
        return await measure_latency(
            entries, transport, max_tokens=max_tokens, cutoff_ratio=cutoff, timeout_s=timeout_s
        )
    finally:
        await transport.close()


def render_table(results: list[LatencyResult]) -> Table:
    table = Table(title="worker latency (one short request each, all at once)")
    for column in ("", "worker", "model", "url", "latency", "outcome"):
        table.add_column(column, justify="right" if column == "latency" else "left")
    workers_of: dict[str, int] = {}
    for result in results:
        workers_of[result.entry.model] = workers_of.get(result.entry.model, 0) + 1
    for result in results:
        entry = result.entry
        # Fastest among several: a model's only worker is not marked (there was no choice).
        fastest = result.fastest and workers_of[entry.model] > 1
        shown = f"{result.latency_s * 1000:.0f} ms" if result.latency_s is not None else "-"
        table.add_row(
            "[bold green]★ fastest[/]" if fastest else "",
            entry.name or entry.url,
            entry.model,
            entry.url,
            shown,
            result.outcome if result.outcome == "ok" else f"[yellow]{result.outcome}[/]",
        )
    return table
