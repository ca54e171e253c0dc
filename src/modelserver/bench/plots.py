"""PNG figures of a run, drawn from `report.json` alone (matplotlib, Agg backend: no display).

- `latency.png`: the distribution of end-to-end latency per contender (empirical CDF, log
  time axis) beside the TTFT distribution of its streamed requests;
- `load.png`: per-engine requests in the engine (running + queued) over time, one panel per
  contender, a vertical line at each injected fault, gaps where an engine did not answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelserver.errors import BenchError


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise BenchError(f"matplotlib is not installed ({exc}); install the 'bench' extra "
                         "or pass --no-plots") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _cdf(values: list[float]) -> tuple[list[float], list[float]]:
    xs = sorted(values)
    n = len(xs)
    return xs, [(i + 1) / n for i in range(n)]


def latency_plot(report: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    fig, (ax_e2e, ax_ttft) = plt.subplots(1, 2, figsize=(13, 5))
    for run in report["runs"]:
        done = [r for r in run["requests"] if r["ok"]]
        e2e = [r["e2e_s"] for r in done]
        ttft = [r["ttft_s"] for r in done if r["streamed"] and r["ttft_s"] is not None]
        if e2e:
            ax_e2e.plot(*_cdf(e2e), label=run["name"], drawstyle="steps-post")
        if ttft:
            ax_ttft.plot(*_cdf(ttft), label=run["name"], drawstyle="steps-post")
    for ax, what in ((ax_e2e, "end-to-end latency"), (ax_ttft, "time to first token")):
        ax.set_xscale("log")
        ax.set_xlabel(f"{what} (s, log scale)")
        ax.set_ylabel("share of completed requests")
        ax.grid(True, which="both", alpha=0.3)
    ax_e2e.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"latency per contender: {report['workload']['description']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def load_plot(report: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    runs = [r for r in report["runs"] if r["samples"]]
    if not runs:
        runs = report["runs"][:1]
    fig, axes = plt.subplots(len(runs), 1, figsize=(11, 2.2 * max(len(runs), 1)),
                             sharex=True, squeeze=False)
    engines = sorted({s["engine"] for r in runs for s in r["samples"]})
    speeds = {e["index"]: e["speed"] for e in report["fleet"]}
    for ax, run in zip(axes[:, 0], runs, strict=True):
        for engine in engines:
            pts = [s for s in run["samples"] if s["engine"] == engine]
            ts = [s["t_s"] for s in pts]
            load = [float("nan") if s["running"] is None else s["running"] + s["queued"]
                    for s in pts]
            ax.plot(ts, load, label=f"engine {engine} (speed {speeds.get(engine, 0):g})")
        for fault in run["faults"]:
            ax.axvline(fault["t_s"], color="red", linestyle="--", linewidth=1)
            ax.annotate(f"{fault['action']} {fault['engine']}", (fault["t_s"], 0),
                        color="red", fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_ylabel(run["name"], fontsize=8)
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="upper center", ncol=max(len(engines), 1),
               bbox_to_anchor=(0.5, 0.985))
    axes[-1, 0].set_xlabel("seconds since the contender's first request")
    fig.suptitle("requests in each engine (running + queued); red: injected faults",
                 fontsize=10, y=0.998)
    fig.tight_layout(rect=(0, 0, 1, 0.965))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_plots(report: dict[str, Any], out: Path) -> list[Path]:
    return [latency_plot(report, out / "latency.png"), load_plot(report, out / "load.png")]
