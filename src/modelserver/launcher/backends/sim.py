"""Our simulated engine (`modelserver sim`): a CPU-only stand-in that speaks SGLang's HTTP."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, get_type_hints

from modelserver.launcher.backends.base import Backend, Span, flag_pairs, kv_events_flags
from modelserver.sim.config import SimConfig

if TYPE_CHECKING:  # types only: the fleet config imports this package to check options
    from modelserver.config import Fleet, ModelConfig
    from modelserver.launcher.placement import Placement

# options key -> `modelserver sim` flag
_OPTION_FLAGS = {
    "speed": "--speed",
    "fault": "--fault",
    "max_running": "--max-running",
    "cache_tokens": "--cache-tokens",
    "seed": "--seed",
    # The GPU and model it stands in for, which size its KV pool as SGLang would.
    "gpu": "--gpu",
    "model_size": "--model-size",
    "mem_fraction_static": "--mem-fraction-static",
}
# options key -> SimConfig field, where the names differ
_CONFIG_FIELDS = {"fault": "faults"}
_CONFIG_TYPES = get_type_hints(SimConfig)


class SimBackend(Backend):
    """`options.speed` sets every replica's speed; `options.speeds` one per replica (a model
    whose replica 2 runs at half speed: `speeds = [1.0, 1.0, 0.5]`), as a fleet of unequal
    GPUs serves one model."""

    name = "sim"
    options: ClassVar[Mapping[str, Any]] = {
        **{key: _CONFIG_TYPES[_CONFIG_FIELDS.get(key, key)] for key in _OPTION_FLAGS},
        "speeds": list[float],  # SimConfig.speed for each replica
    }
    # The sim answers GET /health with 200 once it serves.
    ready_paths = ("/health",)
    health_path = "/health"
    api_key_env = "MODELSERVER_SIM_API_KEY"
    spans_nodes = None

    def option_value_problem(self, key: str, value: Any, model: ModelConfig) -> str | None:
        """The type, then the simulator's own checks: a fleet file is refused for whatever
        `modelserver sim` would refuse when started."""
        problem = super().option_value_problem(key, value, model)
        if problem is not None:
            return problem
        if key == "speeds":
            return _speeds_problem(value, model)
        try:
            SimConfig(model=model.name, kind=model.kind, **{_CONFIG_FIELDS.get(key, key): value})
        except ValueError as exc:
            return str(exc)
        return None

    def argv(self, placement: Placement, model: ModelConfig, fleet: Fleet) -> list[str]:
        worker = placement.worker
        argv = [
            sys.executable,
            "-m",
            "modelserver",
            "sim",
            "--host",
            worker.address,
            "--port",
            str(worker.port),
            "--model",
            model.name,
            "--kind",
            model.kind,
        ]
        options = dict(model.options)
        speeds = options.pop("speeds", None)
        if speeds is not None:
            options["speed"] = speeds[worker.replica]
        argv += flag_pairs([(flag, options.get(key)) for key, flag in _OPTION_FLAGS.items()])
        argv += self.api_key_flags(model)
        argv += kv_events_flags(placement, model, fleet)
        return argv + list(model.args)


    def span_argv(
        self, placement: Placement, model: ModelConfig, fleet: Fleet, span: Span
    ) -> list[str]:
        """Rank 0 is the simulator itself (it serves the replica's URL; it has no tensor
        parallelism to spread); a rank >= 1 is `sim_rank`, a process that checks SGLang's
        multi-node flags and waits to be stopped, so placing and supervising a replica over
        several nodes is exercised for real without GPUs."""
        if span.rank == 0:
            return self.argv(placement, model, fleet)
        return [sys.executable, "-m", "modelserver.launcher.backends.sim_rank",
                *flag_pairs([("--nnodes", span.nnodes), ("--node-rank", span.rank),
                             ("--dist-init-addr", span.dist_init_addr),
                             ("--tp-size", span.total_gpus)])]


def _speeds_problem(speeds: list[float], model: ModelConfig) -> str | None:
    if "speed" in model.options:
        return "give `speed` (every replica) or `speeds` (one per replica), not both"
    if len(speeds) != model.replicas:
        return (f"lists {len(speeds)} speeds for {model.replicas} replicas; give one per"
                " replica, in replica order")
    for index, speed in enumerate(speeds):
        try:
            SimConfig(model=model.name, kind=model.kind, speed=speed)
        except ValueError as exc:
            return f"speeds[{index}]: {exc}"
    return None
