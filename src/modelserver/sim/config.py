"""What one simulated engine is: its model, its speed, its faults and its limits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from modelserver.sim.engine import SchedulerConfig
from modelserver.sim.faults import parse_faults
from modelserver.sim.kv_events import DEFAULT_PAGE_SIZE, KvEventsConfig, parse_kv_events_config
from modelserver.sim.perf import (
    DEFAULT_MAX_RUNNING,
    GPUS,
    MEM_FRACTION_STATIC,
    MODELS,
    Gpu,
    ModelSpec,
    PerfModel,
    chunked_prefill_size,
    kv_pool_tokens,
)
from modelserver.sim.priority import DEFAULT_PREEMPTION_THRESHOLD

Kind = Literal["chat", "embedding"]


@dataclass(frozen=True)
class SimConfig:
    """One simulated SGLang engine.

    `max_running` defaults to `perf.DEFAULT_MAX_RUNNING`; `cache_tokens` (the KV pool, shared
    by the prefix cache and running requests) to what SGLang would size for `model_size` on
    `gpu` at `mem_fraction_static` (default SGLang's 0.88 at tp_size 1): 451,647 tokens for
    Llama-3.1-8B on an H100; `model_path` is what /model_info reports (default: the model
    name).
    """

    model: str
    kind: Kind = "chat"
    speed: float = 1.0
    faults: str = ""
    max_running: int | None = None
    cache_tokens: int | None = None
    seed: int = 0
    api_key: str | None = None
    model_path: str | None = None
    gpu: str = "h100"
    model_size: str = "llama-3.1-8b"
    mem_fraction_static: float | None = None
    priority_scheduling: bool = False
    """SGLang's `--enable-priority-scheduling` (sim/priority.py)."""
    low_priority_values_first: bool = False
    priority_preemption: bool = True
    preemption_threshold: int = DEFAULT_PREEMPTION_THRESHOLD
    kv_events_config: str = ""
    """SGLang's `--kv-events-config` JSON; publisher "zmq" turns KV-cache events on."""
    page_size: int = DEFAULT_PAGE_SIZE
    """Tokens per KV-cache event block."""

    def __post_init__(self) -> None:
        if self.gpu not in GPUS:
            raise ValueError(f"gpu {self.gpu!r} unknown; valid: {', '.join(GPUS)}")
        if self.model_size not in MODELS:
            raise ValueError(f"model size {self.model_size!r} unknown; "
                             f"valid: {', '.join(MODELS)}")
        if self.cache_tokens is None:
            self.effective_cache_tokens  # noqa: B018 - fails now if the model does not fit
        if not self.model:
            raise ValueError("model must be a non-empty name")
        if self.kind not in ("chat", "embedding"):
            raise ValueError(f"kind must be 'chat' or 'embedding', got {self.kind!r}")
        if not self.speed > 0:
            raise ValueError(f"speed must be a number > 0, got {self.speed}")
        if self.max_running is not None and self.max_running < 1:
            raise ValueError(f"max_running must be at least 1, got {self.max_running}")
        if self.cache_tokens is not None and self.cache_tokens < 16:
            raise ValueError(f"cache_tokens must be at least 16, got {self.cache_tokens}")
        parse_faults(self.faults)  # fail now, not at start
        if self.page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {self.page_size}")
        self.kv_events  # noqa: B018  (a bad --kv-events-config fails now, not at start)

    @property
    def kv_events(self) -> KvEventsConfig:
        if not self.kv_events_config:
            return KvEventsConfig()
        return parse_kv_events_config(self.kv_events_config)

    @property
    def effective_max_running(self) -> int:
        return self.max_running if self.max_running is not None else DEFAULT_MAX_RUNNING

    @property
    def gpu_spec(self) -> Gpu:
        return GPUS[self.gpu]

    @property
    def model_spec(self) -> ModelSpec:
        return MODELS[self.model_size]

    @property
    def effective_mem_fraction_static(self) -> float:
        return (self.mem_fraction_static if self.mem_fraction_static is not None
                else MEM_FRACTION_STATIC)

    @property
    def effective_cache_tokens(self) -> int:
        if self.cache_tokens is not None:
            return self.cache_tokens
        return kv_pool_tokens(self.gpu_spec, self.model_spec, self.effective_mem_fraction_static)

    @property
    def perf(self) -> PerfModel:
        return PerfModel(self.speed, self.gpu_spec, self.model_spec)

    @property
    def scheduler(self) -> SchedulerConfig:
        return SchedulerConfig(chunked_prefill_size=chunked_prefill_size(self.gpu_spec))

    @property
    def effective_model_path(self) -> str:
        return self.model_path or self.model
