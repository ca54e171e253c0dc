"""vLLM: `vllm serve PATH`.

Flags (checked by tests/launcher/test_backend_flags.py against vLLM v0.11.0's
vllm/engine/arg_utils.py and vllm/entrypoints/openai/cli_args.py, kept in
tests/launcher/data/vllm-0.11.0-flags.txt): --host, --port, --tensor-parallel-size,
--gpu-memory-utilization, --served-model-name, --api-key, --runner. Embedding models run as
pooling models: `--runner pooling` (ModelConfig.runner in vllm/config/model.py, v0.11.0;
releases before 0.10 used `--task embed`).

Readiness and health: GET /health (vllm/entrypoints/openai/api_server.py, v0.11.0) answers
200 once the engine is up and 503 when it died; the HTTP server only listens after the
engine has loaded the model.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from modelserver.launcher.backends.base import (
    Backend,
    MemFraction,
    Program,
    flag_pairs,
    kv_events_flags,
)

if TYPE_CHECKING:  # types only: the fleet config imports this package to check options
    from modelserver.config import Fleet, ModelConfig
    from modelserver.launcher.placement import Placement


class VllmBackend(Backend):
    name = "vllm"
    options: ClassVar[Mapping[str, Any]] = {"mem_fraction": MemFraction, "executable": Program}
    """`executable`: the `vllm` program to run (default: `vllm` on PATH)."""
    ready_paths = ("/health",)
    health_path = "/health"
    api_key_env = "VLLM_API_KEY"
    spans_nodes = (
        "vLLM 0.11 runs a model over several nodes from one `vllm serve` process that places"
        " its own workers through Ray (--distributed-executor-backend ray, TP x PP;"
        " docs/serving/parallelism_scaling.md); it has no per-node process to supervise"
        " (no --nnodes / --node-rank in v0.11.0): give it gpus_per_replica one node has"
    )

    def argv(self, placement: Placement, model: ModelConfig, fleet: Fleet) -> list[str]:
        worker = placement.worker
        program = str(model.options.get("executable") or shutil.which("vllm") or "vllm")
        argv = [
            program,
            "serve",
            fleet.model_path(model),
            *flag_pairs(
                [
                    ("--host", worker.address),
                    ("--port", worker.port),
                    ("--tensor-parallel-size", max(1, len(placement.gpus))),
                    ("--gpu-memory-utilization", placement.mem_fraction),
                    ("--served-model-name", model.name),
                ]
            ),
        ]
        if model.kind == "embedding":
            argv += ["--runner", "pooling"]
        argv += self.api_key_flags(model)
        argv += kv_events_flags(placement, model, fleet, vllm=True)
        return argv + list(model.args)

    def engine_problem(self, index: int, model: ModelConfig) -> str | None:
        given = model.options.get("executable")
        if given is None:
            if shutil.which("vllm"):
                return None
            return (f"vLLM is not installed: no `vllm` program on PATH; install it, or set"
                    f" models[{index}].options.executable to its path")
        program = shutil.which(str(given)) or str(given)
        if os.path.isfile(program) and os.access(program, os.X_OK):
            return None
        return f"models[{index}].options.executable = {given!r} is not an executable program"
