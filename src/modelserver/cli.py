"""The `modelserver` command. Each area keeps its commands in its own module and registers
them here, so this file stays a table of contents."""

from __future__ import annotations

import functools
import importlib
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from modelserver.config import load_fleet
from modelserver.errors import ModelServerError

app = typer.Typer(
    name="modelserver",
    help="Launch, route and measure a fleet of self-hosted LLM engines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

FleetArg = Annotated[Path, typer.Argument(help="The fleet file (TOML).", show_default=False)]

# Modules whose `register(app)` adds their commands, in the order `--help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "modelserver.launcher.commands",
    "modelserver.sim.command",
    "modelserver.models_commands",
    "modelserver.gateway.command",
    "modelserver.route_commands",
    "modelserver.bench.command",
    "modelserver.demo.command",
)


@app.command()
def validate(fleet: FleetArg) -> None:
    """Check a fleet file and list the workers it describes."""
    loaded = load_fleet(fleet)
    rows = [(w.name, w.model, w.kind, w.backend, w.url or "(its node, placed by Ray)")
            for w in loaded.workers()]
    table = Table(title=Text(f"fleet {loaded.fleet.name!r}: {len(rows)} workers"))
    # A URL cut short hides its port: names fold instead, and a terminal too narrow even for
    # the URLs gets lines as wide as they need.
    table.add_column("worker", overflow="fold", min_width=8)
    table.add_column("model", overflow="fold", min_width=8)
    for index, column in enumerate(("kind", "backend", "url"), start=2):
        widest = max([len(column)] + [len(row[index]) for row in rows])
        table.add_column(column, no_wrap=True, min_width=widest)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    # Each column has one space either side and a rule on its left; one more rule ends it.
    needed = sum(column.min_width or 0 for column in table.columns) + 3 * len(table.columns) + 1
    out = console if console.width >= needed else Console(file=console.file, width=needed)
    out.print(table)


@functools.cache  # once per process: main() may run several times (tests call it in-process)
def _register_all() -> None:
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(app)


def main() -> None:
    # State, logs and locks (and whatever the engines we start write) must not be writable by
    # other users, whatever umask we were started with: a state file swapped by someone else
    # would name the processes `down` signals.
    os.umask(os.umask(0) | 0o022)
    _register_all()
    try:
        # Without standalone mode click returns the code of `typer.Exit` instead of exiting.
        code = app(standalone_mode=False)
    except ModelServerError as exc:
        # Not wrapped at the terminal's width: a path or key broken across lines cannot be
        # searched for or copied; the terminal wraps long lines itself.
        err_console.print(
            f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        sys.exit(2)
    except (typer.Exit, SystemExit) as exc:
        code = exc.exit_code if isinstance(exc, typer.Exit) else exc.code
        sys.exit(code if isinstance(code, int) else 0)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except Exception as exc:  # click usage errors arrive here in standalone_mode=False
        import click

        # typer >= 0.29 vendors click: its usage errors are not click.ClickException, but
        # they still carry show() and exit_code.
        exit_code = getattr(exc, "exit_code", None)
        if isinstance(exc, click.ClickException) or (
            hasattr(exc, "show") and isinstance(exit_code, int)
        ):
            exc.show()
            sys.exit(exit_code)
        raise
    if isinstance(code, int) and code:
        sys.exit(code)
