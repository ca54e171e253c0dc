"""What the llamacpp backend and the xllamacpp runner both need to know about llama-server's
flags. A module of its own so that the backend never imports the runner: the runner runs as
`python -m modelserver.launcher.backends.xllamacpp_runner`, which first imports this package
(and so the backend); had the backend imported the runner, runpy would find it already in
sys.modules and warn (RuntimeWarning) at the top of every llama.cpp worker's log.
"""

from __future__ import annotations

POOLING_TYPES = ("none", "mean", "cls", "last", "rank")
CPU_EXTRA_HINT = "pip install 'modelserver[cpu]'"

GPU_LAYERS_FLAG = "--n-gpu-layers"
"""`-ngl, --gpu-layers, --n-gpu-layers N`: "max. number of layers to store in VRAM, either an
exact number, 'auto', or 'all'" (ggml-org/llama.cpp common/arg.cpp; 'auto' is -1 and 'all'
is -2 in common_params.n_gpu_layers). Older llama-server builds take a number only."""

ALL_LAYERS = 999
"""What a worker given GPUs asks for: more layers than any model has. llama.cpp offloads at
most the model's own layers, and every llama-server version takes a number (the words 'all'
and 'auto' came later), so this offloads everything on old and new builds alike."""

GPU_LAYER_WORDS = {"auto": -1, "all": -2}
"""llama.cpp's words for `--n-gpu-layers` and the common_params value each stands for."""


def gpu_layers_value(text: str) -> int:
    """`--n-gpu-layers` as llama.cpp reads it: 'auto', 'all' or a number >= 0."""
    if text in GPU_LAYER_WORDS:
        return GPU_LAYER_WORDS[text]
    value = int(text)
    if value < 0:
        raise ValueError(f"must be 'auto', 'all' or a number of layers >= 0 (got {text!r})")
    return value
