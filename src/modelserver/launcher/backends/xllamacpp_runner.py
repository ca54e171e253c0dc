"""`python -m modelserver.launcher.backends.xllamacpp_runner`: llama-server's command line on
xllamacpp.

The llamacpp backend starts `llama-server` when it is on PATH and this runner otherwise, with
the same flags. The runner hands them to the `xllamacpp` wheel (llama.cpp's own C++ HTTP
server, prebuilt, installed by the `cpu` extra), which serves `/health`, `/v1/models`,
`/v1/completions`, `/v1/chat/completions` and `/v1/embeddings` until SIGTERM or SIGINT; then
the runner stops the server and exits 0.

Accepted flags, a subset of llama-server's own (ggml-org/llama.cpp tools/server/README.md,
read at commit 00dc8057ab28c9cb4c79a6dd6dfce07fe779f63b, tables "Common params" and
"Server-specific params"), with their short forms:

    -m, --model FNAME          -a, --alias STRING (comma-separated)
    --host HOST                -c, --ctx-size N
    --port PORT                -np, --parallel N
    -t, --threads N            --embedding, --embeddings
    --pooling {none,mean,cls,last,rank}
    --api-key KEY (comma-separated for several)
    --metrics                  (Prometheus metrics at /metrics)
    -ngl, --gpu-layers, --n-gpu-layers N|auto|all   (layers offloaded to the GPUs)

Exit status: 0 after a clean stop, 2 for bad arguments or a missing model file or missing
package, 1 when llama.cpp refuses to start (a file that is not a GGUF model, a port in use);
the message says which.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from modelserver.launcher.backends.llamacpp_flags import (
    CPU_EXTRA_HINT,
    GPU_LAYERS_FLAG,
    POOLING_TYPES,
    gpu_layers_value,
)

EXIT_OK = 0
EXIT_START_FAILED = 1
EXIT_USAGE = 2


@dataclass(frozen=True)
class RunnerOptions:
    model: Path
    host: str
    port: int
    aliases: tuple[str, ...]
    ctx_size: int | None
    parallel: int | None
    threads: int | None
    embedding: bool
    pooling: str | None
    api_keys: tuple[str, ...]
    metrics: bool = False
    gpu_layers: int | None = None
    """common_params.n_gpu_layers: a number of layers, -1 for 'auto', -2 for 'all'."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m modelserver.launcher.backends.xllamacpp_runner",
        description="Serve a GGUF model with llama.cpp's HTTP server (xllamacpp), "
        "taking llama-server's flag names.",
    )
    parser.add_argument("-m", "--model", required=True, help="GGUF model file")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=_port, required=True, help="port to listen on")
    parser.add_argument("-a", "--alias", default="", help="model name(s) the API reports")
    parser.add_argument("-c", "--ctx-size", type=_natural, help="context size (0: the model's)")
    parser.add_argument("-np", "--parallel", type=_positive, help="number of server slots")
    parser.add_argument("-t", "--threads", type=_positive, help="CPU threads")
    parser.add_argument(
        "--embedding", "--embeddings", action="store_true", help="serve embeddings only"
    )
    parser.add_argument("--pooling", choices=POOLING_TYPES, help="embedding pooling")
    # llama-server reads the key from LLAMA_API_KEY when the flag is absent (llama.cpp
    # common/arg.cpp: `--api-key` ... set_env("LLAMA_API_KEY")); the launcher uses it so the
    # key is not on the command line.
    parser.add_argument(
        "--api-key",
        default=os.environ.get("LLAMA_API_KEY", ""),
        help="API key(s), comma-separated (default: $LLAMA_API_KEY)",
    )
    parser.add_argument("--metrics", action="store_true", help="serve Prometheus /metrics")
    parser.add_argument(
        "-ngl", "--gpu-layers", GPU_LAYERS_FLAG, dest="gpu_layers", type=_gpu_layers,
        help="layers to store in VRAM: a number, 'auto' or 'all'",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> RunnerOptions:
    """Parse llama-server-style flags; argparse exits 2 with a usage message on bad input."""
    args = build_parser().parse_args(argv)
    return RunnerOptions(
        model=Path(args.model).expanduser(),
        host=args.host,
        port=args.port,
        aliases=_split(args.alias),
        ctx_size=args.ctx_size,
        parallel=args.parallel,
        threads=args.threads,
        embedding=args.embedding,
        pooling=args.pooling,
        api_keys=_split(args.api_key),
        metrics=args.metrics,
        gpu_layers=args.gpu_layers,
    )


def common_params(options: RunnerOptions, xllamacpp: Any) -> Any:
    """The xllamacpp `CommonParams` that say what the flags say (unset flags keep defaults)."""
    params = xllamacpp.CommonParams()
    params.model.path = str(options.model)
    params.hostnames = [options.host]
    params.port = options.port
    if options.aliases:
        params.model_alias = set(options.aliases)
    if options.ctx_size is not None:
        params.n_ctx = options.ctx_size
    if options.parallel is not None:
        params.n_parallel = options.parallel
    if options.threads is not None:
        # llama-server: --threads-batch defaults to --threads.
        params.cpuparams.n_threads = options.threads
        params.cpuparams_batch.n_threads = options.threads
    params.embedding = options.embedding
    if options.pooling is not None:
        params.pooling_type = getattr(
            xllamacpp.llama_pooling_type, f"LLAMA_POOLING_TYPE_{options.pooling.upper()}"
        )
    if options.api_keys:
        params.api_keys = list(options.api_keys)
    params.endpoint_metrics = options.metrics
    if options.gpu_layers is not None:
        params.n_gpu_layers = options.gpu_layers
    return params


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    if not options.model.is_file():
        what = "is a folder, not a GGUF file" if options.model.is_dir() else "does not exist"
        return _fail(EXIT_USAGE, f"model file {options.model} {what}")
    try:
        import xllamacpp
    except ImportError:
        return _fail(EXIT_USAGE, f"the xllamacpp package is not installed; {CPU_EXTRA_HINT}")

    # Handlers first: a SIGTERM that arrives while the model loads is kept, and acted on as
    # soon as loading returns (Python runs handlers between bytecodes, not inside C calls).
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    try:
        server = xllamacpp.Server(common_params(options, xllamacpp))
    except RuntimeError as exc:
        return _fail(
            EXIT_START_FAILED,
            f"llama.cpp could not serve {options.model} on {options.host}:{options.port} ({exc}); "
            "its log above says why (not a GGUF model, or the port is taken)",
        )
    print(
        f"xllamacpp_runner: serving {options.model.name} as "
        f"{','.join(options.aliases) or options.model.name} at {server.listening_address}",
        file=sys.stderr,
        flush=True,
    )
    stop.wait()
    # Dropping the last reference runs xllamacpp's destructor: it ends the HTTP loop and
    # frees the model, so the port is closed before the process exits.
    del server
    print("xllamacpp_runner: stopped", file=sys.stderr, flush=True)
    return EXIT_OK


def _fail(code: int, message: str) -> int:
    print(f"xllamacpp_runner: error: {message}", file=sys.stderr, flush=True)
    return code


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 1..65535 (got {value})")
    return value


def _gpu_layers(text: str) -> int:
    try:
        return gpu_layers_value(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _natural(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more (got {value})")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more (got {value})")
    return value


if __name__ == "__main__":
    sys.exit(main())
