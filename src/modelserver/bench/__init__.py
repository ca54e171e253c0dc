"""`modelserver bench`: routing measured side by side with the peers, in one run.

    settings = BenchSettings(workload="shared-prefix", contenders=resolve_names("all"),
                             engines=parse_engines("1,1,1,0.5", speed=0.2), out=Path("out"))
    report = await run_bench(settings)   # writes out/report.{json,md}, latency.png, load.png

Modules: `workloads` (what is sent), `arrivals` (when), `fleet` (the simulated engines as
processes), `faults` (what breaks, when), `contenders/` (who routes), `runner` (one run),
`stats` (figures), `report` (JSON, tables, goals), `plots` (PNGs), `command` (the CLI).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelserver.bench.contenders import CONTENDERS, GROUPS, resolve_names
from modelserver.bench.fleet import EngineSpec
from modelserver.bench.runner import BenchRunner, BenchSettings
from modelserver.bench.workloads import WORKLOADS, build_workload
from modelserver.errors import BenchError

__all__ = [
    "CONTENDERS",
    "GROUPS",
    "WORKLOADS",
    "BenchSettings",
    "EngineSpec",
    "build_workload",
    "parse_engines",
    "resolve_names",
    "run_bench",
]


def parse_engines(spec: str, speed: float = 1.0, max_running: int | None = None,
                  cache_tokens: int | None = None, gpu: str = "h100",
                  model_size: str = "llama-3.1-8b") -> list[EngineSpec]:
    """`1,1,1,0.5` -> four engines, the last at half the speed of the others; each relative
    speed is multiplied by `speed` (the time scale of the whole fleet)."""
    try:
        relative = [float(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise BenchError(f"--engines {spec!r}: expected relative speeds like 1,1,1,0.5") from None
    if not relative or any(r <= 0 for r in relative):
        raise BenchError(f"--engines {spec!r}: give one positive relative speed per engine")
    if speed <= 0:
        raise BenchError(f"--speed must be positive, got {speed}")
    from modelserver.sim.perf import GPUS, MODELS

    if gpu not in GPUS:
        raise BenchError(f"--gpu {gpu!r} unknown; valid: {', '.join(GPUS)}")
    if model_size not in MODELS:
        raise BenchError(f"--model-size {model_size!r} unknown; valid: {', '.join(MODELS)}")
    return [EngineSpec(speed=r * speed, max_running=max_running, cache_tokens=cache_tokens,
                       gpu=gpu, model_size=model_size)
            for r in relative]


async def run_bench(settings: BenchSettings, progress: Callable[[str], None] = lambda _: None,
                    plots: bool = True) -> dict[str, Any]:
    """Run every contender, write `report.json` (and the PNGs) into `settings.out`, and
    return the report."""
    from modelserver.bench import report as reporting

    result = await BenchRunner(settings, progress).run()
    data = reporting.to_json(result)
    reporting.write_json(data, Path(settings.out))
    reporting.write_markdown(data, Path(settings.out))
    if plots:
        from modelserver.bench.plots import write_plots

        write_plots(data, Path(settings.out))
    return data
