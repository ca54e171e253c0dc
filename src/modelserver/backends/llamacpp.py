"""llama.cpp's server: the `llama-server` binary if it is on PATH, else our xllamacpp runner.

Flag names are llama-server's own, from ggml-org/llama.cpp tools/server/README.md
(read at commit 00dc8057ab28c9cb4c79a6dd6dfce07fe779f63b, "Server-specific params" and
"Common params"): `-m, --model FNAME`, `--host HOST`, `--port PORT`, `-a, --alias STRING`,
`-c, --ctx-size N`, `-np, --parallel N`, `-t, --threads N`, `--embedding, --embeddings`,
`--pooling {none,mean,cls,last,rank}`, `--api-key KEY`. The same README documents
`GET /health`: 503 while the model loads, 200 once it serves.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

from pydantic import Field

from modelserver.backends.base import Backend, flag_pairs
from modelserver.config import Fleet, ModelConfig
from modelserver.placement import Placement

_OPTION_FLAGS = {"ctx_size": "--ctx-size", "parallel": "--parallel", "threads": "--threads"}

RUNNER_MODULE = "modelserver.backends.xllamacpp_runner"


def server_program() -> list[str]:
    """`llama-server` when installed, else our runner around the xllamacpp wheel."""
    found = shutil.which("llama-server")
    return [found] if found else [sys.executable, "-m", RUNNER_MODULE]


class LlamaCppBackend(Backend):
    name = "llamacpp"
    options: ClassVar[Mapping[str, Any]] = {
        "ctx_size": Annotated[int, Field(ge=0)],  # 0: the model's own context length
        "parallel": Annotated[int, Field(ge=1)],
        "threads": Annotated[int, Field(ge=1)],
    }
    ready_paths = ("/health",)
    health_path = "/health"
    api_key_env = "LLAMA_API_KEY"

    def argv(self, placement: Placement, model: ModelConfig, fleet: Fleet) -> list[str]:
        worker = placement.worker
        argv = server_program() + flag_pairs(
            [
                ("--model", fleet.model_path(model)),
                ("--host", worker.address),
                ("--port", worker.port),
                ("--alias", model.name),
            ]
            + [(flag, model.options.get(key)) for key, flag in _OPTION_FLAGS.items()]
        )
        if model.kind == "embedding":
            argv += ["--embedding", "--pooling", "mean"]
        argv += self.api_key_flags(model)
        return argv + list(model.args)
