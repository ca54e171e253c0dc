"""Placement: which GPUs, port and memory fraction each replica of a host gets, or why not.

`plan()` is a pure function of the GPU inventory, the fleet, the host and what else holds
ports, so every rule is tested with a static inventory. Rules:

- explicit `models[i].gpus` are split in order into groups of `gpus_per_replica`;
  otherwise each replica takes the lowest-index free GPUs the host allows that no other
  replica of the plan has;
- a GPU with more than `launcher.gpu_busy_used_gib` in use is busy (the seed's 10 GB rule),
  and the reason names who uses it: "GPU 3 has 41 GiB used by pid 7781 (python)";
- memory fraction (SGLang's --mem-fraction-static, vLLM's --gpu-memory-utilization) is the
  seed's rule: the smallest free/total ratio of the replica's GPUs, minus
  `mem_fraction_margin`, capped at `mem_fraction_max`; `options.mem_fraction` overrides it;
- a port held by a process that is not ours blocks the replica.

A blocked replica is either `final` (it can never run here: a GPU that does not exist, more
GPUs than the host has) or may run later (busy GPU, taken port); the launcher
(`launch.place_waiting`) re-plans the latter until `launcher.wait_for_gpus_s` runs out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from modelserver.config import GPU_BACKENDS, Fleet, HostConfig, ModelConfig, WorkerSpec
from modelserver.launcher.gpus import GIB, Gpu, describe_use

MIN_MEM_FRACTION = 0.05
"""Below this an engine cannot hold its weights; treat the GPUs as busy instead."""


@dataclass(frozen=True)
class Placement:
    worker: WorkerSpec
    gpus: tuple[Gpu, ...]
    mem_fraction: float | None
    """None for backends that do not take one (sim, llamacpp)."""

    @property
    def gpu_ids(self) -> list[str]:
        """How the engine's CUDA_VISIBLE_DEVICES names them: UUIDs where known, else indices."""
        return [gpu.uuid or str(gpu.index) for gpu in self.gpus]


@dataclass(frozen=True)
class Blocked:
    worker: WorkerSpec
    reason: str
    final: bool
    """True if waiting cannot help (the host lacks the GPUs asked for)."""


@dataclass(frozen=True)
class Plan:
    placed: tuple[Placement, ...]
    blocked: tuple[Blocked, ...]

    @property
    def waiting(self) -> list[Blocked]:
        return [b for b in self.blocked if not b.final]


@dataclass(frozen=True)
class GpuView:
    """The inventory as placement sees it: the GPUs, or why they cannot be known."""

    gpus: tuple[Gpu, ...] = ()
    unavailable: str | None = None


def plan(
    fleet: Fleet,
    host: str,
    inventory: GpuView,
    *,
    ports_in_use: Mapping[int, str] | None = None,
    own_pids: frozenset[int] = frozenset(),
    skip: frozenset[str] = frozenset(),
    taken_gpus: frozenset[int] = frozenset(),
) -> Plan:
    """Place every worker of `host` except those in `skip` (already running, e.g. adopted).

    `ports_in_use` maps a port to who holds it ("pid 81 (nginx)"), only for holders that are
    not ours; `taken_gpus` are GPU indices held by workers in `skip`.
    """
    host_cfg = fleet.host(host)
    settings = fleet.launcher
    busy_bytes = settings.gpu_busy_used_gib * GIB
    taken: dict[int, str] = dict.fromkeys(taken_gpus, "a running worker")
    placed: list[Placement] = []
    blocked: list[Blocked] = []
    for worker in fleet.workers(host):
        if worker.name in skip:
            continue
        model = fleet.model(worker.model)
        need = model.gpus_each
        if need and inventory.unavailable is not None:
            blocked.append(Blocked(worker, inventory.unavailable, final=True))
            continue
        allowed, missing = _allowed_gpus(host_cfg, inventory.gpus)
        if need and missing:
            blocked.append(Blocked(worker, missing, final=True))
            continue
        if need and model.gpus is not None:
            group = model.gpus[worker.replica * need : (worker.replica + 1) * need]
            choice = _explicit(worker, group, allowed, inventory.gpus, host_cfg, taken,
                               busy_bytes, own_pids)
        elif need:
            choice = _automatic(worker, need, allowed, host_cfg, taken, busy_bytes, own_pids)
        else:
            choice = ()
        if isinstance(choice, Blocked):
            blocked.append(choice)
            continue
        if worker.port in (ports_in_use or {}):
            reason = f"port {worker.port} is in use by {(ports_in_use or {})[worker.port]}"
            blocked.append(Blocked(worker, reason, final=False))
            continue
        fraction = _mem_fraction(model, choice, fleet)
        if isinstance(fraction, str):
            blocked.append(Blocked(worker, fraction, final=False))
            continue
        for gpu in choice:
            taken[gpu.index] = worker.name
        placed.append(Placement(worker, choice, fraction))
    return Plan(tuple(placed), tuple(blocked))


def _allowed_gpus(host: HostConfig, gpus: Sequence[Gpu]) -> tuple[list[Gpu], str]:
    """The GPUs the host lets us use, and a reason if it names one that does not exist."""
    if host.gpus == "none":
        return [], ""
    if host.gpus == "all" or isinstance(host.gpus, str):
        return sorted(gpus, key=lambda g: g.index), ""
    allowed: list[Gpu] = []
    for ref in host.gpus:
        found = next((g for g in gpus if g.matches(ref)), None)
        if found is None:
            return [], _no_such_gpu(ref, host.name, gpus)
        allowed.append(found)
    return allowed, ""


def _no_such_gpu(ref: int | str, host: str, gpus: Sequence[Gpu]) -> str:
    if not gpus:
        return f"GPU {ref} does not exist on {host} (it has no GPUs)"
    return f"GPU {ref} does not exist on {host} (it has {_indices(gpus)})"


def _indices(gpus: Sequence[Gpu]) -> str:
    """"GPUs 0-7", or "GPUs 0, 2, 5" when they are not consecutive."""
    indices = sorted(g.index for g in gpus)
    if len(indices) == 1:
        return f"GPU {indices[0]}"
    if indices == list(range(indices[0], indices[-1] + 1)):
        return f"GPUs {indices[0]}-{indices[-1]}"
    return "GPUs " + ", ".join(map(str, indices))


def _explicit(
    worker: WorkerSpec,
    group: Sequence[int | str],
    allowed: Sequence[Gpu],
    every: Sequence[Gpu],
    host: HostConfig,
    taken: Mapping[int, str],
    busy_bytes: float,
    own_pids: frozenset[int],
) -> tuple[Gpu, ...] | Blocked:
    chosen: list[Gpu] = []
    busy: list[str] = []
    for ref in group:
        gpu = next((g for g in allowed if g.matches(ref)), None)
        if gpu is None:
            # The fleet file keeps model.gpus among host.gpus, so it is not on the machine
            # at all: name what the machine has, not what the host allows.
            return Blocked(worker, _no_such_gpu(ref, host.name, every), final=True)
        if gpu.index in taken:
            return Blocked(worker, f"GPU {gpu.index} is already given to {taken[gpu.index]}",
                           final=True)
        if gpu.used_bytes > busy_bytes:
            busy.append(describe_use(gpu, own_pids))
        chosen.append(gpu)
    if busy:
        return Blocked(worker, "; ".join(busy), final=False)
    return tuple(chosen)


def _automatic(
    worker: WorkerSpec,
    need: int,
    allowed: Sequence[Gpu],
    host: HostConfig,
    taken: Mapping[int, str],
    busy_bytes: float,
    own_pids: frozenset[int],
) -> tuple[Gpu, ...] | Blocked:
    if len(allowed) < need:
        return Blocked(
            worker, f"needs {_gpus(need)}, host {host.name} has {len(allowed)}", final=True
        )
    free = [g for g in allowed if g.index not in taken and g.used_bytes <= busy_bytes]
    if len(free) >= need:
        return tuple(free[:need])
    why = [
        f"GPU {g.index} is given to {taken[g.index]}" if g.index in taken
        else describe_use(g, own_pids)
        for g in allowed
        if g not in free
    ]
    return Blocked(
        worker,
        f"needs {_gpus(need)} free on {host.name}, {len(free)} free: " + "; ".join(why),
        final=False,
    )


def _gpus(count: int) -> str:
    return f"{count} GPU" if count == 1 else f"{count} GPUs"


def _mem_fraction(model: ModelConfig, gpus: Sequence[Gpu], fleet: Fleet) -> float | str | None:
    """The engine's memory fraction, None if its backend takes none, or why it cannot run."""
    if model.backend not in GPU_BACKENDS:
        return None
    override = model.options.get("mem_fraction")
    if override is not None:
        return float(override)
    settings = fleet.launcher
    ratio = min((g.free_ratio for g in gpus), default=1.0)
    fraction = min(settings.mem_fraction_max, ratio - settings.mem_fraction_margin)
    if fraction < MIN_MEM_FRACTION:
        tightest = min(gpus, key=lambda g: g.free_ratio)
        return (
            f"GPU {tightest.index} has only {tightest.free_ratio:.0%} of its memory free"
            f" (memory fraction would be {fraction:.2f})"
        )
    return round(fraction, 3)


mem_fraction_for = _mem_fraction
"""The memory-fraction rule, for executors that place elsewhere (cluster mode's actors)."""
