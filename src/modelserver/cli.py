"""The `modelserver` command. Each area keeps its commands in its own module and registers
them here, so this file stays a table of contents."""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from modelserver._console import print_whole
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
    print_whole(console, table, at_least=needed)


@functools.cache  # once per process: main() may run several times (tests call it in-process)
def _register_all() -> None:
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(app)
    _unwrap_helps(app)


def _unwrap_helps(typer_app: typer.Typer) -> None:
    for command in typer_app.registered_commands:
        if command.help is None and command.callback is not None:
            command.help = unwrapped_help(inspect.getdoc(command.callback) or "")
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _unwrap_helps(group.typer_instance)


def unwrapped_help(doc: str) -> str:
    """A docstring as help text: each paragraph one line. Typer's rich help keeps a
    docstring's line breaks in the list of commands, so a sentence wrapped at the source's
    100 columns broke mid-way there; now rich wraps it at the terminal's width."""
    paragraphs = [" ".join(p.split()) for p in doc.strip().split("\n\n")]
    return "\n\n".join(p for p in paragraphs if p)


def _is_usage_error(exc: Exception) -> bool:
    """A command-line usage error (a missing argument, an unknown command or option): it
    knows how to `show()` itself and its exit code (2). Recognised by that shape, not by
    class: typer >= 0.29 raises its own vendored copy of click's errors and no longer
    installs click, older typer raises click's, and the base install must not need click."""
    return callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int)


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
    except Exception as exc:
        if not _is_usage_error(exc):
            raise
        exc.show()  # type: ignore[attr-defined]
        sys.exit(exc.exit_code)  # type: ignore[attr-defined]
    if isinstance(code, int) and code:
        sys.exit(code)
