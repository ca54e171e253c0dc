"""`modelserver down / status`: stop this host's supervisor and workers; show every
worker of the fleet."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from typing import Annotated, Any

import orjson
import psutil
import typer

from modelserver._console import print_whole
from modelserver.config import Fleet, WorkerSpec, load_fleet
from modelserver.errors import LaunchError
from modelserver.launcher.backends import backend_for
from modelserver.launcher.executor import cluster_executor
from modelserver.launcher.local import HttpProbe, detect_host
from modelserver.launcher.processes import stop_groups, stop_unrecorded_engines
from modelserver.launcher.state import (
    HostState,
    SupervisorLock,
    process_is,
    read_state,
    state_path,
    write_state,
)
from modelserver.launcher.worker_table import (
    FleetArg,
    HostOpt,
    console,
    err_console,
    state_rows,
    worker_row,
    worker_table,
)

# -- down ----------------------------------------------------------------------------------


def down(fleet: FleetArg, host: HostOpt = None) -> None:
    """Stop this host's supervisor and every worker it started; nothing is left running."""
    loaded = load_fleet(fleet)
    if loaded.cluster is not None:
        sys.exit(cluster_executor(loaded, host).down(loaded))
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
        sys.exit(cluster_executor(loaded, host).status(loaded, json_out))
    try:
        local: str | None = detect_host(loaded, host)
    except LaunchError:
        if host is not None:
            raise
        local = None  # this machine is none of the hosts: probe them all
    rows: list[dict[str, Any]] = []
    state = read_state(state_path(loaded, local)) if local is not None else None
    if local is not None:
        rows += state_rows(loaded, local, state)
    remote = [w for w in loaded.workers() if w.host != local]
    rows += asyncio.run(_probe_rows(loaded, remote))
    if json_out:
        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    table = worker_table(rows)
    if local is not None:
        pids = _supervisor_pids(loaded, local, state)
        table.caption = (
            f"supervisor of {local}: pid {', '.join(map(str, pids))}" if pids
            else f"no supervisor runs on {local}"
        )
    print_whole(console, table)


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
        worker_row(w, status="ready" if why is None else "unreachable", last_error=why)
        for w, why in zip(workers, answers, strict=True)
    ]
