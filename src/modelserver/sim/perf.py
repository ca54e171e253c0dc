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
costs ~6 ms at batch 1 and grows with the batch's total context). Attention FLOPs (quadratic
in prompt length) are left out: for prompts under ~8k tokens they are a few percent of 2·N.

Every constant below names its source. The derived figures in `CITED_FIGURES` are what
`tests/sim/test_calibration.py` reproduces from the engine's virtual clock.
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

# --- the GPU: NVIDIA H100 SXM5 80GB datasheet ----------------------------------------------
HBM_BANDWIDTH = 3.35e12  # bytes/s, HBM3
PEAK_BF16_FLOPS = 989.4e12  # dense bf16 tensor-core FLOP/s (1,979 is the sparse figure)
GPU_MEMORY_BYTES = 81_559 * 2**20  # what NVML reports for an H100 80GB: 81,559 MiB

# --- achieved fractions of peak (assumptions, stated as such) ------------------------------
# Large GEMMs on H100 reach 60-70% of dense peak; a whole prefill step, with norms, rotary
# embeddings and attention in between, about half.
PREFILL_MFU = 0.50
# Streaming reads of weights and KV cache reach about 80% of the HBM peak.
HBM_EFFICIENCY = 0.80

# --- SGLang defaults: python/sglang/srt/server_args.py (v0.4-v0.5, tp_size 1, >60 GB GPU) --
MEM_FRACTION_STATIC = 0.88  # share of GPU memory for weights + KV pool at tp_size 1
CHUNKED_PREFILL_SIZE = 8192  # most prompt tokens one prefill step takes (large GPUs)
# SGLang sizes its own cap on running requests from the KV pool (`--max-running-requests`
# overrides it). The simulator's default is a round 256, an assumption, not SGLang's
# figure: high enough that a fleet benchmark runs batched, low enough that overload queues.
DEFAULT_MAX_RUNNING = 256

# KV pool: memory SGLang may use, minus the weights, over the bytes one token's KV takes.
# (81,559 MiB * 0.88 - 16.06 GB) / 131,072 B = 451,647 tokens. SGLang logs this number as
# `max_total_num_tokens` at start and exports it as `sglang:max_total_num_tokens`.
KV_POOL_TOKENS = int((GPU_MEMORY_BYTES * MEM_FRACTION_STATIC - WEIGHT_BYTES) / KV_BYTES_PER_TOKEN)

_FLOPS_PER_TOKEN = 2 * PARAMETERS
_EFFECTIVE_FLOPS = PEAK_BF16_FLOPS * PREFILL_MFU
_EFFECTIVE_BANDWIDTH = HBM_BANDWIDTH * HBM_EFFICIENCY


@dataclass(frozen=True)
class PerfModel:
    """Step times in seconds on the reference GPU; `speed` > 1 makes every step faster."""

    speed: float = 1.0

    def __post_init__(self) -> None:
        if not self.speed > 0:
            raise ValueError(f"speed must be > 0, got {self.speed}")

    def step_time(self, new_tokens: int, context_tokens: int) -> float:
        """One forward step computing `new_tokens` tokens while attending to `context_tokens`.

        `context_tokens` counts every token whose KV the step reads: the cached prefix and
        the new tokens of a prefill, the whole sequence of each request in a decode step.
        """
        compute = new_tokens * _FLOPS_PER_TOKEN / _EFFECTIVE_FLOPS
        memory = (WEIGHT_BYTES + context_tokens * KV_BYTES_PER_TOKEN) / _EFFECTIVE_BANDWIDTH
        return max(compute, memory) / self.speed

    def prefill_time(self, uncached_tokens: int, total_prompt_tokens: int) -> float:
        return self.step_time(uncached_tokens, total_prompt_tokens)

    def decode_time(self, batch_size: int, context_tokens: int) -> float:
        return self.step_time(batch_size, context_tokens)


# Figures the model is built to give (worked out by hand from the constants above, so a
# change to a constant that moves them makes the calibration test fail):
CITED_FIGURES = {
    # TTFT of a 2,048-token prompt, nothing cached: 2048 * 2 * 8.03e9 / (989.4e12 * 0.5).
    "ttft_2048_cold_s": 0.0665,
    # TTFT of the same prompt with 1,920 tokens cached: 128 tokens to compute (4.2 ms)
    # loses to reading the weights and 2,048 tokens of KV (16.06e9 + 2048*131072) / 2.68e12.
    "ttft_2048_hit_1920_s": 0.00609,
    # Decode, batch 1, ~1.1k context: one weight read per token, 6.04 ms -> 165 tokens/s.
    "decode_tok_s_batch_1": 165.0,
    # Decode, batch 128, ~1.1k context each: 6.0 ms weights + 7.0 ms KV = 13.0 ms per step
    # -> 128 / 13.0 ms = 9,850 tokens/s in total.
    "decode_tok_s_batch_128": 9850.0,
}
