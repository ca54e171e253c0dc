"""`up` on a running fleet: bring this host's workers to a changed fleet file, one loop.

How the running supervisor learns the new wanted state: it stays the only owner of the
workers. A second `modelserver up FLEET` finds the supervisor lock held, prints the plan
(`plan_for`, from the state file) and, unless `--dry-run`, writes
`{state_dir}/up-request-{host}.json` (the fleet file's path and a request id) and sends the
lock holder SIGUSR1. The supervisor's `Reconciler.serve` loop wakes, loads that file,
plans again from its own workers and carries the plan out; `HostState.applying` in the
state file says how it goes (the request id, the plan, `applying` / `done` / `failed`),
which is what the second `up` waits on. Requests are taken one at a time, the last one
written wins: a change asked for while one is under way is applied after it.

Carrying a plan out (`Rollout`), in the order `launcher.plan` explains: workers whose GPUs
or port a start needs are drained and stopped first; the adds start and must be ready;
each model's replacements go one at a time (drain, stop, start anew on the same port,
ready), `drain_notice_s` after the previous one came back so the routers see it ready
again; then the removals are drained and stopped. Draining marks the worker `draining` in
the state file (routers reading the state files stop picking it) and waits for its engine
to report nothing in flight (its `/metrics`), at most `launcher.drain_timeout_s`.
A replacement that does not become ready stops that model's rollout: the replicas not
replaced yet keep serving as they were, and `applying` says what failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from modelserver._files import atomic_write_json, read_json
from modelserver.clock import Clock
from modelserver.config import Fleet, WorkerSpec, load_fleet
from modelserver.errors import LaunchError, UnknownModel
from modelserver.launcher.gpus import GpuInventory, inventory_for
from modelserver.launcher.lifecycle import WorkerStatus
from modelserver.launcher.local import (
    gpu_view,
    place_waiting,
    recorded_gpus,
    unplaced_plan,
    worker_plan,
)
from modelserver.launcher.placement import GpuView, Placement
from modelserver.launcher.plan import (
    ANY_GPU,
    Action,
    Change,
    Fingerprint,
    RolloutPlan,
    Running,
    Wanted,
    plan_changes,
)
from modelserver.launcher.secrets import fleet_secrets
from modelserver.launcher.state import STATE_MODE, WorkerRecord
from modelserver.launcher.supervisor import InFlight, Supervisor, Worker, fingerprint

S = WorkerStatus
log = logging.getLogger(__name__)

REQUEST_SIGNAL = signal.SIGUSR1
"""What a second `up` sends the supervisor after writing its request."""

IN_FLIGHT_METRICS: dict[str, tuple[str, ...]] = {
    # sglang:num_running_reqs / num_queue_reqs: python/sglang/srt/metrics/collector.py
    # (sgl-project/sglang); our simulated engine reports the same names.
    "sglang": ("sglang:num_running_reqs", "sglang:num_queue_reqs"),
    "sim": ("sglang:num_running_reqs", "sglang:num_queue_reqs"),
    # vllm/v1/metrics/loggers.py (vllm-project/vllm).
    "vllm": ("vllm:num_requests_running", "vllm:num_requests_waiting"),
    # tools/server/server.cpp (ggml-org/llama.cpp), served with --metrics only.
    "llamacpp": ("llamacpp:requests_processing", "llamacpp:requests_deferred"),
}
"""The gauges whose sum is an engine's requests in flight (running and queued)."""

PLACING_CHANGED = "placing it as the changed fleet file says"


# -- the request a second `up` leaves the supervisor ------------------------------------------


def request_path(fleet: Fleet, host: str) -> Path:
    return fleet.state_dir() / f"up-request-{host}.json"


def send_request(fleet_file: Path, fleet: Fleet, host: str, supervisor_pid: int) -> str:
    """Ask the running supervisor to apply `fleet_file`; the request's id."""
    request = uuid.uuid4().hex
    atomic_write_json(
        request_path(fleet, host),
        {"request": request, "fleet_file": str(fleet_file.resolve()), "at": time.time()},
        STATE_MODE,
    )
    os.kill(supervisor_pid, REQUEST_SIGNAL)
    return request


def read_request(path: Path) -> tuple[str, Path] | None:
    """(request id, fleet file) of the last request, None if there is none (or not one)."""
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    request, fleet_file = data.get("request"), data.get("fleet_file")
    if not isinstance(request, str) or not isinstance(fleet_file, str):
        return None
    return request, Path(fleet_file)


# -- the plan, from what runs ----------------------------------------------------------------


def running_workers(records: Iterable[WorkerRecord]) -> list[Running]:
    return [
        Running(r.name, r.model, r.status, r.port, Fingerprint.from_json(r.started_with))
        for r in records
    ]


def wanted_workers(
    fleet: Fleet, host: str, running: Mapping[str, Running], view: GpuView
) -> list[Wanted]:
    """Each worker of `host` with what it would be started with now: on the GPUs it holds
    when the file lets it keep them (or the ones the file names), with the memory fraction
    it got unless the file sets one."""
    secrets = fleet_secrets(fleet)
    wanted = []
    specs = fleet.workers(host)
    for spec in specs:
        model = fleet.model(spec.model)
        current = running.get(spec.name)
        old = current.started_with if current is not None else None
        gpus = _wanted_gpus(fleet, spec, old, view)
        fraction = model.options.get("mem_fraction")
        if fraction is None and old is not None:
            fraction = old.mem_fraction
        placement = Placement(spec, recorded_gpus(gpus),
                              float(fraction) if fraction is not None else None)
        replicas = sum(1 for s in specs if s.model == spec.model)
        started_with = fingerprint(worker_plan(fleet, placement), secrets)
        wanted.append(Wanted(spec.name, spec.model, spec.port, replicas, started_with))
    return wanted


def _wanted_gpus(
    fleet: Fleet, spec: WorkerSpec, old: Fingerprint | None, view: GpuView
) -> tuple[str, ...]:
    model = fleet.model(spec.model)
    need = model.gpus_each
    if not need:
        return ()
    if model.gpus is not None:
        group = model.gpus[spec.replica * need : (spec.replica + 1) * need]
        return tuple(_gpu_id(ref, view) for ref in group)
    if old is not None and len(old.gpus) == need:
        return old.gpus  # placement chose them: they may stay
    return (ANY_GPU,) * need


def _gpu_id(ref: int | str, view: GpuView) -> str:
    """How the state file names the GPU the fleet file calls `ref` (UUID where known)."""
    text = str(ref)
    if text.isdigit():
        found = next((g for g in view.gpus if g.index == int(text)), None)
        return (found.uuid or text) if found is not None else text
    return text


def plan_for(
    fleet: Fleet, host: str, records: Sequence[WorkerRecord], view: GpuView
) -> RolloutPlan:
    """What applying `fleet` to workers recorded as `records` changes on `host`."""
    running = {r.name: r for r in running_workers(records)}
    return plan_changes(host, wanted_workers(fleet, host, running, view), list(running.values()))


# -- carrying it out -------------------------------------------------------------------------


@dataclass
class Rollout:
    """One plan carried out on `supervisor`'s workers with the new `fleet`."""

    supervisor: Supervisor
    fleet: Fleet
    host: str
    inventory: GpuInventory
    clock: Clock
    in_flight: Callable[[WorkerSpec | WorkerRecord], InFlight]
    refused: Mapping[str, str]

    def __post_init__(self) -> None:
        self.specs = {s.name: s for s in self.fleet.workers(self.host)}
        self.stopped: set[str] = set()
        self.problems: list[str] = []

    async def run(self, plan: RolloutPlan) -> list[str]:
        """Carry `plan` out; what went wrong (empty if all of it went well)."""
        # Workers start with the new file's settings; nothing is placed with the old one.
        self.supervisor.settings = self.fleet.launcher
        placing = self.supervisor.placing
        if placing is not None and not placing.done():
            placing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await placing
        by_name = {c.worker: c for c in plan.changes}
        await asyncio.gather(*(self._take_out(by_name[n]) for n in plan.early_stops))
        await asyncio.gather(*(self._start(c) for c in plan.of(Action.ADD)))
        await asyncio.gather(*(self._replace_in_turn(r)
                               for r in plan.replacement_rounds().values()))
        await asyncio.gather(*(self._take_out(c) for c in plan.of(Action.REMOVE)
                               if c.worker not in self.stopped))
        if any(w.status is S.WAITING for w in self.supervisor.workers.values()):
            self._place_now()  # still waiting for GPUs: placed with the new file from now on
        return self.problems

    async def _replace_in_turn(self, changes: Sequence[Change]) -> None:
        for index, change in enumerate(changes):
            if index and change.serving:
                # The routers must see the previous replacement ready before this one goes.
                await self.clock.sleep(self.fleet.launcher.drain_notice_s)
            if change.worker not in self.stopped:
                await self._take_out(change)
            if not await self._start(change):
                rest = [c.worker for c in changes[index + 1:]]
                if rest:
                    self.problems.append(f"{change.model}: not replaced, as {change.worker}"
                                         f" failed: {', '.join(rest)} (they run as before)")
                return

    async def _take_out(self, change: Change) -> None:
        worker = self.supervisor.workers.get(change.worker)
        if worker is not None:
            settings = self.fleet.launcher
            outcome = await worker.drain(settings.drain_notice_s, settings.drain_timeout_s,
                                         self.in_flight(worker.record))
            log.info("%s %s", change.worker, outcome)
            if change.action is Action.REMOVE:
                self.supervisor.remove(change.worker)
        self.stopped.add(change.worker)

    async def _start(self, change: Change) -> bool:
        """Start the file's worker `change.worker` and wait until it is ready or failed."""
        spec = self.specs[change.worker]
        worker = self.supervisor.add(unplaced_plan(self.fleet, spec))
        why_not = self.refused.get(spec.name)
        if why_not is not None:
            worker.fail_now(why_not)
        else:
            worker.wait(PLACING_CHANGED)
            self._place_now()
            await self.supervisor.wait_until(lambda s: _settled(s, worker))
        if worker.status is S.FAILED:
            first = (worker.record.last_error or "").splitlines()[:1]
            self.problems.append(f"{spec.name} did not start: {''.join(first)}")
            return False
        return True

    def _place_now(self) -> None:
        """Place the waiting workers now, with the new file (a loop that sleeps between
        rounds is replaced: it cannot be cut between a placement and its start)."""
        if self.supervisor.placing is not None and not self.supervisor.placing.done():
            self.supervisor.placing.cancel()
        settings = self.fleet.launcher
        self.supervisor.placing = asyncio.create_task(
            place_waiting(self.supervisor, self.fleet, self.host, self.inventory, self.clock,
                          # GPU memory and ports of a worker just stopped may take a moment
                          # to be released: as long as its processes were given to exit.
                          wait_s=max(settings.wait_for_gpus_s, settings.stop_grace_s)),
            name=f"placing workers of {self.host}",
        )


def _settled(supervisor: Supervisor, worker: Worker) -> bool:
    return supervisor.workers.get(worker.record.name) is not worker or worker.status in (
        S.READY, S.FAILED)


class EngineLoad:
    """Requests in flight at an engine, from its Prometheus `/metrics` (one pooled session)."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def of(self, worker: WorkerSpec | WorkerRecord, backend: str) -> InFlight:
        names = IN_FLIGHT_METRICS.get(backend, ())

        async def in_flight() -> int | None:
            return await self.count(worker.url, names) if names else None

        return in_flight

    async def count(self, url: str, names: Sequence[str]) -> int | None:
        """The sum of the gauges `names` at `url`/metrics; None if none of them is there."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.get(url + "/metrics") as response:
                if response.status != 200:
                    return None
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError):
            return None
        total, seen = 0.0, False
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in names:
                    total += sample.value
                    seen = True
        return round(total) if seen else None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# -- the supervisor's loop -------------------------------------------------------------------


class Reconciler:
    """The supervisor's one loop for changes: each `up` request, planned and carried out."""

    def __init__(
        self,
        supervisor: Supervisor,
        fleet: Fleet,
        host: str,
        *,
        clock: Clock,
        inventory: GpuInventory | None = None,
        preflight: Callable[[Fleet, str], Mapping[str, str]] | None = None,
        wake: asyncio.Event | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.fleet = fleet
        self.host = host
        self._clock = clock
        self._inventory = inventory
        self._preflight = preflight
        self.wake = wake or asyncio.Event()
        """Set when a request may be waiting (the supervisor's SIGUSR1 handler sets it)."""
        self._load = EngineLoad(fleet.launcher.probe_timeout_s)

    async def serve(self) -> None:
        """Apply each request as it comes (`wake` set by SIGUSR1), until cancelled."""
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                request = read_request(request_path(self.fleet, self.host))
                if request is not None and request[0] != (self.supervisor.applying or {}).get(
                        "request"):
                    await self.apply_file(*request)
        finally:
            await self._load.close()

    async def apply_file(self, request: str, fleet_file: Path) -> None:
        self._record(request, fleet_file, "applying")
        try:
            fleet = await asyncio.to_thread(load_fleet, fleet_file)
            if fleet.state_dir() != self.fleet.state_dir():
                raise LaunchError(
                    f"{fleet_file}: fleet.state_dir is {fleet.state_dir()}, but this supervisor"
                    f" keeps its state in {self.fleet.state_dir()}; `modelserver down` first")
            if self.host not in {h.name for h in fleet.hosts}:
                raise LaunchError(f"{fleet_file}: host {self.host!r} is no longer in the fleet"
                                  " file; `modelserver down` stops it")
            problems = await self.apply(fleet, request, fleet_file)
        except Exception as exc:  # a bad file or a bug: say so, keep supervising
            log.exception("applying %s failed", fleet_file)
            self._record(request, fleet_file, "failed", problems=[str(exc)])
            return
        self._record(request, fleet_file, "failed" if problems else "done", problems=problems)
        log.info("%s %s%s", fleet_file, "applied" if not problems else "applied in part: ",
                 "; ".join(problems))

    async def apply(self, fleet: Fleet, request: str = "", fleet_file: Path | None = None
                    ) -> list[str]:
        """Plan `fleet` against the workers and carry the plan out; what went wrong."""
        inventory = self._inventory or inventory_for(fleet.host(self.host))
        needs_gpus = any(fleet.model(w.model).gpus_each for w in fleet.workers(self.host))
        view = await asyncio.to_thread(gpu_view, inventory) if needs_gpus else GpuView()
        records = [w.record for w in self.supervisor.workers.values()]
        plan = plan_for(fleet, self.host, records, view)
        for line in plan.describe():
            log.info("%s", line)
        refused = (await asyncio.to_thread(self._preflight, fleet, self.host)
                   if self._preflight and not plan.empty else {})
        self._record(request, fleet_file, "applying", plan=plan)
        self.supervisor.fleet_name = fleet.fleet.name
        if plan.empty:
            self.fleet = fleet
            return []
        self.supervisor.secrets = tuple(sorted({*self.supervisor.secrets,
                                                *fleet_secrets(fleet)}))
        old, self.fleet = self.fleet, fleet
        rollout = Rollout(self.supervisor, fleet, self.host, inventory, self._clock,
                          lambda w: self._load.of(w, _backend(w, fleet, old)), refused)
        return await rollout.run(plan)

    def _record(self, request: str, fleet_file: Path | None, status: str, *,
                plan: RolloutPlan | None = None, problems: Sequence[str] = ()) -> None:
        if not request:
            return  # applying the supervisor's own file at start: nobody waits on it
        previous = self.supervisor.applying or {}
        same = previous.get("request") == request
        self.supervisor.applying = {
            "request": request,
            "fleet_file": str(fleet_file) if fleet_file else None,
            "status": status,
            "plan": plan.to_json() if plan else (previous.get("plan") if same else None),
            "lines": plan.describe() if plan else (previous.get("lines", []) if same else []),
            "problems": list(problems),
            "started_at": previous.get("started_at") if same else time.time(),
            "finished_at": time.time() if status != "applying" else None,
        }
        self.supervisor.save()


def _backend(worker: WorkerSpec | WorkerRecord, *fleets: Fleet) -> str:
    """The worker's backend by the newest file naming its model (a removed model's by the
    file it was started from)."""
    for fleet in fleets:
        try:
            return fleet.model(worker.model).backend
        except UnknownModel:
            continue
    return ""
