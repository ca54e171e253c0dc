"""`modelserver logs`: a worker's engine log, or the launcher's own (`--supervisor`)."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from modelserver.config import Fleet, WorkerSpec, load_fleet
from modelserver.errors import LaunchError
from modelserver.launcher.executor import cluster_executor
from modelserver.launcher.local import detect_host
from modelserver.launcher.logfiles import read_last_lines
from modelserver.launcher.secrets import fleet_secrets
from modelserver.launcher.state import log_path, redact, supervisor_log_path

FOLLOW_POLL_S = 0.5
"""How often `logs -f` looks for new lines (a person reads them)."""


def logs(
    fleet: Annotated[Path, typer.Argument(help="The fleet file (TOML).", show_default=False)],
    worker: Annotated[
        str | None,
        typer.Argument(help="Worker name, unambiguous prefix, or URL.", show_default=False),
    ] = None,
    supervisor: Annotated[
        bool,
        typer.Option("--supervisor", help="The launcher's own log instead of a worker's."),
    ] = False,
    host: Annotated[
        str | None,
        typer.Option("--host", help="With --supervisor: which host's (default: this one)."),
    ] = None,
    follow: Annotated[bool, typer.Option("-f", "--follow", help="Keep printing new lines.")]
    = False,
    lines: Annotated[int, typer.Option("-n", "--lines", help="Lines to show first.")] = 200,
) -> None:
    """Print a worker's log (its engine's stdout and stderr), or with --supervisor the
    launcher's own log."""
    if (worker is None) == (not supervisor):
        raise typer.BadParameter(
            "give a worker (its name, a prefix of it or its URL), or --supervisor for the"
            " launcher's own log, not both",
            param_hint="WORKER",
        )
    loaded = load_fleet(fleet)
    if loaded.cluster is not None:
        if worker is None:  # no launcher process runs the replicas: their actors do
            raise LaunchError("--supervisor: in cluster mode each replica's supervisor is its"
                              " Ray actor; give the worker's name to read its log")
        sys.exit(cluster_executor(loaded, host).logs(loaded, worker, follow, lines))
    if worker is not None:
        spec = resolve_worker(loaded, worker)
        path = log_path(loaded, spec.name)
        if not path.exists():
            raise LaunchError(f"{spec.name} has no log yet ({path})")
    else:
        name = detect_host(loaded, host)
        path = supervisor_log_path(loaded, name)
        if not path.exists():
            raise LaunchError(
                f"the supervisor of {name} has no log ({path}); only `up --detach` writes one"
                " (a foreground `up` prints to its terminal)"
            )
    _print_log(path, lines, follow, fleet_secrets(loaded), loaded.launcher.log_max_bytes)


def _print_log(
    path: Path, lines: int, follow: bool, secrets: tuple[str, ...], max_bytes: int
) -> None:
    """The last `lines` lines (from the rotated file too, just after a rotation), then, with
    `follow`, every new line, on across rotations (the file is truncated in place)."""
    shown, position = read_last_lines(path, lines, max_bytes)
    for line in shown:
        sys.stdout.write(redact(line.decode("utf-8", "replace"), secrets) + "\n")
    sys.stdout.flush()
    if not follow:
        return
    with contextlib.suppress(KeyboardInterrupt), open(path, "rb") as handle:
        handle.seek(position)
        pending = b""
        while True:
            if os.fstat(handle.fileno()).st_size < handle.tell():
                handle.seek(0)  # rotated: truncated under us, the engine writes from 0 again
                pending = b""
            chunk = handle.read()
            if not chunk:
                time.sleep(FOLLOW_POLL_S)
                continue
            # Whole lines only, so a key is never cut in two around the redaction.
            *done, pending = (pending + chunk).split(b"\n")
            for line_bytes in done:
                sys.stdout.write(redact(line_bytes.decode("utf-8", "replace"), secrets) + "\n")
            sys.stdout.flush()


def resolve_worker(fleet: Fleet, query: str) -> WorkerSpec:
    """A worker by exact name, by URL, or by an unambiguous prefix of its name."""
    workers = fleet.workers()
    for spec in workers:
        if query in (spec.name, spec.url, spec.url + "/"):
            return spec
    before_at = [s for s in workers if s.name.split("@", 1)[0] == query]
    found = before_at or [s for s in workers if s.name.startswith(query)]
    if len(found) == 1:
        return found[0]
    names = ", ".join(s.name for s in (found or workers))
    if found:
        raise LaunchError(f"{query!r} matches several workers: {names}; give the full name")
    raise LaunchError(f"no worker {query!r} in the fleet; workers: {names}")
