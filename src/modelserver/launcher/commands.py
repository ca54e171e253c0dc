"""`modelserver up / down / status / logs`: the launcher's commands."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import orjson
import psutil
import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from modelserver.clock import SystemClock
from modelserver.config import Fleet, WorkerSpec, load_fleet
from modelserver.errors import LaunchError
from modelserver.launcher.backends import backend_for
from modelserver.launcher.executor import Executor, executor_for
from modelserver.launcher.local import HttpProbe, detect_host, launch
from modelserver.launcher.preflight import preflight
from modelserver.launcher.processes import SubprocessSpawner, stop_groups, stop_unrecorded_engines
from modelserver.launcher.secrets import fleet_secrets
from modelserver.launcher.state import (
    LOG_MODE,
    HostState,
    SupervisorLock,
    WorkerRecord,
    check_state_dir,
    log_path,
    log_tail,
    process_is,
    read_state,
    redact,
    state_path,
    supervisor_log_path,
    write_state,
)
from modelserver.launcher.supervisor import Supervisor

console = Console()
err_console = Console(stderr=True)

FleetArg = Annotated[Path, typer.Argument(help="The fleet file (TOML).", show_default=False)]
HostOpt = Annotated[
    str | None,
    typer.Option("--host", help="Which host of the fleet this machine is (default: by address)."),
]

STATUS_STYLE = {
    "waiting": "yellow", "ready": "green", "starting": "yellow", "backoff": "yellow",
    "failed": "red", "stopping": "yellow", "stopped": "dim", "gone": "red", "unreachable": "red",
}


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(down)
    app.command()(status)
    app.command()(logs)


def _cluster_executor(fleet: Fleet, host: str | None) -> Executor:
    """The executor of a fleet with [cluster] (its module, and Ray, imported only then)."""
    if host is not None:
        raise LaunchError("--host: not used in cluster mode; Ray places the replicas")
    executor = executor_for(fleet)
    assert executor is not None
    return executor


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
    if loaded.cluster is not None:
        sys.exit(_cluster_executor(loaded, host).up(loaded))
    name = detect_host(loaded, host)
    if not loaded.workers(name):
        raise LaunchError(f"the fleet file has no workers on host {name!r}")
    check_state_dir(loaded)
    # Weights, GPUs, foreign ports: refuse before starting anything. What this machine lacks
    # (NVML, an engine) fails only the workers that need it.
    refused = preflight(loaded, name)
    if detach:
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
    lock = SupervisorLock(fleet, host)
    lock.acquire()
    probe = HttpProbe(fleet.launcher.probe_timeout_s)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    supervisor: Supervisor | None = None
    try:
        starting = asyncio.ensure_future(
            launch(fleet, host, spawner=SubprocessSpawner(), probe=probe, clock=SystemClock(),
                   refused=refused)
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
    rows = _state_rows(fleet, host, state)
    console.print(_table(rows))
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
    rows = _state_rows(fleet, host, state)
    if state is not None and state.workers:
        console.print(_table(rows))
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


# -- down ----------------------------------------------------------------------------------


def down(fleet: FleetArg, host: HostOpt = None) -> None:
    """Stop this host's supervisor and every worker it started; nothing is left running."""
    loaded = load_fleet(fleet)
    if loaded.cluster is not None:
        sys.exit(_cluster_executor(loaded, host).down(loaded))
    name = detect_host(loaded, host)
    path = state_path(loaded, name)
    grace = loaded.launcher.stop_grace_s
    try:
        state = read_state(path)
    except LaunchError as exc:
        # Unreadable: the engines started for it still carry its name in their environment.
        err_console.print(f"[yellow]warning:[/] {exc}", highlight=False)
        state = None
        unreadable = True
    else:
        unreadable = False
    supervisors = _supervisor_pids(loaded, name, state)
    was_running = [w.name for w in (state.workers if state else [])
                   if process_is(w.pid, w.create_time)]
    for pid in supervisors:
        # The supervisor stops its workers first (grace each, in parallel), waiting ones too.
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace + 30)
            except psutil.TimeoutExpired:
                proc.kill()
    if supervisors and not unreadable:
        with contextlib.suppress(LaunchError):
            state = read_state(path) or state
    # Whatever still runs (a supervisor killed with SIGKILL left its workers): stop by group.
    leftovers = [w for w in (state.workers if state else [])
                 if process_is(w.pid, w.create_time)]
    stop_groups([w.pid for w in leftovers if w.pid is not None], grace)
    # Engines no state file names (a launcher killed between spawning and recording them).
    unrecorded = stop_unrecorded_engines(path, keep=())
    if state is None and not unreadable and not supervisors and not unrecorded:
        console.print(f"nothing runs on {name} (no state file at {path})")
        return
    if state is None:
        state = HostState(host=name, fleet=loaded.fleet.name)
    for worker in state.workers:
        worker.status = "stopped"
        worker.pid = None
        worker.create_time = None
        worker.waiting_for = None
    state.supervisor = None
    try:
        write_state(path, state)
    except OSError as exc:
        raise LaunchError(f"{path}: cannot write the state file ({exc.strerror or exc})") from None
    stopped = len(set(was_running) | {w.name for w in leftovers}) + len(unrecorded)
    if not supervisors and not stopped:
        console.print(f"nothing runs on {name} (its workers were stopped already)")
        return
    what = [f"supervisor pid {', '.join(map(str, supervisors))}"] if supervisors else []
    what.append(f"{stopped} running worker{'s' if stopped != 1 else ''}")
    console.print(f"stopped {name}: " + ", ".join(what))


def _supervisor_pids(fleet: Fleet, host: str, state: HostState | None) -> list[int]:
    """The live supervisor of `host`: the one the state file names, and the lock holder (a
    supervisor that has not written the state file yet)."""
    pids = []
    sup = state.supervisor if state else None
    if sup is not None and process_is(sup.pid, sup.create_time):
        pids.append(sup.pid)
    holder = SupervisorLock(fleet, host).holder()
    if holder is not None and holder not in pids and holder != os.getpid():
        pids.append(holder)
    return pids


# -- status --------------------------------------------------------------------------------


def status(
    fleet: FleetArg,
    host: HostOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON, one object per worker.")]
    = False,
) -> None:
    """Every worker of the fleet: this host's from its state file, the others' by probing."""
    loaded = load_fleet(fleet)
    if loaded.cluster is not None:
        sys.exit(_cluster_executor(loaded, host).status(loaded, json_out))
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
        pids = _supervisor_pids(loaded, local, state)
        table.caption = (
            f"supervisor of {local}: pid {', '.join(map(str, pids))}" if pids
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
                waiting_for=record.waiting_for,
            )
            if record.pid is not None and not process_is(record.pid, record.create_time):
                row.update(status="gone", last_error="its process is no longer running")
        rows.append(row)
    return rows


async def _probe_rows(fleet: Fleet, workers: list[WorkerSpec]) -> list[dict[str, Any]]:
    # A glance from outside, as the router's probes see them (not the supervisor's patience).
    probe = HttpProbe(fleet.router.health.timeout_s)
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
        "gpus": [], "last_error": None, "started_at": None, "waiting_for": None,
    }
    row.update(fields)
    return row


def _local_rows(supervisor: Supervisor) -> list[dict[str, Any]]:
    return [dataclasses.asdict(w.record) for w in supervisor.workers.values()]


def _table(rows: list[dict[str, Any]]) -> Table:
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
    if loaded.cluster is not None:
        sys.exit(_cluster_executor(loaded, None).logs(loaded, worker, follow, lines))
    spec = resolve_worker(loaded, worker)
    path = log_path(loaded, spec.name)
    if not path.exists():
        raise LaunchError(f"{spec.name} has no log yet ({path})")
    secrets = fleet_secrets(loaded)  # engines print their own keys; we do not pass them on
    with open(path, "rb") as handle:
        data = handle.read()
        text = data.decode("utf-8", "replace").splitlines()[-lines:] if lines > 0 else []
        for line in text:
            sys.stdout.write(redact(line, secrets) + "\n")
        sys.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            pending = b""
            while follow:
                chunk = handle.read()
                if chunk:
                    # Whole lines only, so a key is never cut in two around the redaction.
                    *done, pending = (pending + chunk).split(b"\n")
                    for line_bytes in done:
                        sys.stdout.write(redact(line_bytes.decode("utf-8", "replace"),
                                                secrets) + "\n")
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
