"""llama.cpp's server: the `llama-server` binary if it is on PATH, else our xllamacpp runner.

Flag names are llama-server's own, from ggml-org/llama.cpp tools/server/README.md
(read at commit 00dc8057ab28c9cb4c79a6dd6dfce07fe779f63b, "Server-specific params" and
"Common params"): `-m, --model FNAME`, `--host HOST`, `--port PORT`, `-a, --alias STRING`,
`-c, --ctx-size N`, `-np, --parallel N`, `-t, --threads N`, `--embedding, --embeddings`,
`--pooling {none,mean,cls,last,rank}`, `--api-key KEY`. The same README documents
`GET /health`: 503 while the model loads, 200 once it serves.

A worker given GPUs offloads every layer to them (`--n-gpu-layers 999`, see
`llamacpp_flags.ALL_LAYERS`); one without GPUs gets `--n-gpu-layers 0`, so a build with GPU
support stays on the CPU it was placed on. `options.gpu_layers` (a number, "auto" or "all")
overrides it.

Embedding models get `--embedding` only: without `--pooling` llama.cpp pools as the GGUF's
`{arch}.pooling_type` says (CLS for bge, last token for Qwen3-Embedding, mean for our
MiniLM), so forcing one would break the others. `options.pooling` overrides it.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field

from modelserver.launcher.backends.base import Backend, flag_pairs
from modelserver.launcher.backends.llamacpp_flags import (
    ALL_LAYERS,
    CPU_EXTRA_HINT,
    GPU_LAYER_WORDS,
    GPU_LAYERS_FLAG,
    POOLING_TYPES,
)

if TYPE_CHECKING:  # types only: the fleet config imports this package to check options
    from modelserver.config import Fleet, ModelConfig
    from modelserver.launcher.placement import Placement

_OPTION_FLAGS = {
    "ctx_size": "--ctx-size",
    "parallel": "--parallel",
    "threads": "--threads",
    "pooling": "--pooling",
}

RUNNER_MODULE = "modelserver.launcher.backends.xllamacpp_runner"


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
        "pooling": str,  # which names: option_problems below
        "gpu_layers": Annotated[int, Field(ge=0)] | Literal["auto", "all"],
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
        argv += [GPU_LAYERS_FLAG, str(self.gpu_layers(placement, model))]
        if model.kind == "embedding":
            argv.append("--embedding")
        argv += self.api_key_flags(model)
        return argv + list(model.args)

    @staticmethod
    def gpu_layers(placement: Placement, model: ModelConfig) -> int | str:
        """Every layer on the replica's GPUs, none without GPUs, or what the options say."""
        asked = model.options.get("gpu_layers")
        if isinstance(asked, int) or asked in GPU_LAYER_WORDS:  # option_problems checked it
            return str(asked)
        return ALL_LAYERS if placement.gpus else 0

    def option_problems(self, index: int, model: ModelConfig) -> list[str]:
        problems = super().option_problems(index, model)
        pooling = model.options.get("pooling")
        if pooling is not None and pooling not in POOLING_TYPES:
            problems.append(
                f"models[{index}].options.pooling: {pooling!r} is no llama.cpp pooling type;"
                f" allowed: {', '.join(POOLING_TYPES)} (leave it out to use the GGUF's own)"
            )
        if pooling is not None and model.kind != "embedding":
            problems.append(
                f"models[{index}].options.pooling: only embedding models pool"
                f" (kind is {model.kind!r})"
            )
        return problems

    def engine_problem(self, index: int, model: ModelConfig) -> str | None:
        if shutil.which("llama-server") or importlib.util.find_spec("xllamacpp") is not None:
            return None
        return ("llama.cpp is not installed: no `llama-server` on PATH and no xllamacpp"
                f" package; {CPU_EXTRA_HINT}")
