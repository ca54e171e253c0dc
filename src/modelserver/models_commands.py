"""`modelserver models ...`: the local CPU models (see `modelserver.models`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from modelserver.models import default_models_dir, prepare_models

models_app = typer.Typer(
    name="models",
    help="Local models for the CPU engine (llama.cpp), written from installed packages.",
    no_args_is_help=True,
)


@models_app.command("prepare")
def prepare(
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            help=f"Models folder (default: {default_models_dir()}, which examples/cpu.toml uses).",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Write both files again even if they verify.")
    ] = False,
) -> None:
    """Write tiny-chat.gguf (random weights) and all-minilm-l6-v2.gguf; no download.

    A second run checks size and sha256 against the folder's manifest.

    Only a missing or damaged file is written again.
    """
    started = time.perf_counter()
    prepared = prepare_models(directory, force=force)
    table = Table(title=f"models in {prepared.chat_path.parent}")
    for column in ("file", "size", "sha256", "status", "seconds"):
        table.add_column(column)
    for item in prepared.files:
        table.add_row(
            item.name,
            f"{item.size / 1e6:.1f} MB",
            item.sha256[:12],
            "written" if item.written else "verified",
            f"{item.seconds:.2f}",
        )
    console = Console()
    console.print(table)
    console.print(f"done in {time.perf_counter() - started:.2f} s")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
