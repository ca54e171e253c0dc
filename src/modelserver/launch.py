"""Bring up a host's share of the fleet: find the host, adopt what still runs, place the rest,
hand everything to a `Supervisor`. Also the HTTP probe the supervisor and `status` use.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import signal
import socket
from collections.abc import Callable, Sequence

import aiohttp
import psutil

from modelserver._files import remove_temp_files
from modelserver.backends import backend_for
from modelserver.backends.base import LaunchSpec
from modelserver.clock import Clock
from modelserver.config import Fleet, WorkerSpec, resolve_address
from modelserver.errors import LaunchError, NoGpuInventory
from modelserver.gpus import Gpu, GpuInventory, inventory_for
from modelserver.placement import GpuView, Placement, Plan, plan, settle
from modelserver.processes import AdoptedProcess, Spawner, engine_mark, stop_unrecorded_engines
from modelserver.state import HostState, WorkerRecord, log_path, process_is, read_state, state_path
from modelserver.supervisor import Probe, Supervisor, WorkerPlan

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})

log = logging.getLogger(__name__)


def detect_host(fleet: Fleet, explicit: str | None = None) -> str:
    """The fleet host this machine is: `--host`, or the one whose address is ours."""
    names = [h.name for h in fleet.hosts]
    if explicit is not None:
        if explicit not in names:
            raise LaunchError(f"--host {explicit!r} is not in the fleet file; hosts: {names}")
        return explicit
    from modelserver.netinfo import local_addresses

    mine = local_addresses() | LOOPBACK
    matches = [h.name for h in fleet.hosts if resolve_address(h.address) in mine]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise LaunchError(
            f"no host of the fleet file has an address of this machine ({sorted(mine)}); "
            f"pass --host, one of: {names}"
        )
    raise LaunchError(f"several hosts of the fleet file are this machine: {matches}; pass --host")


class HttpProbe:
    """GET each path, all must answer 200. One pooled session; a short timeout per request."""

    def __init__(self, timeout_s: float = 5.0) -> None:
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
                        return f"GET {path}: HTTP {response.status}"
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
    )


async def launch(
    fleet: Fleet,
    host: str,
    *,
    spawner: Spawner,
    probe: Probe,
    clock: Clock,
    inventory: GpuInventory | None = None,
) -> Supervisor:
    """Adopt live healthy workers of a previous launcher, place and start the others.

    Returns once every worker has been started (or failed to be placed); wait on
    `Supervisor.settled` for them to be ready.
    """
    specs = fleet.workers(host)
    # Only the lock holder writes the state file, so a temp file beside it is a write a kill
    # cut short: nobody will finish it.
    remove_temp_files(state_path(fleet, host))
    previous = read_state(state_path(fleet, host))
    adopted: dict[str, AdoptedProcess] = {}
    for record in previous.workers if previous else []:
        spec = next((s for s in specs if s.name == record.name), None)
        if spec is None or not process_is(record.pid, record.create_time):
            continue
        assert record.pid is not None
        health = backend_for(spec.backend).health_path
        if await probe(record.url, (health,), spec.api_key) is None:
            with contextlib.suppress(ProcessLookupError):
                adopted[spec.name] = AdoptedProcess(record.pid, record.create_time)
        else:  # ours but sick: clear the way (and its port) for a fresh start
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(record.pid, signal.SIGKILL)
            with contextlib.suppress(psutil.Error):
                await asyncio.to_thread(psutil.Process(record.pid).wait, 10)

    own_pids = frozenset(p.pid for p in adopted.values())
    # Engines a killed launcher started but never recorded: nobody watches them and they
    # hold their ports; stop them so each worker runs once.
    orphans = await asyncio.to_thread(stop_unrecorded_engines, state_path(fleet, host), own_pids)
    for pgid, name in orphans.items():
        log.warning("stopped %s (pid %d): started by a launcher that died before recording it",
                    name, pgid)
    needs_gpus = any(fleet.model(s.model).gpus_each for s in specs if s.name not in adopted)
    inventory = inventory or inventory_for(fleet.host(host))
    taken = _gpus_of_adopted(previous, adopted)

    def make_plan() -> Plan:
        view = gpu_view(inventory) if needs_gpus else GpuView()
        ports = ports_held_by_others([s for s in specs if s.name not in adopted], own_pids)
        return plan(fleet, host, view, ports_in_use=ports, own_pids=own_pids,
                    skip=frozenset(adopted), taken_gpus=taken(view.gpus))

    settled = await settle(make_plan, fleet.launcher.wait_for_gpus_s, clock)

    supervisor = Supervisor(
        host, fleet.fleet.name, fleet.launcher, spawner=spawner, probe=probe, clock=clock,
        state_file=state_path(fleet, host),
    )
    records = {w.name: w for w in previous.workers} if previous else {}
    for name, proc in adopted.items():
        spec = next(s for s in specs if s.name == name)
        record = records[name]
        placement = Placement(spec, _recorded_gpus(record.gpus), _restart_fraction(fleet, spec))
        supervisor.add(worker_plan(fleet, placement), record).start(adopted=proc)
    for placement in settled.placed:
        carried = _died_unwatched(records.get(placement.worker.name))
        supervisor.add(worker_plan(fleet, placement), carried).start()
    for blocked in settled.blocked:
        stub = WorkerPlan(blocked.worker, LaunchSpec((), {}), (), (), "",
                          log_path(fleet, blocked.worker.name))
        supervisor.add(stub).fail_now(f"cannot be placed: {blocked.reason}")
    supervisor.save()
    return supervisor


def _died_unwatched(record: WorkerRecord | None) -> WorkerRecord | None:
    """A worker that was meant to run but died while no launcher watched: starting it again
    is a restart. One that failed or was stopped starts afresh, with a new restart budget."""
    if record is None or record.status in ("failed", "stopped"):
        return None
    record.restarts += 1
    return record


def _gpus_of_adopted(
    previous: HostState | None, adopted: dict[str, AdoptedProcess]
) -> Callable[[Sequence[Gpu]], frozenset[int]]:
    """GPU indices held by adopted workers, given the inventory (records name UUIDs)."""
    ids = {g for w in (previous.workers if previous else []) if w.name in adopted for g in w.gpus}

    def indices(gpus: Sequence[Gpu]) -> frozenset[int]:
        return frozenset(g.index for g in gpus if g.uuid in ids or str(g.index) in ids)

    return indices


def _recorded_gpus(ids: Sequence[str]) -> tuple[Gpu, ...]:
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
