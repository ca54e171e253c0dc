"""`modelserver bench`: the command line of the benchmark."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from modelserver.bench import parse_engines, resolve_names, run_bench
from modelserver.bench.runner import BenchSettings
from modelserver.bench.workloads import WORKLOADS

# Defaults: a run of a few minutes on a 2-core machine (see docs/BENCHMARKS.md).
DEFAULT_SPEED = 1.0
DEFAULT_MAX_RUNNING = 32


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench(
        workload: Annotated[str, typer.Option(
            help=f"What to send: {', '.join(WORKLOADS)}.")] = "shared-prefix",
        contenders: Annotated[str, typer.Option(
            help="Comma-separated contenders or groups: ours:fastest, ours:round_robin, "
                 "ours:least_load, ours:cache_aware, seed, smg:cache_aware, "
                 "smg:prefix_hash, smg:least_load, smg:power_of_two, smg:round_robin, "
                 "sglang:cache_aware, sglang:power_of_two, sglang:round_robin, "
                 "litellm:latency, litellm:shuffle, oracle; groups "
                 "ours, smg, sglang, litellm, peers, all.")] = "all",
        requests: Annotated[int, typer.Option(
            help="Requests per contender (shared-prefix: 16 per prefix group).", min=1)] = 256,
        engines: Annotated[str, typer.Option(
            help="Relative speed of each simulated engine; 1,1,1,0.5 is four engines, "
                 "one at half speed.")] = "1,1,1,0.5",
        speed: Annotated[float, typer.Option(
            help="Time scale of every engine (1 = Llama-3.1-8B on an H100).")] = DEFAULT_SPEED,
        max_running: Annotated[int, typer.Option(
            help="Most requests each engine decodes at once.", min=1)] = DEFAULT_MAX_RUNNING,
        cache_tokens: Annotated[int | None, typer.Option(
            help="Each engine's KV pool in tokens (default: as SGLang sizes it for "
                 "--model-size on --gpu; 451,647 for Llama-3.1-8B on an H100).")] = None,
        gpu: Annotated[str, typer.Option(
            help="GPU each engine simulates: h100, a100-80gb, a100-40gb, l4.")] = "h100",
        model_size: Annotated[str, typer.Option(
            help="Model each engine simulates: llama-3.1-8b, llama-3.2-3b.")] = "llama-3.1-8b",
        arrivals: Annotated[str, typer.Option(
            help="closed:N (N sessions in flight), poisson:0.8x (a share of the fleet's "
                 "estimated capacity) or poisson:R/s.")] = "closed:64",
        stream_share: Annotated[float, typer.Option(
            help="Share of requests sent streamed (their TTFT is measured).")] = 0.25,
        fault: Annotated[list[str] | None, typer.Option(
            help="ACTION[:ENGINE]@WHEN, ACTION kill|slow|hang, WHEN like 40% or 12s. "
                 "Repeatable.")] = None,
        seed: Annotated[int, typer.Option(help="Seed of the workload and arrivals.")] = 0,
        out: Annotated[Path, typer.Option(help="Folder for report.json, PNGs, logs.")] = Path(
            "bench-results/bench"),
        timeout: Annotated[float, typer.Option(
            help="Seconds one attempt may take (each contender's own per-attempt "
                 "timeout); a request fails after 3 times that.")] = 60.0,
        plots: Annotated[bool, typer.Option(help="Write latency.png and load.png.")] = True,
    ) -> None:
        """Measure routing side by side: our policies, the seed's client, SGLang's gateway
        (smg) and its older router,
        LiteLLM's Router and an oracle, in front of the same simulated engines."""
        settings = BenchSettings(
            workload=workload,
            contenders=resolve_names(contenders),
            requests=requests,
            engines=parse_engines(engines, speed, max_running, cache_tokens, gpu, model_size),
            arrivals=arrivals,
            stream_share=stream_share,
            faults=list(fault or []),
            seed=seed,
            out=out,
            attempt_timeout_s=timeout,
        )
        console = Console()
        if not console.is_terminal:  # a log file: wide enough for the figures table
            console = Console(width=170)
        from modelserver.bench.report import print_report

        report = asyncio.run(run_bench(
            settings, progress=lambda msg: console.print(f"[dim]{msg}[/]"), plots=plots))
        print_report(report, console)
        console.print(f"report: {out / 'report.json'}"
                      + (f", {out / 'latency.png'}, {out / 'load.png'}" if plots else ""))
