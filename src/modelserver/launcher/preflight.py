"""What `modelserver up` checks on this host before it starts anything.

The fleet file alone cannot tell everything: whether the weights a model names are on this
host, whether the GPUs it names exist here, whether a port is held by someone else. Without
these checks such mistakes surfaced one worker at a time, after the supervisor had started
(and with a state file claiming workers that never ran). `preflight` finds them all first and
raises one error naming the file and each key or worker, so nothing is half-started.

Only what waiting cannot fix is refused: a busy GPU is the placement's business
(`launcher.wait_for_gpus_s`), and a foreign port is refused only when there is no wait.

What this machine lacks (no NVML for the GPU workers, an engine that is not installed) is
not the fleet file's fault and does not stop the other workers: those workers are returned,
each with its reason, to fail at once, and the rest start. Only when no worker at all could
run is the whole host refused.
"""

from __future__ import annotations

import os
from pathlib import Path

from modelserver.config import Fleet, ModelConfig
from modelserver.errors import FleetFileError, LaunchError
from modelserver.launcher.backends import backend_for
from modelserver.launcher.gpus import GpuInventory, inventory_for
from modelserver.launcher.local import gpu_view, ports_held_by_others
from modelserver.launcher.placement import GpuView, plan
from modelserver.launcher.processes import marked_engine_groups
from modelserver.launcher.state import HostState, process_is, read_state, state_path
from modelserver.models.prepare import default_models_dir


def preflight(
    fleet: Fleet, host: str, inventory: GpuInventory | None = None
) -> dict[str, str]:
    """Raise FleetFileError (missing weights) or LaunchError (GPUs, ports) for `host`; return
    the workers this machine cannot run (worker -> why) when others can still start."""
    local = {w.model for w in fleet.workers(host)}
    problems = [
        problem
        for index, model in enumerate(fleet.models)
        if model.name in local
        for problem in _weights_problems(fleet, model, index, host)
    ]
    if problems:
        raise FleetFileError(fleet.source, problems)
    view: GpuView = gpu_view(inventory or inventory_for(fleet.host(host))) if _needs_gpus(
        fleet, host) else GpuView()
    reasons = _gpu_problems(fleet, host, view) + _port_problems(fleet, host)
    if reasons:
        raise _refusal(fleet, host, reasons)
    refused = _engine_problems(fleet, host) | _no_inventory(fleet, host, view)
    if refused and len(refused) == len(fleet.workers(host)):
        raise _refusal(fleet, host, [
            f"models[{_index(fleet, w.model)}] ({w.name}): {refused[w.name]}"
            for w in fleet.workers(host)
        ])
    return refused


def _refusal(fleet: Fleet, host: str, reasons: list[str]) -> LaunchError:
    lines = "\n".join(f"  - {reason}" for reason in reasons)
    return LaunchError(f"{fleet.source}: nothing started on host {host!r}:\n{lines}")


def _needs_gpus(fleet: Fleet, host: str) -> bool:
    return any(fleet.model(w.model).gpus_each for w in fleet.workers(host))


def _no_inventory(fleet: Fleet, host: str, view: GpuView) -> dict[str, str]:
    """Each GPU worker, when the GPUs of this machine cannot be listed (no NVML)."""
    if view.unavailable is None:
        return {}
    return {
        w.name: f"needs {fleet.model(w.model).gpus_each} GPU(s), but {view.unavailable}"
        for w in fleet.workers(host)
        if fleet.model(w.model).gpus_each
    }


def _engine_problems(fleet: Fleet, host: str) -> dict[str, str]:
    """Each worker whose engine is not installed here (a start would fail every retry)."""
    refused: dict[str, str] = {}
    for name in dict.fromkeys(w.model for w in fleet.workers(host)):
        model = fleet.model(name)
        problem = backend_for(model.backend).engine_problem(_index(fleet, name), model)
        if problem is not None:
            refused.update((w.name, problem) for w in fleet.workers(host) if w.model == name)
    return refused


def _weights_problems(fleet: Fleet, model: ModelConfig, index: int, host: str) -> list[str]:
    """llama.cpp loads a GGUF file, so it must be there. SGLang and vLLM also take hub ids
    (`org/name`), so only a path that is clearly local (absolute, ./, ../, ~) is checked."""
    if model.backend == "sim":
        return []
    path = fleet.model_path(model)
    local = model.backend == "llamacpp" or model.path.startswith(("/", ".", "~"))
    if not local:
        return []
    where = f"models[{index}].path"
    found = Path(path)
    if not found.exists():
        hint = (
            "; `modelserver models prepare` writes the example models there"
            if _under(found, default_models_dir())
            else ""
        )
        return [
            f"{where}: {path} does not exist on host {host!r}"
            f" (backend {model.backend!r} loads its weights from there){hint}"
        ]
    if model.backend == "llamacpp" and not found.is_file():
        return [f"{where}: {path} is not a file (llama.cpp needs a GGUF file)"]
    if not os.access(found, os.R_OK):
        return [f"{where}: {path} cannot be read (permission denied)"]
    return []


def _under(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _gpu_problems(fleet: Fleet, host: str, view: GpuView) -> list[str]:
    """Replicas that can never be placed here: GPUs that do not exist, more GPUs than the
    host has. Busy GPUs may free up and are not refused; no inventory at all is the
    machine's problem, not the file's (`_no_inventory`)."""
    local = {w.model for w in fleet.workers(host)}
    need = {m.name: m.replicas * m.gpus_each for m in fleet.models
            if m.name in local and m.gpus_each}
    if not need or view.unavailable is not None:
        return []
    final = [
        f"models[{_index(fleet, b.worker.model)}] ({b.worker.name}): {b.reason}"
        for b in plan(fleet, host, view).blocked
        if b.final
    ]
    if final:
        return final
    host_gpus = fleet.host(host).gpus
    has = len(host_gpus) if isinstance(host_gpus, list) else len(view.gpus)  # "all"
    problems = [
        f"models[{_index(fleet, name)}].replicas: replicas × gpus_per_replica ="
        f" {fleet.model(name).replicas} × {fleet.model(name).gpus_each} = {count} GPUs,"
        f" but host {host!r} has {has}"
        for name, count in need.items()
        if count > has
    ]
    if not problems and sum(need.values()) > has:
        each = ", ".join(f"{name}: {count}" for name, count in need.items())
        problems.append(
            f"models on host {host!r} need {sum(need.values())} GPUs together ({each}),"
            f" but it has {has}"
        )
    return problems


def _port_problems(fleet: Fleet, host: str) -> list[str]:
    """Ports held by a process that is not one of ours, when placement would not wait."""
    if fleet.launcher.wait_for_gpus_s > 0:
        return []
    workers = fleet.workers(host)
    # Engines a killed launcher started but never recorded are ours too: launch() stops them.
    ours = _our_sessions(read_state(state_path(fleet, host))) | frozenset(
        marked_engine_groups(state_path(fleet, host))
    )
    held = ports_held_by_others(workers, ours)
    return [
        f"models[{_index(fleet, w.model)}].port ({w.name}): port {w.port} on {w.address}"
        f" is in use by {held[w.port]}"
        for w in workers
        if w.port in held and not _in_sessions(held[w.port], ours)
    ]


def _our_sessions(state: HostState | None) -> frozenset[int]:
    """Pids of live workers a previous launcher recorded (each leads its own session)."""
    if state is None:
        return frozenset()
    return frozenset(
        w.pid for w in state.workers if w.pid is not None and process_is(w.pid, w.create_time)
    )


def _in_sessions(holder: str, sessions: frozenset[int]) -> bool:
    """True if the holder ("pid 81 (python)") runs in the session of a recorded worker: an
    engine's helper process listening for it is ours too."""
    if not sessions or not holder.startswith("pid "):
        return False
    try:
        return os.getsid(int(holder.split()[1])) in sessions
    except (ValueError, ProcessLookupError, PermissionError):
        return False


def _index(fleet: Fleet, model: str) -> int:
    return next(i for i, m in enumerate(fleet.models) if m.name == model)
