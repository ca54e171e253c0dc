"""SGLang: `python -m sglang.launch_server`.

Flags (checked by tests/launcher/test_backend_flags.py against the flag lists of SGLang
v0.5.2 and v0.2.15, `python/sglang/srt/server_args.py`, kept in tests/launcher/data/):
--model-path, --host, --port, --tp-size, --mem-fraction-static, --served-model-name,
--is-embedding, --api-key.

Readiness (python/sglang/srt/entrypoints/http_server.py at v0.5.2): GET /health answers 503
while the server status is Starting and 200 once a one-token generation went through; in
v0.2.15 (python/sglang/srt/server.py) /health is 200 as soon as HTTP is up, so we also ask
GET /v1/models, served in both versions once the tokenizer manager is up. Health: /health.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, ClassVar

from modelserver.backends.base import Backend, MemFraction, Program, flag_pairs
from modelserver.config import Fleet, ModelConfig
from modelserver.placement import Placement


class SGLangBackend(Backend):
    name = "sglang"
    options: ClassVar[Mapping[str, Any]] = {"mem_fraction": MemFraction, "python": Program}
    """`python`: the interpreter that has SGLang installed (default: this one)."""
    ready_paths = ("/health", "/v1/models")
    health_path = "/health"

    def argv(self, placement: Placement, model: ModelConfig, fleet: Fleet) -> list[str]:
        worker = placement.worker
        python = str(model.options.get("python") or sys.executable)
        argv = [
            python,
            "-m",
            "sglang.launch_server",
            *flag_pairs(
                [
                    ("--model-path", fleet.model_path(model)),
                    ("--host", worker.address),
                    ("--port", worker.port),
                    ("--tp-size", max(1, len(placement.gpus))),
                    ("--mem-fraction-static", placement.mem_fraction),
                    ("--served-model-name", model.name),
                ]
            ),
        ]
        if model.kind == "embedding":
            argv.append("--is-embedding")
        argv += self.api_key_flags(model)
        return argv + list(model.args)
