"""The CLI in cluster mode: `up`, `down`, `status`, `logs` for a fleet with `[cluster]`.
`launcher.commands` hands a cluster fleet here first thing; nothing below runs for a
host-by-host fleet."""

from __future__ import annotations

import sys
import time
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from modelserver.config import Fleet
from modelserver.errors import ClusterError, LaunchError
from modelserver.launcher.cluster.connect import connect, stop_local
from modelserver.launcher.secrets import fleet_secrets
from modelserver.launcher.state import redact

console = Console()
err_console = Console(stderr=True)

STYLE = {"ready": "green", "waiting": "yellow", "starting": "yellow", "backoff": "yellow",
         "failed": "red", "stopped": "dim"}


def up(fleet: Fleet, dry_run: bool = False) -> int:
    """Place every replica (adopting live ones), wait until each is ready, failed or waiting
    for room, print the table. The replicas live on under their actors after `up` exits.
    `dry_run`: print the plan (add / replace / remove, with reasons) and change nothing."""
    if dry_run:
        return _dry_run(fleet)
    connect(fleet, start_local=True)
    from modelserver.launcher.cluster import executor

    executor.check(fleet)
    done = executor.reconcile(fleet)
    parts = [f"{len(v)} {k}" for k, v in (("added", done.added), ("kept", done.kept),
             ("replaced", done.replaced), ("removed", done.removed)) if v]
    console.print(f"fleet {fleet.fleet.name!r} on the cluster: " + ", ".join(parts))
    assert fleet.cluster is not None
    with console.status("placing replicas…") as shown:
        rows = executor.wait_settled(
            fleet, fleet.cluster.ready_wait_s, lambda rs: shown.update(_progress(rs))
        )
    console.print(table(rows))
    for problem in done.outcome.problems:
        err_console.print(f"[red]{problem}[/]", highlight=False)
    for worker, outcome in sorted(done.outcome.drained.items()):
        console.print(f"{worker}: {outcome}", highlight=False)
    failed = [r for r in rows if r["status"] == "failed"]
    for row in failed:
        err_console.print(f"[red]{row['name']} failed:[/] {row['last_error']}", highlight=False)
    for row in rows:
        if row["status"] == "waiting":
            console.print(f"{row['name']} waits: {row['waiting_for']}; Ray places it when a"
                          " node with room joins", highlight=False)
    return 1 if failed else 0


def _dry_run(fleet: Fleet) -> int:
    """The plan `up` would carry out; nothing is started, stopped or written (a private Ray
    that does not run is not started: then everything would be added)."""
    from modelserver.launcher.cluster.rollout import plan

    assert fleet.cluster is not None
    if fleet.cluster.address == "local":
        try:
            connect(fleet)
        except ClusterError:
            changes = plan(fleet, set(), set(), {})
            _print_plan([*changes.describe(), "(its private Ray does not run)"])
            return 0
    else:
        connect(fleet)
    from modelserver.launcher.cluster import executor

    executor.check(fleet)
    _print_plan(executor.plan(fleet).describe())
    return 0


def _print_plan(lines: list[str]) -> None:
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)
    console.print("dry run: nothing was changed", highlight=False)


def _progress(rows: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return "replicas: " + ", ".join(f"{n} {s}" for s, n in counts.items())


def down(fleet: Fleet) -> int:
    """Stop every replica of the fleet in the whole cluster; nothing of it is left."""
    assert fleet.cluster is not None
    if fleet.cluster.address == "local":
        try:
            connect(fleet)
        except ClusterError:  # none runs, or it does not answer: its processes go anyway
            stopped = stop_local(fleet)
            console.print(f"nothing runs for fleet {fleet.fleet.name!r}"
                          + (" (stopped its private Ray)" if stopped else " (no private Ray)"))
            return 0
    else:
        connect(fleet)
    from modelserver.launcher.cluster import executor

    try:
        removed = executor.down(fleet)
    finally:
        if fleet.cluster.address == "local":
            import ray

            ray.shutdown()
            stop_local(fleet)
    if removed:
        console.print(f"stopped {len(removed)} replica{'s' if len(removed) != 1 else ''} of"
                      f" {fleet.fleet.name!r} in the cluster")
    else:
        console.print(f"nothing runs for fleet {fleet.fleet.name!r} in the cluster")
    return 0


def status(fleet: Fleet, json_out: bool) -> int:
    connect(fleet)
    from modelserver.launcher.cluster import executor

    rows = [{k: v for k, v in r.items() if not k.startswith("_")}
            for r in executor.status_rows(fleet)]
    if json_out:
        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        console.print(table(rows))
    return 0


def logs(fleet: Fleet, worker: str, follow: bool, lines: int) -> int:
    connect(fleet)
    from modelserver.launcher.cluster import executor

    names = [w.name for w in fleet.workers()]
    matches = [n for n in names if worker in (n, n.split("@", 1)[0])] or \
        [n for n in names if n.startswith(worker)]
    if len(matches) != 1:
        raise LaunchError(f"{worker!r} names {'several' if matches else 'no'} worker of the"
                          f" fleet; workers: {', '.join(matches or names)}")
    secrets = fleet_secrets(fleet)
    # The last `lines` lines: read a generous tail (engines write long lines) and cut.
    offset, data = executor.log_chunk(fleet, matches[0], -max(lines, 1) * 400, 1 << 20)
    text = data.decode("utf-8", "replace").splitlines()[-lines:] if lines > 0 else []
    for line in text:
        sys.stdout.write(redact(line, secrets) + "\n")
    sys.stdout.flush()
    pending = b""
    try:
        while follow:
            offset, chunk = executor.log_chunk(fleet, matches[0], offset, 1 << 20)
            if not chunk:
                time.sleep(0.5)
                continue
            *done, pending = (pending + chunk).split(b"\n")
            for raw in done:
                sys.stdout.write(redact(raw.decode("utf-8", "replace"), secrets) + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    return 0


class RayExecutor:
    """The `ray` executor (launcher.executor.Executor): the commands above."""

    def up(self, fleet: Fleet, dry_run: bool = False) -> int:
        return up(fleet, dry_run)

    def down(self, fleet: Fleet) -> int:
        return down(fleet)

    def status(self, fleet: Fleet, json_out: bool) -> int:
        return status(fleet, json_out)

    def logs(self, fleet: Fleet, worker: str, follow: bool, lines: int) -> int:
        return logs(fleet, worker, follow, lines)


def table(rows: list[dict[str, Any]]) -> Table:
    shown = Table()
    for column in ("worker", "url", "status", "node", "pid", "restarts", "gpus", "why"):
        shown.add_column(column, overflow="fold")
    for row in rows:
        style = STYLE.get(row["status"], "")
        why = row.get("waiting_for") if row["status"] == "waiting" else row.get("last_error")
        first = (why or "").splitlines()
        shown.add_row(
            row["name"], row["url"] or "-",
            f"[{style}]{row['status']}[/]" if style else row["status"],
            (row.get("node") or "-")[:12], str(row["pid"] or ""), str(row["restarts"]),
            ",".join(row["gpus"]) or "-", first[0] if first else "",
        )
    return shown
