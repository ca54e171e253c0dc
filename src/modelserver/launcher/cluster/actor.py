"""The supervising actor of one replica: a named, detached Ray actor on the replica's node.

Ray places it in the replica's placement group, so it runs on the node holding the replica's
GPUs, and restarts it there (or wherever Ray re-places the group when a node dies). The actor
reads the fleet document from Ray's key-value store, checks the GPUs Ray assigned it are free
on this node (NVML, or the fleet's static inventory; foreign processes count, as in local
mode), picks the replica's port, and hands the replica to the same `Supervisor` a host's
launcher uses: start in its own process group (through `guard`, so the engine dies with the
actor), readiness probe, restarts with backoff, health watch. Every change of the replica's
record is published to the key-value store, where `status` and the router read it.

Supervision runs in an event loop thread of its own, started by `__init__`: Ray runs only
`__init__` when it restarts an actor, so nothing may wait for a later call to begin.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import sys
import threading
import time
from typing import Any

from modelserver.clock import SystemClock
from modelserver.config import Fleet, parse_fleet
from modelserver.errors import NoGpuInventory
from modelserver.launcher.backends import backend_for
from modelserver.launcher.backends.base import LaunchSpec, Span
from modelserver.launcher.cluster.names import (
    KEPT_FROM_ENGINES,
    NAMESPACE,
    fleet_key,
    rank_actor_name,
    record_key,
)
from modelserver.launcher.cluster.ranks import SpanningSpawner
from modelserver.launcher.cluster.rollout import settings_of
from modelserver.launcher.gpus import (
    GIB,
    Gpu,
    GpuInventory,
    NvmlInventory,
    StaticInventory,
    describe_use,
)
from modelserver.launcher.lifecycle import WorkerStatus
from modelserver.launcher.local import HttpProbe
from modelserver.launcher.placement import Placement, mem_fraction_for
from modelserver.launcher.processes import ProcessHandle, SubprocessSpawner
from modelserver.launcher.reconcile import EngineLoad
from modelserver.launcher.secrets import fleet_secrets
from modelserver.launcher.state import WorkerRecord, log_path
from modelserver.launcher.supervisor import Supervisor, Worker, WorkerPlan

S = WorkerStatus



class GuardedSpawner(SubprocessSpawner):
    """Start the engine under `guard`, which kills the engine's group when this actor dies."""

    async def spawn(self, spec: LaunchSpec, log: Any) -> ProcessHandle:
        guard = (sys.executable, "-m", "modelserver.launcher.cluster.guard",
                 "--parent", str(os.getpid()), "--")
        return await super().spawn(LaunchSpec(guard + spec.argv, spec.env), log)


def node_inventory(fleet: Fleet) -> GpuInventory:
    assert fleet.cluster is not None
    if fleet.cluster.inventory is not None:
        return StaticInventory([
            Gpu(g.index, g.uuid, g.name, int(g.total_gib * GIB), int(g.used_gib * GIB))
            for g in fleet.cluster.inventory
        ])
    return NvmlInventory()


def free_port(address: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def read_fleet(fleet_name: str) -> Fleet:
    from ray.experimental import internal_kv

    from modelserver.launcher.cluster.names import NAMESPACE

    raw = internal_kv._internal_kv_get(fleet_key(fleet_name), namespace=NAMESPACE)
    if raw is None:
        raise RuntimeError(f"fleet {fleet_name!r} has no document in the cluster; run `up`")
    doc = json.loads(raw)
    return parse_fleet(doc["fleet"], source=doc["source"], base_dir=doc["base_dir"])


class ReplicaActor:
    """One replica, supervised on its node. Methods are called from drivers (`status`,
    `logs`, `down`); the actor runs with several threads so they answer while it works."""

    def __init__(self, fleet_name: str, worker: str, fingerprint: str, nnodes: int = 1) -> None:
        import ray

        self.fingerprint = fingerprint
        self._nnodes = nnodes
        self._fleet_name = fleet_name
        context = ray.get_runtime_context()
        self._node = context.get_node_id()
        self._gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        self._fleet = read_fleet(fleet_name)
        spec = next(w for w in self._fleet.workers() if w.name == worker)
        address: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        self._spec = dataclasses.replace(
            spec, address=address, port=spec.port or free_port(address)
        )
        self._settings = settings_of(self._fleet, spec)
        self._spanning: SpanningSpawner | None = None
        if nnodes > 1:  # rank 0 of a replica over several nodes: the others meet it here
            self._spanning = SpanningSpawner(
                GuardedSpawner(), self._rank_actors, f"{address}:{free_port(address)}")
        self._record: dict[str, Any] = {}
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name=f"supervise {worker}",
                         daemon=True).start()
        begun = asyncio.run_coroutine_threadsafe(self._begin(), self._loop)
        self._supervisor, self._worker = begun.result(timeout=60)

    async def _begin(self) -> tuple[Supervisor, Worker]:
        fleet = self._fleet
        supervisor = Supervisor(
            self._node, fleet.fleet.name, fleet.launcher,
            spawner=self._spanning or GuardedSpawner(),
            probe=HttpProbe(fleet.launcher.probe_timeout_s), clock=SystemClock(),
            state_file=None, secrets=fleet_secrets(fleet),
        )
        supervisor.listeners.append(self._publish)
        backend = backend_for(self._spec.backend)
        worker = supervisor.add(WorkerPlan(
            self._spec, LaunchSpec((), {}), tuple(self._gpu_ids), backend.ready_paths,
            backend.health_path, log_path(fleet, self._spec.name),
        ))
        worker.wait(f"checking GPUs {self._gpu_ids or 'none'} on node {self._node[:12]}")
        supervisor.placing = asyncio.create_task(self._place(worker))
        return supervisor, worker

    async def _place(self, worker: Worker) -> None:
        """Start the engine once the GPUs Ray assigned are free on this node."""
        fleet, spec = self._fleet, self._spec
        model = fleet.model(spec.model)
        settings = fleet.launcher
        while worker.status is S.WAITING:
            gpus, why = await asyncio.to_thread(self._assigned_gpus)
            fraction = mem_fraction_for(model, gpus, fleet) if why is None else None
            if isinstance(fraction, str):
                why = fraction
            elif why is None:
                placement = Placement(spec, tuple(gpus), fraction)
                backend = backend_for(spec.backend)
                span = None
                if self._spanning is not None:
                    self._spanning.mem_fraction = fraction
                    span = Span(self._nnodes, 0, self._spanning.dist_init_addr, model.gpus_each)
                launch = backend.command(placement, fleet, span)
                env = {k: v for k, v in launch.env.items() if k not in KEPT_FROM_ENGINES}
                worker.start(plan=WorkerPlan(
                    spec, LaunchSpec(launch.argv, env), tuple(placement.gpu_ids),
                    backend.ready_paths, backend.health_path, log_path(fleet, spec.name),
                ))
                return
            worker.wait(f"{why} on node {self._node[:12]}")
            await asyncio.sleep(settings.placement_poll_s)

    def _assigned_gpus(self) -> tuple[list[Gpu], str | None]:
        """The GPUs Ray assigned, as this node's inventory sees them, or why they are not
        usable now. Without NVML here, Ray's own count of the node's GPUs is trusted."""
        if not self._gpu_ids:
            return [], None
        try:
            known = {g.index: g for g in node_inventory(self._fleet).gpus()}
        except NoGpuInventory:
            return [Gpu(int(i), "", "GPU (as Ray counts it)", 0, 0) for i in self._gpu_ids], None
        gpus: list[Gpu] = []
        limit = self._fleet.launcher.gpu_busy_used_gib * GIB
        for gpu_id in self._gpu_ids:
            gpu = known.get(int(gpu_id))
            if gpu is None:
                return [], f"Ray assigned GPU {gpu_id}, which this node's inventory lacks"
            if gpu.used_bytes > limit:
                return [], describe_use(gpu, frozenset({os.getpid()}))
            gpus.append(gpu)
        return gpus, None

    def _rank_actors(self) -> list[Any]:
        import ray

        return [ray.get_actor(rank_actor_name(self._fleet_name, self._spec.name, rank),
                              namespace=NAMESPACE) for rank in range(1, self._nnodes)]

    def _publish(self, record: WorkerRecord) -> None:
        from ray.experimental import internal_kv

        from modelserver.launcher.cluster.names import NAMESPACE

        self._record = {
            **dataclasses.asdict(record), "node": self._node, "fingerprint": self.fingerprint,
            "settings": self._settings, "nnodes": self._nnodes,
            "actor_pid": os.getpid(), "updated_at": time.time(),
        }
        internal_kv._internal_kv_put(
            record_key(self._fleet_name, record.name), json.dumps(self._record).encode(),
            overwrite=True, namespace=NAMESPACE,
        )

    # -- called by drivers ------------------------------------------------------------------

    def record(self) -> dict[str, Any]:
        return dict(self._record)

    def stop(self) -> dict[str, Any]:
        """Stop the engine (SIGTERM to its group, grace, SIGKILL); the actor stays until
        `down` kills it, so nothing restarts the engine meanwhile."""
        grace = self._fleet.launcher.stop_grace_s
        stopping = asyncio.run_coroutine_threadsafe(self._supervisor.stop_all(), self._loop)
        stopping.result(timeout=grace + 30)
        return self.record()

    def drain(self) -> str:
        """Take the replica out of service (local mode's `Worker.drain`: record `draining`,
        `drain_notice_s`, then until its engine reports nothing in flight, at most
        `drain_timeout_s`), then stop its engine; how it went. The actor stays until
        `remove` kills it, so nothing restarts the engine meanwhile."""
        settings = self._fleet.launcher

        async def draining() -> str:
            load = EngineLoad(settings.probe_timeout_s)
            try:
                return await self._worker.drain(
                    settings.drain_notice_s, settings.drain_timeout_s,
                    load.of(self._worker.record, self._spec.backend))
            finally:
                await load.close()

        done = asyncio.run_coroutine_threadsafe(draining(), self._loop)
        return done.result(timeout=settings.drain_notice_s + settings.drain_timeout_s
                           + settings.stop_grace_s + 30)

    def log_chunk(self, offset: int, max_bytes: int) -> tuple[int, bytes]:
        """Bytes of the engine's log from `offset` (negative: from the end); the new offset."""
        path = log_path(self._fleet, self._spec.name)
        try:
            with open(path, "rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                start = max(0, size + offset) if offset < 0 else min(offset, size)
                handle.seek(start)
                data = handle.read(max_bytes)
                return start + len(data), data
        except FileNotFoundError:
            return 0, b""
