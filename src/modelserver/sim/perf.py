"""The performance model: how long one forward step of the engine takes on the GPU.

Reference setup: Llama-3.1-8B-Instruct, bf16 weights and KV cache, on one H100 SXM5 80GB,
served by SGLang with its defaults (tensor parallel 1, FlashInfer attention, CUDA graphs).

A step is a roofline: it takes as long as the slower of

- compute:  2 x parameters FLOPs per token processed (every new prompt token of a prefill,
            one token per running request in a decode step), at a fraction of the tensor-core
            peak;
- memory:   reading every weight once, plus reading the KV cache of every token the batch
            attends to, at a fraction of the HBM bandwidth.

Prefill of a long prompt is compute-bound (time proportional to the uncached prompt tokens);
decode is memory-bound (the weights are read once per step whatever the batch, so a step
costs ~7 ms at batch 1 and grows with the batch's total context). Attention FLOPs (quadratic
in prompt length) are left out: for prompts under ~8k tokens they are a few percent of 2·N.

Every constant below names its source. The two efficiency fractions are fitted to SGLang's
published Llama-3.1-8B figures, which are on an A100 (no bf16 H100 ones were found);
`tests/sim/test_calibration.py` runs those benchmarks on the engine's virtual clock and
compares, and docs/SIMULATOR.md says what matches and what does not.
"""

from __future__ import annotations

from dataclasses import dataclass

# --- the model: meta-llama/Llama-3.1-8B-Instruct, config.json and model card -------------
PARAMETERS = 8.03e9  # "8B": 8,030,261,248 parameters (model card / safetensors index)
BYTES_PER_PARAMETER = 2  # bf16
NUM_LAYERS = 32  # config.json num_hidden_layers
NUM_KV_HEADS = 8  # config.json num_key_value_heads (grouped-query attention)
HEAD_DIM = 128  # config.json hidden_size 4096 / num_attention_heads 32
CONTEXT_LENGTH = 131_072  # config.json max_position_embeddings
# K and V, per layer, per KV head, per dimension, bf16: 2*32*8*128*2 = 131,072 bytes = 128 KiB.
KV_BYTES_PER_TOKEN = 2 * NUM_LAYERS * NUM_KV_HEADS * HEAD_DIM * 2
WEIGHT_BYTES = PARAMETERS * BYTES_PER_PARAMETER  # 16.06 GB


@dataclass(frozen=True)
class ModelSpec:
    """What the performance model and the KV pool need to know of a model (bf16)."""

    name: str
    parameters: float
    num_layers: int
    num_kv_heads: int
    head_dim: int

    @property
    def weight_bytes(self) -> float:
        return self.parameters * BYTES_PER_PARAMETER

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of every layer and KV head, bf16."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * 2


LLAMA_3_1_8B = ModelSpec("llama-3.1-8b", PARAMETERS, NUM_LAYERS, NUM_KV_HEADS, HEAD_DIM)
# meta-llama/Llama-3.2-3B-Instruct config.json: 28 layers, 8 KV heads, hidden 3072 / 24 heads
# = head_dim 128; 3,212,749,824 parameters (model card). Less weight memory, a larger pool.
LLAMA_3_2_3B = ModelSpec("llama-3.2-3b", 3.21e9, 28, 8, 128)
# meta-llama/Llama-3.1-70B-Instruct config.json: 80 layers, 8 KV heads, head_dim 128; 70.6e9
# parameters. Its 141 GB of weights fit no single GPU below: a clear error, not a pool.
LLAMA_3_1_70B = ModelSpec("llama-3.1-70b", 70.6e9, 80, 8, 128)
MODELS = {m.name: m for m in (LLAMA_3_1_8B, LLAMA_3_2_3B, LLAMA_3_1_70B)}

# --- the GPUs: NVIDIA datasheets ---------------------------------------------------------


@dataclass(frozen=True)
class Gpu:
    name: str
    hbm_bandwidth: float  # bytes/s
    peak_bf16_flops: float  # dense tensor-core FLOP/s (datasheets also print 2x "with sparsity")
    memory_bytes: int  # what NVML reports


# H100 SXM5 80GB: HBM3 3.35 TB/s, 989.4 TFLOP/s dense bf16, 81,559 MiB in NVML.
H100_SXM = Gpu("H100 SXM5 80GB", 3.35e12, 989.4e12, 81_559 * 2**20)
# A100 SXM4 80GB: HBM2e 2,039 GB/s, 312 TFLOP/s dense bf16, 81,920 MiB in NVML. SGLang's
# published Llama-3.1-8B figures used for the calibration are on this GPU (see below).
A100_SXM_80GB = Gpu("A100 SXM4 80GB", 2.039e12, 312e12, 81_920 * 2**20)
# A100 SXM4 40GB: HBM2 1,555 GB/s, 312 TFLOP/s dense bf16, 40,960 MiB.
A100_SXM_40GB = Gpu("A100 SXM4 40GB", 1.555e12, 312e12, 40_960 * 2**20)
# L4: GDDR6 300 GB/s, 121 TFLOP/s dense bf16 (242 "with sparsity"), 23,034 MiB in NVML.
L4 = Gpu("L4 24GB", 300e9, 121e12, 23_034 * 2**20)
GPUS = {"h100": H100_SXM, "a100-80gb": A100_SXM_80GB, "a100-40gb": A100_SXM_40GB, "l4": L4}

# --- achieved fractions of peak: fitted to published SGLang figures -----------------------
# Fitted on SGLang's own published run of Llama-3.1-8B-Instruct (bf16, SGLang v0.3.0,
# --enable-torch-compile, 1 x A100 80GB), sgl-project/sglang benchmark/benchmark_vllm_060/
# README.md (Sept 2024), online ShareGPT at 4 req/s: median ITL 11.93 ms, median TTFT
# 31.98 ms. A decode step there is ~6 requests reading the weights once; 11.93 ms for
# 16.06 GB is 66-68% of the A100's HBM peak once the batch's KV is added. Kernel efficiency
# is a property of the kernels more than of the GPU, so the same fraction is used for H100.
HBM_EFFICIENCY = 0.68
# The TTFT of that run (31.98 ms for ShareGPT prompts averaging ~236 tokens, most of it the
# prefill GEMMs) is met at half the dense peak; kept at the round 0.50 it was assumed to be
# (the fit gives 0.47-0.52 depending on the prompt-length assumption). No published bf16
# SGLang TTFT of Llama-3.1-8B on one H100 was found to fit it on directly.
PREFILL_MFU = 0.50

# --- SGLang defaults: python/sglang/srt/server_args.py `__post_init__` as of v0.4 (Nov 2024,
# the version of the published router benchmark): mem_fraction_static by tensor-parallel size
# (0.88 at tp_size 1, 0.87 at 2, 0.85 at 4, 0.81 at 8); chunked_prefill_size 2048 on a GPU
# under 25,000 MB, else 8192. Later versions reserve a fixed amount per GPU class instead.
MEM_FRACTION_STATIC = 0.88  # share of GPU memory for weights + KV pool at tp_size 1
CHUNKED_PREFILL_SIZE = 8192  # most prompt tokens one prefill step takes (large GPUs)
SMALL_GPU_CHUNKED_PREFILL_SIZE = 2048
SMALL_GPU_BYTES = 25_000 * 2**20


def chunked_prefill_size(gpu: Gpu) -> int:
    return SMALL_GPU_CHUNKED_PREFILL_SIZE if gpu.memory_bytes < SMALL_GPU_BYTES else (
        CHUNKED_PREFILL_SIZE)
# SGLang sizes its own cap on running requests from the KV pool (`--max-running-requests`
# overrides it). The simulator's default is a round 256, an assumption, not SGLang's
# figure: high enough that a fleet benchmark runs batched, low enough that overload queues.
DEFAULT_MAX_RUNNING = 256


def kv_pool_tokens(gpu: Gpu, model: ModelSpec = LLAMA_3_1_8B,
                   mem_fraction_static: float = MEM_FRACTION_STATIC) -> int:
    """SGLang's `max_total_num_tokens` for `model` on `gpu` at tp_size 1: the memory SGLang
    may use, minus the weights, over the bytes one token's KV takes
    (python/sglang/srt/model_executor/model_runner.py `profile_max_num_token`: available
    memory after loading weights minus (1 - mem_fraction_static) x total, over
    `cell_size`, the per-token K and V bytes of every layer). Raises ValueError when the
    weights leave no room, as SGLang stops with "Not enough memory"."""
    if not 0 < mem_fraction_static <= 1:
        raise ValueError(f"mem_fraction_static must be in (0, 1], got {mem_fraction_static}")
    room = gpu.memory_bytes * mem_fraction_static - model.weight_bytes
    tokens = int(room / model.kv_bytes_per_token)
    if tokens < 16:
        raise ValueError(
            f"not enough memory: {model.name} ({model.weight_bytes / 1e9:.1f} GB of weights) "
            f"leaves no KV pool on {gpu.name} at mem_fraction_static {mem_fraction_static}"
        )
    return tokens


# (81,559 MiB * 0.88 - 16.06 GB) / 131,072 B = 451,647 tokens. SGLang logs this number as
# `max_total_num_tokens` at start and exports it as `sglang:max_total_num_tokens`.
KV_POOL_TOKENS = kv_pool_tokens(H100_SXM)


@dataclass(frozen=True)
class PerfModel:
    """Step times in seconds on `gpu` (the H100 unless told); `speed` > 1 makes every step
    faster."""

    speed: float = 1.0
    gpu: Gpu = H100_SXM
    model: ModelSpec = LLAMA_3_1_8B

    def __post_init__(self) -> None:
        if not self.speed > 0:
            raise ValueError(f"speed must be > 0, got {self.speed}")

    def step_time(self, new_tokens: int, context_tokens: int) -> float:
        """One forward step computing `new_tokens` tokens while attending to `context_tokens`.

        `context_tokens` counts every token whose KV the step reads: the cached prefix and
        the new tokens of a prefill, the whole sequence of each request in a decode step.
        """
        gpu, model = self.gpu, self.model
        compute = new_tokens * 2 * model.parameters / (gpu.peak_bf16_flops * PREFILL_MFU)
        memory = (model.weight_bytes + context_tokens * model.kv_bytes_per_token) / (
            gpu.hbm_bandwidth * HBM_EFFICIENCY
        )
        return max(compute, memory) / self.speed

    def prefill_time(self, uncached_tokens: int, total_prompt_tokens: int) -> float:
        return self.step_time(uncached_tokens, total_prompt_tokens)

    def decode_time(self, batch_size: int, context_tokens: int) -> float:
        return self.step_time(batch_size, context_tokens)
