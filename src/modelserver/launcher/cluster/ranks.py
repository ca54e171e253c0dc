"""A replica larger than a node: one process per node, rank 0's actor leading.

The replica's placement group has one bundle per node (STRICT_SPREAD, its GPUs split
evenly). Bundle 0 holds the replica's `ReplicaActor` (rank 0: it serves the replica's one
URL); bundle r >= 1 holds a `RankActor` named `FLEET/WORKER/rankR`. Rank 0's actor starts
its engine through `SpanningSpawner`: its own process (under `guard`), then every other
rank's process on its node (`RankActor.start`), all given rank 0's `--dist-init-addr`. The
`SpanHandle` it gives the supervisor ends when any rank ends (the others are stopped then),
and its signals reach every rank, so the supervisor's readiness probe (rank 0's HTTP),
backoff restarts, drain and stop act on the whole replica together. A rank's actor that
dies (its node gone: Ray re-places the bundle and restarts the actor) ends the handle too,
and the replica restarts on the nodes it has now.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelserver.launcher.backends import backend_for
from modelserver.launcher.backends.base import LaunchSpec, Span
from modelserver.launcher.cluster.names import KEPT_FROM_ENGINES
from modelserver.launcher.gpus import Gpu
from modelserver.launcher.placement import Placement
from modelserver.launcher.processes import ProcessHandle
from modelserver.launcher.state import LOG_MODE, log_path

GUARD = ("-m", "modelserver.launcher.cluster.guard")


def rank_log(fleet: Any, worker: str, rank: int) -> Path:
    return log_path(fleet, f"{worker}.rank{rank}")


class RankActor:
    """Rank `rank` >= 1 of a spanning replica, on its node. It has no readiness of its own
    and serves no HTTP: rank 0's actor starts, watches and stops its process."""

    def __init__(self, fleet_name: str, worker: str, rank: int, nnodes: int) -> None:
        import ray

        from modelserver.launcher.cluster.actor import read_fleet

        self._fleet = read_fleet(fleet_name)
        spec = next(w for w in self._fleet.workers() if w.name == worker)
        address: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        self._spec = dataclasses.replace(spec, address=address, port=spec.port or 0)
        self._rank, self._nnodes = rank, nnodes
        self._node = ray.get_runtime_context().get_node_id()
        # No NVML check here: Ray assigned these GPUs, rank 0's actor checks its own.
        self._gpus = tuple(Gpu(int(g), "", "GPU (as Ray counts it)", 0, 0)
                           for g in ray.get_gpu_ids())
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def start(self, dist_init_addr: str, mem_fraction: float | None) -> dict[str, Any]:
        """Start this rank's process (stopping one still running) with rank 0's address and
        memory fraction; its pid and node."""
        self.stop()
        model = self._fleet.model(self._spec.model)
        total = model.gpus_each
        launch = backend_for(self._spec.backend).command(
            Placement(self._spec, self._gpus, mem_fraction), self._fleet,
            Span(self._nnodes, self._rank, dist_init_addr, total),
        )
        env = {k: v for k, v in launch.env.items() if k not in KEPT_FROM_ENGINES}
        log = rank_log(self._fleet, self._spec.name, self._rank)
        log.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, LOG_MODE)
        try:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            os.write(fd, f"\n=== {stamp} modelserver starts rank {self._rank}:"
                         f" {launch.shown()}\n".encode())
            guard = (sys.executable, *GUARD, "--parent", str(os.getpid()), "--")
            with self._lock:
                self._proc = subprocess.Popen(
                    [*guard, *launch.argv], env=env, stdin=subprocess.DEVNULL, stdout=fd,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )
                return {"pid": self._proc.pid, "node": self._node}
        finally:
            os.close(fd)

    def wait_exit(self, pid: int) -> int:
        """Wait until the process `pid` started ends; its exit code (-1: not the current)."""
        proc = self._proc
        if proc is None or proc.pid != pid:
            return -1
        return proc.wait()

    def signal(self, signum: int) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signum)

    def stop(self) -> None:
        """SIGTERM to the process group, `stop_grace_s`, SIGKILL."""
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                return
            self.signal(signal.SIGTERM)
            try:
                proc.wait(self._fleet.launcher.stop_grace_s)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                proc.wait()


class SpanHandle:
    """The supervisor's handle of a spanning replica: rank 0's process and the other ranks'
    (`ranks`: each rank's actor handle and its process's pid)."""

    def __init__(self, lead: ProcessHandle, ranks: list[tuple[Any, int]], log: Path) -> None:
        self._lead, self._ranks, self._log = lead, ranks, log
        self.pid = lead.pid
        self.create_time = lead.create_time
        self._ended: asyncio.Task[int | None] | None = None
        self._signalled = False
        """Stopping: ranks that end first are expected, rank 0 ends of the same signal."""

    async def wait(self) -> int | None:
        if self._ended is None:
            self._ended = asyncio.ensure_future(self._first_end())
        return await asyncio.shield(self._ended)

    async def _first_end(self) -> int | None:
        lead = asyncio.ensure_future(self._lead.wait())
        others = [asyncio.ensure_future(asyncio.to_thread(_rank_end, actor, pid, rank))
                  for rank, (actor, pid) in enumerate(self._ranks, start=1)]
        await asyncio.wait([lead, *others], return_when=asyncio.FIRST_COMPLETED)
        if not lead.done() and not self._signalled:  # a rank died: the whole replica goes
            why = next(o.result() for o in others if o.done())
            _note(self._log, f"{why}; stopping every rank of the replica")
            self._lead.signal_group(signal.SIGKILL)
        code = await lead
        await asyncio.to_thread(self._stop_ranks)
        for other in others:
            other.cancel()
        return code

    def _stop_ranks(self) -> None:
        import ray

        stops = [actor.stop.remote() for actor, _ in self._ranks]
        with contextlib.suppress(Exception):  # a rank's actor gone: its process went with it
            ray.wait(stops, num_returns=len(stops), timeout=60)

    def signal_group(self, signum: int) -> None:
        self._signalled = True
        self._lead.signal_group(signum)
        for actor, _ in self._ranks:
            actor.signal.remote(signum)


def _rank_end(actor: Any, pid: int, rank: int) -> str:
    import ray

    try:
        code = ray.get(actor.wait_exit.remote(pid))
    except Exception as exc:
        return f"rank {rank}'s actor is gone ({type(exc).__name__})"
    return f"rank {rank} exited with code {code}"


def _note(log: Path, line: str) -> None:
    with contextlib.suppress(OSError), open(log, "a") as handle:
        handle.write(f"modelserver: {line}\n")


class SpanningSpawner:
    """Starts rank 0's process with `lead` (the guarded spawner), then every other rank's on
    its node (`ranks()`: their actors' handles, looked up at each start)."""

    def __init__(self, lead: Any, ranks: Callable[[], list[Any]], dist_init_addr: str) -> None:
        self._lead, self._ranks, self.dist_init_addr = lead, ranks, dist_init_addr
        self.mem_fraction: float | None = None
        """Rank 0's memory fraction, given to every rank (set by rank 0's actor)."""

    async def spawn(self, spec: LaunchSpec, log: Path) -> ProcessHandle:
        import ray

        lead = await self._lead.spawn(spec, log)
        try:
            actors = await asyncio.to_thread(self._ranks)
            started = await asyncio.to_thread(
                ray.get, [a.start.remote(self.dist_init_addr, self.mem_fraction)
                          for a in actors], timeout=120)
        except Exception as exc:
            lead.signal_group(signal.SIGKILL)
            await lead.wait()
            raise OSError(f"the other ranks of the replica did not start: {exc}") from None
        _note(log, "ranks started: " + ", ".join(
            f"{r} on node {s['node'][:12]} (pid {s['pid']})"
            for r, s in enumerate(started, start=1)))
        return SpanHandle(lead, [(a, int(s["pid"])) for a, s in zip(actors, started,
                                                                       strict=True)], log)
