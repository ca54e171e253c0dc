"""Our simulated engine (`modelserver sim`): a CPU-only stand-in that speaks SGLang's HTTP."""

from __future__ import annotations

import sys
from typing import ClassVar

from modelserver.backends.base import Backend, flag_pairs
from modelserver.config import Fleet, ModelConfig
from modelserver.placement import Placement

# options key -> `modelserver sim` flag
_OPTION_FLAGS = {
    "speed": "--speed",
    "fault": "--fault",
    "max_running": "--max-running",
    "cache_tokens": "--cache-tokens",
    "seed": "--seed",
}


class SimBackend(Backend):
    name = "sim"
    options: ClassVar[frozenset[str]] = frozenset(_OPTION_FLAGS)
    # The sim answers GET /health with 200 once it serves.
    ready_paths = ("/health",)
    health_path = "/health"
    api_key_env = "MODELSERVER_SIM_API_KEY"

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
        argv += flag_pairs([(flag, model.options.get(key)) for key, flag in _OPTION_FLAGS.items()])
        argv += self.api_key_flags(model)
        return argv + list(model.args)
