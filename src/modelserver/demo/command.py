"""`modelserver demo`: the CLI entry of the demo (see `modelserver.demo.run`)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from modelserver.errors import ModelServerError

DEFAULT_RUN_DIR = Path(".modelserver") / "demo-run"
DEMO_EXTRA_HINT = "pip install 'modelserver[demo]'"


def demo(
    duration: Annotated[
        float, typer.Option("--duration", min=5.0, help="Seconds of traffic (the kill is at 30%).")
    ] = 40.0,
    live: Annotated[
        bool, typer.Option("--live/--no-live", help="Live screen, or plain log lines (CI, pipes).")
    ] = True,
    run_dir: Annotated[
        Path, typer.Option("--dir", help="Run folder: fleet file, state, logs, summary.json.")
    ] = DEFAULT_RUN_DIR,
    models_dir: Annotated[
        Path | None,
        typer.Option("--models-dir", help="Models folder (default: the one `models prepare` uses).",
                     show_default=False),
    ] = None,
) -> None:
    """Run a local fleet (real llama.cpp workers and simulated SGLang engines) behind the
    gateway, send it traffic, kill a worker mid-run, and show what happens. No GPU, no network.
    """
    if importlib.util.find_spec("openai") is None:
        raise ModelServerError(
            f"the demo talks to the gateway with the openai SDK, which is not installed; "
            f"install it with: {DEMO_EXTRA_HINT}"
        )
    from modelserver.demo.run import DemoOptions, run_demo

    console = Console(highlight=False)
    if not console.is_terminal:  # a log or a pipe: lines as wide as the tables need
        console = Console(highlight=False, width=150)
    options = DemoOptions(run_dir.resolve(), models_dir, duration, live and console.is_terminal)
    code = run_demo(options, console)
    if code:
        sys.exit(code)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
