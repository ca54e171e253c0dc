"""`modelserver up / down / status / logs`: the launcher's commands."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import orjson
import psutil
import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from modelserver.backends import backend_for, check_options
from modelserver.clock import SystemClock
from modelserver.config import Fleet, WorkerSpec, load_fleet
from modelserver.errors import LaunchError
from modelserver.launch import HttpProbe, detect_host, launch
from modelserver.preflight import preflight
from modelserver.processes import SubprocessSpawner, stop_unrecorded_engines
from modelserver.state import (
    LOG_MODE,
    HostState,
    SupervisorLock,
    WorkerRecord,
    log_path,
    log_tail,
    process_is,
    read_state,
    state_path,
    supervisor_log_path,
    write_state,
)
from modelserver.supervisor import Supervisor

console = Console()
err_console = Console(stderr=True)

FleetArg = Annotated[Path, typer.Argument(help="The fleet file (TOML).", show_default=False)]
HostOpt = Annotated[
    str | None,
    typer.Option("--host", help="Which host of the fleet this machine is (default: by address)."),
]

STATUS_STYLE = {
    "ready": "green", "starting": "yellow", "backoff": "yellow", "failed": "red",
    "stopping": "yellow", "stopped": "dim", "gone": "red", "unreachable": "red",
}


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(down)
    app.command()(status)
    app.command()(logs)


# -- up ------------------------------------------------------------------------------------


def up(
    fleet: FleetArg,
    host: HostOpt = None,
    detach: Annotated[
        bool, typer.Option("--detach", help="Supervise in the background; return once ready.")
    ] = False,
    supervise: Annotated[bool, typer.Option("--supervise", hidden=True)] = False,
) -> None:
    """Start this host's workers, wait until they answer, and keep them alive."""
    loaded = load_fleet(fleet)
    check_options(loaded)
    name = detect_host(loaded, host)
    if not loaded.workers(name):
        raise LaunchError(f"the fleet file has no workers on host {name!r}")
    preflight(loaded, name)  # weights, GPUs, foreign ports: refuse before starting anything
    if detach:
        code = _detach(fleet, loaded, name)
    else:
        # The background supervisor's stderr is its log file: there, say everything.
        logging.basicConfig(
            level=logging.INFO if supervise else logging.WARNING,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        code = asyncio.run(_serve(loaded, name, progress=not supervise))
    if code:
        # SystemExit, not typer.Exit: click in standalone_mode=False returns an Exit's code
        # instead of exiting with it.
        sys.exit(code)


async def _serve(fleet: Fleet, host: str, progress: bool) -> int:
    """Run the supervisor in this process until SIGINT/SIGTERM; then stop every worker."""
    lock = SupervisorLock(fleet, host)
    lock.acquire()
    probe = HttpProbe()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    supervisor: Supervisor | None = None
    try:
        starting = asyncio.ensure_future(
            launch(fleet, host, spawner=SubprocessSpawner(), probe=probe, clock=SystemClock())
        )
        if not await _first(starting, stop):
            starting.cancel()
            return 130
        supervisor = starting.result()
        if not progress:
            supervisor.listeners.append(_transition_logger())
        settled = asyncio.ensure_future(supervisor.wait_until(Supervisor.settled))
        if progress:
            with Live(get_renderable=lambda: _table(_local_rows(supervisor)), console=console):
                await _first(settled, stop)
        else:
            await _first(settled, stop)
            _log(f"{host}: " + ", ".join(f"{w.record.name} {w.status}" for w in
                                         supervisor.workers.values()))
        failed = [w for w in supervisor.workers.values() if w.record.status == "failed"]
        for worker in failed:
            err_console.print(f"[red]{worker.record.name} failed:[/] {worker.record.last_error}",
                              highlight=False)
        if len(failed) == len(supervisor.workers):
            return 1  # nothing to supervise
        if progress and not stop.is_set():
            console.print(f"supervising {len(supervisor.workers) - len(failed)} workers on"
                          f" {host}; Ctrl-C stops them")
        await stop.wait()
        return 0
    finally:
        if supervisor is not None:
            await supervisor.stop_all(keep_failed=True)
        await probe.close()
        lock.release()


async def _first(work: asyncio.Future[Any], stop: asyncio.Event) -> bool:
    """Wait for `work` or for a stop signal; True if `work` finished."""
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    return work.done()


def _transition_logger() -> Callable[[WorkerRecord], None]:
    """Log each status change of a worker (the detached supervisor's log tells its story)."""
    last: dict[str, tuple[str, int | None]] = {}

    def log(record: WorkerRecord) -> None:
        if last.get(record.name) != (record.status, record.pid):
            last[record.name] = (record.status, record.pid)
            _log(_describe(record))

    return log


def _describe(record: WorkerRecord) -> str:
    error = (record.last_error or "").splitlines()
    why = f" ({error[0]})" if error and record.status in ("backoff", "failed") else ""
    pid = f" pid {record.pid}" if record.pid else ""
    return f"{record.name} {record.status}{pid} restarts {record.restarts}{why}"


def _log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}", flush=True)


def _detach(fleet_file: Path, fleet: Fleet, host: str) -> int:
    """Start the supervisor in its own session; return once each worker is ready or failed."""
    if SupervisorLock(fleet, host).held_by_other():
        raise LaunchError(f"a supervisor already runs for host {host!r}; `modelserver down` first")
    log = supervisor_log_path(fleet, host)
    log.parent.mkdir(parents=True, exist_ok=True)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, LOG_MODE)
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "modelserver", "up", str(fleet_file.resolve()),
             "--host", host, "--supervise"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        os.close(out)
    expected = {w.name for w in fleet.workers(host)}
    path = state_path(fleet, host)
    try:
        with console.status(f"starting {len(expected)} workers on {host}…"):
            while True:
                code = child.poll()
                if code is not None:
                    raise LaunchError(
                        f"the supervisor exited with code {code} before its workers were"
                        f" ready; {log}:\n{log_tail(log)}"
                    )
                state = read_state(path)
                if state and _launch_done(state, child.pid, expected):
                    break
                time.sleep(0.2)
    except KeyboardInterrupt:
        err_console.print(f"the supervisor (pid {child.pid}) goes on in the background;"
                          " `modelserver status` shows it, `modelserver down` stops it")
        return 130
    rows = _state_rows(fleet, host, state)
    console.print(_table(rows))
    failed = [r for r in rows if r["status"] == "failed"]
    for row in failed:
        err_console.print(f"[red]{row['name']} failed:[/] {row['last_error']}", highlight=False)
    if not failed:
        console.print(f"supervisor pid {child.pid} runs in the background; log: {log}")
    return 1 if failed else 0


def _launch_done(state: HostState, supervisor_pid: int, expected: set[str]) -> bool:
    if state.supervisor is None or state.supervisor.pid != supervisor_pid:
        return False
    statuses = {w.name: w.status for w in state.workers}
    return expected <= statuses.keys() and all(
        statuses[name] in ("ready", "failed") for name in expected
    )


# -- down ----------------------------------------------------------------------------------


def down(fleet: FleetArg, host: HostOpt = None) -> None:
    """Stop this host's supervisor and every worker it started; nothing is left running."""
    loaded = load_fleet(fleet)
    name = detect_host(loaded, host)
    path = state_path(loaded, name)
    state = read_state(path)
    if state is None:
        console.print(f"nothing runs on {name} (no state file at {path})")
        return
    grace = loaded.launcher.stop_grace_s
    sup = state.supervisor
    if sup is not None and process_is(sup.pid, sup.create_time):
        proc = psutil.Process(sup.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            # The supervisor stops its workers first (grace each, in parallel).
            proc.wait(timeout=grace + 30)
        except psutil.TimeoutExpired:
            proc.kill()
        state = read_state(path) or state
    # Whatever still runs (a supervisor killed with SIGKILL left its workers): stop by group.
    leftovers = [w for w in state.workers if process_is(w.pid, w.create_time)]
    for worker in leftovers:
        assert worker.pid is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(worker.pid, signal.SIGTERM)
    procs = []
    for worker in leftovers:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(worker.pid))
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for worker in leftovers:
        assert worker.pid is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(worker.pid, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5)
    # Engines no state file names (a launcher killed between spawning and recording them).
    stop_unrecorded_engines(path, keep=())
    for worker in state.workers:
        worker.status = "stopped"
        worker.pid = None
        worker.create_time = None
    state.supervisor = None
    write_state(path, state)
    console.print(f"stopped {name}: {len(state.workers)} workers")


# -- status --------------------------------------------------------------------------------


def status(
    fleet: FleetArg,
    host: HostOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON, one object per worker.")]
    = False,
) -> None:
    """Every worker of the fleet: this host's from its state file, the others' by probing."""
    loaded = load_fleet(fleet)
    try:
        local: str | None = detect_host(loaded, host)
    except LaunchError:
        if host is not None:
            raise
        local = None  # this machine is none of the hosts: probe them all
    rows: list[dict[str, Any]] = []
    state = read_state(state_path(loaded, local)) if local is not None else None
    if local is not None:
        rows += _state_rows(loaded, local, state)
    remote = [w for w in loaded.workers() if w.host != local]
    rows += asyncio.run(_probe_rows(loaded, remote))
    if json_out:
        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    table = _table(rows)
    if local is not None:
        sup = state.supervisor if state else None
        alive = sup is not None and process_is(sup.pid, sup.create_time)
        table.caption = (
            f"supervisor of {local}: pid {sup.pid}" if sup is not None and alive
            else f"no supervisor runs on {local}"
        )
    console.print(table)


def _state_rows(fleet: Fleet, host: str, state: HostState | None) -> list[dict[str, Any]]:
    rows = []
    for spec in fleet.workers(host):
        record = state.worker(spec.name) if state else None
        row = _row(spec, status="stopped")
        if record is not None:
            row.update(
                status=record.status, pid=record.pid, restarts=record.restarts,
                gpus=record.gpus, last_error=record.last_error, started_at=record.started_at,
            )
            if record.pid is not None and not process_is(record.pid, record.create_time):
                row.update(status="gone", last_error="its process is no longer running")
        rows.append(row)
    return rows


async def _probe_rows(fleet: Fleet, workers: list[WorkerSpec]) -> list[dict[str, Any]]:
    probe = HttpProbe(timeout_s=2.0)
    try:
        answers = await asyncio.gather(
            *(probe(w.url, (backend_for(w.backend).health_path,), w.api_key) for w in workers)
        )
    finally:
        await probe.close()
    return [
        _row(w, status="ready" if why is None else "unreachable", last_error=why)
        for w, why in zip(workers, answers, strict=True)
    ]


def _row(spec: WorkerSpec, **fields: Any) -> dict[str, Any]:
    # Keys (api_key) never appear here: the row is built field by field.
    row: dict[str, Any] = {
        "name": spec.name, "model": spec.model, "kind": spec.kind, "backend": spec.backend,
        "host": spec.host, "url": spec.url, "status": "", "pid": None, "restarts": 0,
        "gpus": [], "last_error": None, "started_at": None,
    }
    row.update(fields)
    return row


def _local_rows(supervisor: Supervisor) -> list[dict[str, Any]]:
    return [
        {"name": w.record.name, "model": w.record.model, "host": w.record.host,
         "url": w.record.url, "status": w.record.status, "pid": w.record.pid,
         "restarts": w.record.restarts, "gpus": w.record.gpus, "last_error": w.record.last_error}
        for w in supervisor.workers.values()
    ]


def _table(rows: list[dict[str, Any]]) -> Table:
    table = Table()
    for column in ("worker", "url", "status", "pid", "restarts", "gpus", "last error"):
        table.add_column(column, overflow="fold")
    for row in rows:
        style = STATUS_STYLE.get(row["status"], "")
        error = (row.get("last_error") or "").splitlines()
        table.add_row(
            row["name"], row["url"], f"[{style}]{row['status']}[/]" if style else row["status"],
            str(row["pid"] or ""), str(row["restarts"]), ",".join(row["gpus"]) or "-",
            error[0] if error else "",
        )
    return table


# -- logs ----------------------------------------------------------------------------------


def logs(
    fleet: FleetArg,
    worker: Annotated[str, typer.Argument(help="Worker name, unambiguous prefix, or URL.")],
    follow: Annotated[bool, typer.Option("-f", "--follow", help="Keep printing new lines.")]
    = False,
    lines: Annotated[int, typer.Option("-n", "--lines", help="Lines to show first.")] = 200,
) -> None:
    """Print a worker's log (its engine's stdout and stderr)."""
    loaded = load_fleet(fleet)
    spec = resolve_worker(loaded, worker)
    path = log_path(loaded, spec.name)
    if not path.exists():
        raise LaunchError(f"{spec.name} has no log yet ({path})")
    with open(path, "rb") as handle:
        data = handle.read()
        text = data.decode("utf-8", "replace").splitlines()[-lines:] if lines > 0 else []
        for line in text:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            while follow:
                chunk = handle.read()
                if chunk:
                    sys.stdout.write(chunk.decode("utf-8", "replace"))
                    sys.stdout.flush()
                else:
                    time.sleep(0.5)


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
