"""SGLang: `python -m sglang.launch_server`.

Flags (checked by tests/launcher/test_backend_flags.py against the flag lists of SGLang
v0.5.2 and v0.2.15, `python/sglang/srt/server_args.py`, kept in tests/launcher/data/):
--model-path, --host, --port, --tp-size, --mem-fraction-static, --served-model-name,
--is-embedding, --api-key; for a replica over several nodes (cluster mode) also --nnodes,
--node-rank and --dist-init-addr (ServerArgs.add_cli_args, "Multi-node distributed serving";
--tp-size is then the GPUs of all nodes, which SGLang requires to be divisible by --nnodes:
ServerArgs.check_server_args). Every node runs `launch_server` with the same flags but its
--node-rank; only rank 0 serves HTTP (in v0.5.2 python/sglang/srt/entrypoints/engine.py, a
rank >= 1 launches its schedulers and waits on them).

Readiness (python/sglang/srt/entrypoints/http_server.py at v0.5.2): GET /health answers 503
while the server status is Starting and 200 once a one-token generation went through; in
v0.2.15 (python/sglang/srt/server.py) /health is 200 as soon as HTTP is up, so we also ask
GET /v1/models, served in both versions once the tokenizer manager is up. Health: /health.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from modelserver.launcher.backends.base import (
    Backend,
    MemFraction,
    Program,
    Span,
    before_user_args,
    flag_pairs,
    kv_events_flags,
)

if TYPE_CHECKING:  # types only: the fleet config imports this package to check options
    from modelserver.config import Fleet, ModelConfig
    from modelserver.launcher.placement import Placement


class SGLangBackend(Backend):
    name = "sglang"
    options: ClassVar[Mapping[str, Any]] = {"mem_fraction": MemFraction, "python": Program}
    """`python`: the interpreter that has SGLang installed (default: this one)."""
    ready_paths = ("/health", "/v1/models")
    health_path = "/health"
    spans_nodes = None

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
        # Only when `[router.kv_events] enabled`: 0.5.2 has the flag, 0.2.15 does not.
        argv += kv_events_flags(placement, model, fleet)
        return argv + list(model.args)

    def span_argv(
        self, placement: Placement, model: ModelConfig, fleet: Fleet, span: Span
    ) -> list[str]:
        argv = self.argv(placement, model, fleet)
        argv[argv.index("--tp-size") + 1] = str(span.total_gpus)
        return before_user_args(argv, model, flag_pairs([
            ("--nnodes", span.nnodes), ("--node-rank", span.rank),
            ("--dist-init-addr", span.dist_init_addr),
        ]))

    def engine_problem(self, index: int, model: ModelConfig) -> str | None:
        python = str(model.options.get("python") or sys.executable)
        where = f"models[{index}].options.python"
        if python == sys.executable:
            if importlib.util.find_spec("sglang") is not None:
                return None
        elif not (os.path.isfile(python) and os.access(python, os.X_OK)):
            return f"{where} = {python!r} is not an executable file"
        else:
            found = subprocess.run(
                [python, "-c", "import importlib.util, sys;"
                 " sys.exit(importlib.util.find_spec('sglang') is None)"],
                stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False,
            )
            if found.returncode == 0:
                return None
        return (f"SGLang is not installed for {python} (no module named 'sglang'); install it"
                f" there, or set {where} to a Python that has it")
