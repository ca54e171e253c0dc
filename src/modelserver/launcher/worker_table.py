"""What `up` and `status` print: the table of workers (from a state file, a running
supervisor or probes), the consoles it goes to, and the arguments the launcher's commands
share."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from modelserver.config import Fleet, WorkerSpec
from modelserver.launcher.state import HostState, process_is
from modelserver.launcher.supervisor import Supervisor

# Messages are never wrapped by us: a path or an error cut across lines in a log cannot be
# searched for; a terminal wraps long lines itself.
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

FleetArg = Annotated[Path, typer.Argument(help="The fleet file (TOML).", show_default=False)]
HostOpt = Annotated[
    str | None,
    typer.Option("--host", help="Which host of the fleet this machine is (default: by address)."),
]

STATUS_STYLE = {
    "waiting": "yellow", "ready": "green", "starting": "yellow", "backoff": "yellow",
    "failed": "red", "stopping": "yellow", "draining": "yellow", "stopped": "dim", "gone": "red",
    "unreachable": "red",
}


def state_rows(fleet: Fleet, host: str, state: HostState | None) -> list[dict[str, Any]]:
    rows = []
    for spec in fleet.workers(host):
        record = state.worker(spec.name) if state else None
        row = worker_row(spec, status="stopped")
        if record is not None:
            row.update(
                status=record.status, pid=record.pid, restarts=record.restarts,
                gpus=record.gpus, last_error=record.last_error, started_at=record.started_at,
                waiting_for=record.waiting_for,
            )
            if record.pid is not None and not process_is(record.pid, record.create_time):
                row.update(status="gone", last_error="its process is no longer running")
        rows.append(row)
    named = {row["name"] for row in rows}
    for record in state.workers if state else []:
        if record.name not in named and process_is(record.pid, record.create_time):
            # Not in this file but still running: `up` is draining it away.
            rows.append({
                "name": record.name, "model": record.model, "kind": record.kind,
                "backend": "", "host": record.host, "url": record.url,
                "status": record.status, "pid": record.pid, "restarts": record.restarts,
                "gpus": record.gpus, "last_error": "not in the fleet file: being removed",
                "started_at": record.started_at, "waiting_for": None,
            })
    return rows


def worker_row(spec: WorkerSpec, **fields: Any) -> dict[str, Any]:
    # Keys (api_key) never appear here: the row is built field by field.
    row: dict[str, Any] = {
        "name": spec.name, "model": spec.model, "kind": spec.kind, "backend": spec.backend,
        "host": spec.host, "url": spec.url, "status": "", "pid": None, "restarts": 0,
        "gpus": [], "last_error": None, "started_at": None, "waiting_for": None,
    }
    row.update(fields)
    return row


def local_rows(supervisor: Supervisor) -> list[dict[str, Any]]:
    return [dataclasses.asdict(w.record) for w in supervisor.workers.values()]


def worker_table(rows: list[dict[str, Any]]) -> Table:
    table = Table()
    for column in ("worker", "url", "status", "pid", "restarts", "gpus", "last error"):
        table.add_column(column, overflow="fold")
    for row in rows:
        style = STATUS_STYLE.get(row["status"], "")
        why = row.get("waiting_for") if row["status"] == "waiting" else row.get("last_error")
        error = (why or "").splitlines()
        table.add_row(
            row["name"], row["url"], f"[{style}]{row['status']}[/]" if style else row["status"],
            str(row["pid"] or ""), str(row["restarts"]), ",".join(row["gpus"]) or "-",
            error[0] if error else "",
        )
    return table
