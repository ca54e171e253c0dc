"""Bring up a host's share of the fleet: find the host, adopt what still runs, place the rest
(each worker as soon as it can be), hand everything to a `Supervisor`. Also the HTTP probe
the supervisor and `status` use.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import ipaddress
import logging
import os
import signal
import socket
from collections.abc import Mapping, Sequence

import aiohttp
import psutil

from modelserver._files import remove_temp_files
from modelserver.clock import Clock
from modelserver.config import Fleet, WorkerSpec, resolve_address
from modelserver.errors import LaunchError, NoGpuInventory
from modelserver.launcher.backends import backend_for
from modelserver.launcher.backends.base import LaunchSpec
from modelserver.launcher.gpus import Gpu, GpuInventory, inventory_for
from modelserver.launcher.lifecycle import WorkerStatus
from modelserver.launcher.placement import GpuView, Placement, Plan, plan
from modelserver.launcher.processes import (
    AdoptedProcess,
    Spawner,
    engine_mark,
    stop_unrecorded_engines,
)
from modelserver.launcher.secrets import fleet_secrets
from modelserver.launcher.state import WorkerRecord, log_path, process_is, read_state, state_path
from modelserver.launcher.supervisor import Probe, Supervisor, WorkerPlan

S = WorkerStatus

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})

log = logging.getLogger(__name__)


def detect_host(fleet: Fleet, explicit: str | None = None) -> str:
    """The fleet host this machine is: `--host`, or the one whose address is ours (an IP of
    one of our interfaces, or a DNS name that resolves to one or is our host name)."""
    names = [h.name for h in fleet.hosts]
    if explicit is not None:
        if explicit not in names:
            raise LaunchError(f"--host {explicit!r} is not in the fleet file; hosts: {names}")
        return explicit
    from modelserver.netinfo import local_addresses

    mine = local_addresses() | LOOPBACK
    matches = [h.name for h in fleet.hosts if _is_this_machine(resolve_address(h.address), mine)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise LaunchError(
            f"no host of the fleet file has an address of this machine ({sorted(mine)}); "
            f"pass --host, one of: {names}"
        )
    raise LaunchError(f"several hosts of the fleet file are this machine: {matches}; pass --host")


def _is_this_machine(address: str, mine: set[str] | frozenset[str]) -> bool:
    if address in mine:
        return True
    try:
        ipaddress.ip_address(address)
        return False  # an IP that is not ours
    except ValueError:
        pass  # a DNS name
    if address.lower() in {socket.gethostname().lower(), socket.getfqdn().lower()}:
        return True
    try:
        resolved = socket.getaddrinfo(address, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        return False
    return any(str(info[4][0]).split("%", 1)[0] in mine for info in resolved)


LOADING_STATUS = 503
"""What llama.cpp's and SGLang's /health answer while the model loads."""


def http_refusal(path: str, status: int) -> str:
    """A probe's reason for a non-200 answer (`answered_loading` reads it back)."""
    return f"GET {path}: HTTP {status}"


def answered_loading(why: str | None) -> bool:
    """True if a probe failed because the engine said it is still loading (HTTP 503)."""
    return why is not None and why.endswith(f": HTTP {LOADING_STATUS}")


class HttpProbe:
    """GET each path, all must answer 200. One pooled session; a timeout per request
    (`launcher.probe_timeout_s`: SGLang's /health itself may take up to 20 s)."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, url: str, paths: Sequence[str], api_key: str | None) -> str | None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        for path in paths:
            try:
                async with self._session.get(url + path, headers=headers) as response:
                    if response.status != 200:
                        return http_refusal(path, response.status)
            except TimeoutError:
                return f"GET {path}: no answer within {self._timeout.total:g}s"
            except aiohttp.ClientError as exc:
                return f"GET {path}: {type(exc).__name__}: {exc}"
        return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def ports_held_by_others(workers: Sequence[WorkerSpec], own_pids: frozenset[int]) -> dict[int, str]:
    """Ports of `workers` someone else listens on, with who ("pid 81 (nginx)") if visible."""
    held: dict[int, str] = {}
    for worker in workers:
        family = socket.AF_INET6 if ":" in worker.address else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((worker.address, worker.port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    holder = _listener(worker.port)
                    if isinstance(holder, str):
                        held[worker.port] = holder
                    elif holder[0] not in own_pids:
                        held[worker.port] = f"pid {holder[0]} ({holder[1]})"
    return held


def _listener(port: int) -> tuple[int, str] | str:
    """Who listens on `port` (pid, name), or a description when no listener is visible."""
    try:
        connections = psutil.net_connections(kind="inet")
    except psutil.AccessDenied:
        return "a process we may not see"
    states = set()
    for conn in connections:
        if not conn.laddr or conn.laddr.port != port:
            continue
        if conn.status == psutil.CONN_LISTEN and conn.pid is not None:
            try:
                return conn.pid, psutil.Process(conn.pid).name()
            except psutil.Error:
                return conn.pid, "?"
        states.add(conn.status)
    if states:
        # e.g. an outgoing connection that got this port as its ephemeral port
        return f"a connection ({', '.join(sorted(states))})"
    return "a process we may not see"


def gpu_view(inventory: GpuInventory) -> GpuView:
    try:
        return GpuView(tuple(inventory.gpus()))
    except NoGpuInventory as exc:
        return GpuView(unavailable=str(exc))


def worker_plan(fleet: Fleet, placement: Placement) -> WorkerPlan:
    backend = backend_for(placement.worker.backend)
    launch = backend.command(placement, fleet)
    mark = engine_mark(state_path(fleet, placement.worker.host), placement.worker.name)
    return WorkerPlan(
        spec=placement.worker,
        launch=dataclasses.replace(launch, env={**launch.env, **mark}),
        gpus=tuple(placement.gpu_ids),
        ready_paths=backend.ready_paths,
        health_path=backend.health_path,
        log=log_path(fleet, placement.worker.name),
        mem_fraction=placement.mem_fraction,
    )


def unplaced_plan(fleet: Fleet, spec: WorkerSpec) -> WorkerPlan:
    """The plan of a worker not placed yet: no command, no GPUs (placement fills them in)."""
    return WorkerPlan(spec, LaunchSpec((), {}), (), (), "", log_path(fleet, spec.name))


NOT_PLACED_YET = "not placed yet: the launcher is checking what already runs"


async def launch(
    fleet: Fleet,
    host: str,
    *,
    spawner: Spawner,
    probe: Probe,
    clock: Clock,
    inventory: GpuInventory | None = None,
    refused: Mapping[str, str] | None = None,
) -> Supervisor:
    """Take over `host`'s share of the fleet; call with the supervisor lock held.

    The state file names this supervisor at once, every worker `waiting` (those a previous
    launcher left alive recorded as they were), so `status` and `down` see it from the
    start. Then live healthy workers are adopted (ones still loading as starting), engines
    nobody recorded are stopped, and the others are placed in the background: each starts as
    soon as its GPUs and port are free, without waiting for the others, and fails once
    `launcher.wait_for_gpus_s` runs out. `refused` (worker -> why, from `preflight`) fail at
    once. Wait on `Supervisor.settled` for every worker to be ready or failed.
    """
    specs = fleet.workers(host)
    path = state_path(fleet, host)
    # Only the lock holder writes the state file, so a temp file beside it is a write a kill
    # cut short: nobody will finish it.
    remove_temp_files(path)
    previous = read_state(path)
    records = {w.name: w for w in previous.workers} if previous else {}
    supervisor = Supervisor(
        host, fleet.fleet.name, fleet.launcher, spawner=spawner, probe=probe, clock=clock,
        state_file=path, secrets=fleet_secrets(fleet),
    )
    live: dict[str, WorkerRecord] = {}
    with supervisor.saving_once():
        for spec in specs:
            record = records.get(spec.name)
            if record is not None and process_is(record.pid, record.create_time):
                live[spec.name] = record
                supervisor.carry(record)
                continue
            worker = supervisor.add(unplaced_plan(fleet, spec), _died_unwatched(record))
            why_not = (refused or {}).get(spec.name)
            if why_not is not None:
                worker.fail_now(why_not)
            else:
                worker.wait(NOT_PLACED_YET)

    specs_by_name = {s.name: s for s in specs}
    await asyncio.gather(*(
        _take_over(supervisor, fleet, specs_by_name[name], record, probe)
        for name, record in live.items()
    ))
    own_pids = _pids_of(supervisor)
    # Engines a killed launcher started but never recorded: nobody watches them and they
    # hold their ports; stop them so each worker runs once.
    orphans = await asyncio.to_thread(stop_unrecorded_engines, path, own_pids)
    for pgid, name in orphans.items():
        log.warning("stopped %s (pid %d): started by a launcher that died before recording it",
                    name, pgid)
    supervisor.placing = asyncio.create_task(
        place_waiting(supervisor, fleet, host, inventory or inventory_for(fleet.host(host)),
                      clock),
        name=f"placing workers of {host}",
    )
    return supervisor


async def _take_over(
    supervisor: Supervisor, fleet: Fleet, spec: WorkerSpec, record: WorkerRecord, probe: Probe
) -> None:
    """Adopt a live worker a previous launcher recorded: healthy as ready, still loading
    (it was starting, or answers 503) as starting. A sick one is killed and started anew."""
    assert record.pid is not None
    why = await probe(record.url, (backend_for(spec.backend).health_path,), spec.api_key)
    loading = why is not None and (record.status == "starting" or answered_loading(why))
    if why is None or loading:
        try:
            proc = AdoptedProcess(record.pid, record.create_time)
        except ProcessLookupError:
            pass  # it died meanwhile: place it afresh
        else:
            placement = Placement(spec, recorded_gpus(record.gpus), _restart_fraction(fleet, spec))
            supervisor.add(worker_plan(fleet, placement), record).start(
                adopted=proc, loading=loading
            )
            return
    else:  # ours but sick: clear the way (and its port) for a fresh start
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(record.pid, signal.SIGKILL)
        with contextlib.suppress(psutil.Error):
            await asyncio.to_thread(psutil.Process(record.pid).wait, 10)
    supervisor.add(unplaced_plan(fleet, spec), _died_unwatched(record)).wait(NOT_PLACED_YET)


def _pids_of(supervisor: Supervisor) -> frozenset[int]:
    return frozenset(w.record.pid for w in supervisor.workers.values() if w.record.pid)


async def place_waiting(
    supervisor: Supervisor,
    fleet: Fleet,
    host: str,
    inventory: GpuInventory,
    clock: Clock,
    wait_s: float | None = None,
) -> None:
    """Place every waiting worker that can be placed now and start it; tell the others why
    they wait; again every `placement_poll_s` until none waits or `wait_s` (default
    `wait_for_gpus_s`) ran out (then they fail with the last reason). Bounded by design:
    the seed waited forever."""
    settings = fleet.launcher
    patience = settings.wait_for_gpus_s if wait_s is None else wait_s
    deadline = clock.now() + patience
    try:
        while True:
            waiting = {n for n, w in supervisor.workers.items() if w.status is S.WAITING}
            if not waiting:
                return
            current = await asyncio.to_thread(
                _plan_now, fleet, host, inventory, waiting, _running_gpus(supervisor),
                _pids_of(supervisor),
            )
            out_of_time = clock.now() >= deadline
            for placement in current.placed:
                worker = supervisor.workers[placement.worker.name]
                if worker.status is S.WAITING:  # not stopped meanwhile
                    worker.start(plan=worker_plan(fleet, placement))
            for blocked in current.blocked:
                worker = supervisor.workers[blocked.worker.name]
                if worker.status is not S.WAITING:
                    continue
                if blocked.final or out_of_time:
                    bound = (f"launcher.wait_for_gpus_s = {patience:g} s" if wait_s is None
                             else f"{patience:g} s")
                    waited = f" within {bound}" if patience and not blocked.final else ""
                    worker.fail_now(f"cannot be placed{waited}: {blocked.reason}")
                else:
                    worker.wait(blocked.reason)
            if out_of_time:
                return
            await clock.sleep(min(settings.placement_poll_s, max(0.0, deadline - clock.now())))
    except Exception as exc:  # a bug or an odd machine must not leave workers waiting forever
        log.exception("placing the workers of %s failed", host)
        for worker in supervisor.workers.values():
            if worker.status is S.WAITING:
                worker.fail_now(f"cannot be placed: the launcher failed ({exc!r})")


def _plan_now(
    fleet: Fleet,
    host: str,
    inventory: GpuInventory,
    waiting: set[str],
    running_gpus: frozenset[str],
    own_pids: frozenset[int],
) -> Plan:
    """One placement of the `waiting` workers around the GPUs running workers hold (runs in
    a thread: NVML and the port check take a moment)."""
    pending = [w for w in fleet.workers(host) if w.name in waiting]
    needs_gpus = any(fleet.model(w.model).gpus_each for w in pending)
    view = gpu_view(inventory) if needs_gpus else GpuView()
    taken = frozenset(
        g.index for g in view.gpus if (g.uuid and g.uuid in running_gpus)
        or str(g.index) in running_gpus
    )
    ports = ports_held_by_others(pending, own_pids)
    skip = frozenset(w.name for w in fleet.workers(host) if w.name not in waiting)
    return plan(fleet, host, view, ports_in_use=ports, own_pids=own_pids, skip=skip,
                taken_gpus=taken)


def _running_gpus(supervisor: Supervisor) -> frozenset[str]:
    """GPU ids (UUIDs or indices) held by workers that run or will run again (not failed,
    stopped or waiting)."""
    idle = (S.WAITING, S.FAILED, S.STOPPED)
    return frozenset(
        g for w in supervisor.workers.values() if w.status not in idle for g in w.record.gpus
    )


def _died_unwatched(record: WorkerRecord | None) -> WorkerRecord | None:
    """A worker that was meant to run but died while no launcher watched: starting it again
    is a restart (one that only waited to be placed keeps its count: it did not run). One that
    failed or was stopped starts afresh, with a new restart budget."""
    if record is None or record.status in ("failed", "stopped"):
        return None
    if record.status != "waiting":
        record.restarts += 1
    return record


def recorded_gpus(ids: Sequence[str]) -> tuple[Gpu, ...]:
    """GPUs of an adopted worker as its record names them (enough to restart it)."""
    return tuple(
        Gpu(index=int(i) if i.isdigit() else -1, uuid="" if i.isdigit() else i,
            name="", total_bytes=0, used_bytes=0)
        for i in ids
    )


def _restart_fraction(fleet: Fleet, spec: WorkerSpec) -> float | None:
    """The memory fraction to restart an adopted worker with: its GPUs now hold its own
    memory, so the free-memory rule cannot be applied; use the override or the cap."""
    model = fleet.model(spec.model)
    if spec.backend not in ("sglang", "vllm"):
        return None
    override = model.options.get("mem_fraction")
    return float(override) if override is not None else fleet.launcher.mem_fraction_max
