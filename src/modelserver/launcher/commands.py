"""`modelserver up / down / status / logs`: the launcher's commands; `up` here, `down` and
`status` in status_commands, `logs` in log_commands."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live

from modelserver._console import print_whole
from modelserver.clock import SystemClock
from modelserver.config import Fleet, load_fleet
from modelserver.errors import LaunchError
from modelserver.launcher.executor import cluster_executor
from modelserver.launcher.gpus import inventory_for
from modelserver.launcher.local import HttpProbe, detect_host, gpu_view, launch
from modelserver.launcher.log_commands import logs
from modelserver.launcher.logfiles import keep_logs_capped
from modelserver.launcher.placement import GpuView
from modelserver.launcher.preflight import preflight
from modelserver.launcher.processes import SubprocessSpawner
from modelserver.launcher.reconcile import REQUEST_SIGNAL, Reconciler, plan_for, send_request
from modelserver.launcher.secrets import fleet_secrets
from modelserver.launcher.state import (
    LOG_MODE,
    HostState,
    SupervisorLock,
    WorkerRecord,
    check_state_dir,
    create_time_of,
    log_tail,
    process_is,
    read_state,
    state_path,
    supervisor_log_path,
)
from modelserver.launcher.status_commands import down, status
from modelserver.launcher.supervisor import Supervisor
from modelserver.launcher.worker_table import (
    FleetArg,
    HostOpt,
    console,
    err_console,
    local_rows,
    state_rows,
    worker_table,
)


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(down)  # in status_commands
    app.command()(status)
    app.command()(logs)  # in log_commands, beside reading rotated logs


# -- up ------------------------------------------------------------------------------------


def up(
    fleet: FleetArg,
    host: HostOpt = None,
    detach: Annotated[
        bool, typer.Option("--detach", help="Supervise in the background; return once ready.")
    ] = False,
    supervise: Annotated[bool, typer.Option("--supervise", hidden=True)] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would change; change nothing.")
    ] = False,
) -> None:
    """Start this host's workers, wait until they answer, and keep them alive. On a running
    fleet, apply the fleet file's changes: add, drain and remove, replace one at a time."""
    loaded = load_fleet(fleet)
    if loaded.cluster is not None:
        sys.exit(cluster_executor(loaded, host).up(loaded, dry_run=dry_run))
    name = detect_host(loaded, host)
    check_state_dir(loaded)
    running = not supervise and SupervisorLock(loaded, name).held_by_other()
    if not loaded.workers(name) and not running:
        raise LaunchError(f"the fleet file has no workers on host {name!r}")
    # Weights, GPUs, foreign ports: refuse before starting anything. What this machine lacks
    # (NVML, an engine) fails only the workers that need it.
    refused = preflight(loaded, name)
    if dry_run or running:
        code = apply_to_running(fleet, loaded, name, dry_run=dry_run)
    elif detach:
        code = _detach(fleet, loaded, name)
    else:
        # The background supervisor's stderr is its log file: there, say everything.
        logging.basicConfig(
            level=logging.INFO if supervise else logging.WARNING,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        code = asyncio.run(_serve(loaded, name, refused, progress=not supervise))
    if code:
        # SystemExit, not typer.Exit: click in standalone_mode=False returns an Exit's code
        # instead of exiting with it.
        sys.exit(code)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Each stops every worker and then the supervisor. SIGHUP too: a closed terminal must not
leave the workers of a foreground `up` running unsupervised."""


async def _serve(
    fleet: Fleet, host: str, refused: Mapping[str, str], progress: bool
) -> int:
    """Run the supervisor in this process until a stop signal; then stop every worker."""
    stop = asyncio.Event()
    change_asked = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    # Before the lock: a second `up` signals its holder, and SIGUSR1 would otherwise kill.
    loop.add_signal_handler(REQUEST_SIGNAL, change_asked.set)
    lock = SupervisorLock(fleet, host)
    lock.acquire()
    probe = HttpProbe(fleet.launcher.probe_timeout_s)
    supervisor: Supervisor | None = None
    rotating: asyncio.Task[None] | None = None
    changes: asyncio.Task[None] | None = None
    try:
        starting = asyncio.ensure_future(
            launch(fleet, host, spawner=SubprocessSpawner(), probe=probe, clock=SystemClock(),
                   refused=refused)
        )
        if not await _first(starting, stop):
            starting.cancel()
            return 130
        supervisor = starting.result()
        rotating = asyncio.create_task(keep_logs_capped(
            lambda: [*(w.plan.log for w in supervisor.workers.values()),
                     supervisor_log_path(fleet, host)],
            fleet.launcher, SystemClock(),
        ), name="rotating logs")
        if not progress:
            supervisor.listeners.append(_transition_logger())
        settled = asyncio.ensure_future(supervisor.wait_until(Supervisor.settled))
        if progress and console.is_terminal:
            with Live(get_renderable=lambda: worker_table(local_rows(supervisor)), console=console):
                await _first(settled, stop)
        elif progress:  # a pipe or a log: no live redraws, the table once, lines whole
            await _first(settled, stop)
            print_whole(console, worker_table(local_rows(supervisor)))
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
        reconciler = Reconciler(supervisor, fleet, host, clock=SystemClock(),
                                preflight=preflight, wake=change_asked)
        # Live workers adopted from a previous launcher may run with another file: apply it.
        changes = asyncio.create_task(_reconcile_then_serve(reconciler, fleet))
        await stop.wait()
        return 0
    finally:
        if rotating is not None:
            rotating.cancel()
        if changes is not None:
            changes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await changes
        if supervisor is not None:
            await supervisor.stop_all(keep_failed=True)
        await probe.close()
        lock.release()


async def _reconcile_then_serve(reconciler: Reconciler, fleet: Fleet) -> None:
    try:
        problems = await reconciler.apply(fleet)
    except Exception:  # never the end of supervising
        logging.getLogger(__name__).exception("bringing adopted workers to the file failed")
    else:
        for problem in problems:
            _log(problem)
    await reconciler.serve()


def apply_to_running(fleet_file: Path, fleet: Fleet, host: str, *, dry_run: bool) -> int:
    """Print the plan for `fleet` on `host`; unless `dry_run`, have the running supervisor
    carry it out (`launcher.reconcile`) and wait until it is done."""
    path = state_path(fleet, host)
    state = read_state(path)
    lock = SupervisorLock(fleet, host)
    holder = lock.holder() if lock.held_by_other() else None
    records = list(state.workers) if state else []
    if holder is None:  # nothing supervises: what would run is what still lives
        records = [r for r in records if process_is(r.pid, r.create_time)]
    needs_gpus = any(fleet.model(w.model).gpus_each for w in fleet.workers(host))
    view = gpu_view(inventory_for(fleet.host(host))) if needs_gpus else GpuView()
    plan = plan_for(fleet, host, records, view)
    for line in plan.describe():
        console.print(line, highlight=False, soft_wrap=True)
    if dry_run:
        console.print("dry run: nothing was changed", highlight=False)
        return 0
    if plan.empty:
        return 0
    assert holder is not None
    request = send_request(fleet_file, fleet, host, holder)
    state = None
    try:
        with console.status(f"the supervisor (pid {holder}) applies {fleet_file}…") as shown:
            while True:
                state = read_state(path)
                applying = (state.applying or {}) if state else {}
                if applying.get("request") == request and applying.get("status") != "applying":
                    break
                if not process_is(holder, create_time_of(holder)) or not lock.held_by_other():
                    err_console.print(f"the supervisor (pid {holder}) exited before it applied"
                                      f" the change; {supervisor_log_path(fleet, host)}")
                    return 1
                if state:
                    shown.update(_progress(state, host))
                time.sleep(0.2)
    except KeyboardInterrupt:
        err_console.print(f"the supervisor (pid {holder}) goes on applying it;"
                          " `modelserver status` shows how far it got")
        return 130
    assert state is not None and state.applying is not None
    console.print(worker_table(state_rows(fleet, host, state)))
    problems = state.applying.get("problems") or []
    for problem in problems:
        err_console.print(f"[red]{problem}[/]", highlight=False)
    if not problems:
        console.print(f"{host} runs as {fleet_file} says", highlight=False)
    return 1 if problems else 0


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
    if record.status == "waiting" and record.waiting_for:
        why = f" ({record.waiting_for})"
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
    started = time.time()
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
    state: HostState | None = None
    try:
        with console.status(f"starting {len(expected)} workers on {host}…") as shown:
            while (code := child.poll()) is None:
                state = read_state(path)
                if state and _launch_done(state, child.pid, expected):
                    break
                if state:
                    shown.update(_progress(state, host))
                time.sleep(0.2)
    except KeyboardInterrupt:
        err_console.print(f"the supervisor (pid {child.pid}) goes on in the background;"
                          " `modelserver status` shows it, `modelserver down` stops it")
        return 130
    if code is not None:
        state = read_state(path)  # what it wrote last, as it gave up
        written_now = state is not None and state.updated_at >= started
        if not (state and written_now and _all_failed(state, expected)):
            return _supervisor_exited(fleet, host, state, code, log)
    rows = state_rows(fleet, host, state)
    print_whole(console, worker_table(rows))
    failed = [r for r in rows if r["status"] == "failed"]
    for row in failed:
        err_console.print(f"[red]{row['name']} failed:[/] {row['last_error']}", highlight=False)
    if code is not None:  # every worker failed: nothing left to supervise
        err_console.print(f"no worker of {host} could start; the supervisor exited")
    elif not failed:
        console.print(f"supervisor pid {child.pid} runs in the background; log: {log}")
    return 1 if failed else 0


def _progress(state: HostState, host: str) -> str:
    counts: dict[str, int] = {}
    for worker in state.workers:
        counts[worker.status] = counts.get(worker.status, 0) + 1
    return f"workers on {host}: " + ", ".join(f"{n} {status}" for status, n in counts.items())


def _supervisor_exited(
    fleet: Fleet, host: str, state: HostState | None, code: int, log: Path
) -> int:
    """The detached supervisor ended before every worker was ready: say what each worker
    came to (`state`, the state file it left) and why, and return 1."""
    rows = state_rows(fleet, host, state)
    if state is not None and state.workers:
        print_whole(console, worker_table(rows))
    for row in rows:
        if row["status"] not in ("ready", "stopped") and row["last_error"]:
            err_console.print(f"[red]{row['name']} {row['status']}:[/] {row['last_error']}",
                              highlight=False)
    tail = log_tail(log, secrets=fleet_secrets(fleet))
    err_console.print(
        f"the supervisor exited with code {code} before every worker was ready; {log}"
        + (f":\n{tail}" if tail else ""),
        highlight=False,
    )
    return 1


def _all_failed(state: HostState, expected: set[str]) -> bool:
    statuses = {w.name: w.status for w in state.workers}
    return expected <= statuses.keys() and all(statuses[n] == "failed" for n in expected)


def _launch_done(state: HostState, supervisor_pid: int, expected: set[str]) -> bool:
    if state.supervisor is None or state.supervisor.pid != supervisor_pid:
        return False
    statuses = {w.name: w.status for w in state.workers}
    return expected <= statuses.keys() and all(
        statuses[name] in ("ready", "failed") for name in expected
    )
