"""The fleet file's `[router]` table and its sub-tables (breaker, backoff, health, latency,
policies, KV events, hedging, resuming, admission), each tunable with its default written
once (kept beside `config.py` so that file only names them)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from modelserver._fleet_values import Section
from modelserver._tenant_config import AdmissionConfig

PolicyName = Literal[
    "fastest", "round_robin", "least_load", "cache_aware", "expected_completion"
]


class BreakerConfig(Section):
    """Circuit breaker per worker: closed -> open after `failure_threshold` consecutive
    failures -> half-open (one trial request at a time) after `cooldown_s` -> closed after
    `success_threshold` trial successes. Names and defaults follow SGLang's model gateway
    (sgl-project/sglang `sgl-model-gateway/src/core/circuit_breaker.rs`, CircuitBreakerConfig
    default: failure_threshold 5, success_threshold 2, timeout_duration 30 s; its
    `src/config/types.rs` uses 10 / 3 / 60 s for the router-wide default)."""

    failure_threshold: int = Field(default=5, ge=1)
    success_threshold: int = Field(default=2, ge=1)
    cooldown_s: float = Field(default=30.0, gt=0)


class BackoffConfig(Section):
    """Backoff before retrying when no other worker is left: initial × multiplier^n, capped,
    ± jitter. Defaults from SGLang's model gateway RetryConfig (sgl-project/sglang
    `sgl-model-gateway/src/config/types.rs`: initial_backoff_ms 50, max_backoff_ms 30000,
    backoff_multiplier 1.5, jitter_factor 0.2); the request deadline bounds it anyway."""

    initial_s: float = Field(default=0.05, gt=0)
    max_s: float = Field(default=30.0, gt=0)
    multiplier: float = Field(default=1.5, ge=1.0)
    jitter: float = Field(default=0.2, ge=0, le=1)


class HealthConfig(Section):
    """Active probes: GET `endpoint` on every worker each `interval_s` (never a generation).
    `failure_threshold` consecutive failed probes take a worker out, `success_threshold`
    bring it back. SGLang's HealthCheckConfig (`sgl-model-gateway/src/config/types.rs`) uses
    3 / 2, a 5 s timeout and 60 s interval; probes here are one cheap GET, so more often."""

    endpoint: str = "/health"
    interval_s: float = Field(default=5.0, gt=0)
    timeout_s: float = Field(default=2.0, gt=0)
    failure_threshold: int = Field(default=3, ge=1)
    success_threshold: int = Field(default=2, ge=1)


class LatencyConfig(Section):
    """Latency learned from real traffic, and ejection of workers that grow slow.

    A worker whose EWMA latency per output token exceeds `ejection_ratio` × the median of
    its model's other workers is ejected (the seed's LATENCY_GROWING_RATE, made relative);
    after `readmit_after_s` it gets one trial request and is re-admitted if the trial is
    back within the bound."""

    ewma_alpha: float = Field(default=0.2, gt=0, le=1)
    ejection_ratio: float = Field(default=3.0, gt=1)
    min_samples: int = Field(default=5, ge=1)
    """Samples a worker needs before it can be compared (and ejected)."""
    min_gap_s: float = Field(default=0.002, ge=0)
    """...and it must also be this many seconds per token slower than the median, so the
    jitter of very fast engines (sub-millisecond tokens) never ejects anyone."""
    readmit_after_s: float = Field(default=30.0, gt=0)


class CacheAwareConfig(Section):
    """Prefix affinity (policy `cache_aware`). `cache_threshold`, `balance_abs_threshold` and
    `balance_rel_threshold` mean what they mean in SGLang's router (sgl-project/sglang
    `sgl-model-gateway/src/policies/cache_aware.rs`; defaults 0.3 / 64 / 1.5 from its
    `CliArgs::default`). The tree holds `block_chars`-long blocks of rendered conversations,
    at most `max_blocks` per model, least recently used evicted first."""

    cache_threshold: float = Field(default=0.3, ge=0, le=1)
    balance_abs_threshold: int = Field(default=64, ge=0)
    balance_rel_threshold: float = Field(default=1.5, ge=1)
    block_chars: int = Field(default=64, ge=1)
    max_blocks: int = Field(default=262_144, ge=1)
    """16M characters (~4M tokens) of prompts per model: more than the KV caches of eight
    H100 engines of an 8B model hold (~0.45M tokens each); ~140 bytes a block (tracemalloc)."""
    affinity_max_slowdown: float = Field(default=1.5, ge=1)
    """Ours, not SGLang's: a worker holding the prefix keeps the request only while its
    learned seconds per output token are at most this many times the fastest usable
    worker's; a slower replica holding hot prefixes would otherwise be fed past its speed
    (docs/BENCHMARKS.md, run 1)."""
    affinity_load_factor: float = Field(default=1.25, ge=1)
    affinity_load_slack: float = Field(default=2.0, ge=0)
    """Ours: bounded-load affinity (Mirrokni et al., "Consistent Hashing with Bounded Loads",
    SODA 2018; HAProxy's `hash-balance-factor`), with c = 1.25. A holder keeps the request
    only while its requests in flight, this one included, stay within factor × its
    speed-weighted share of all requests in flight + slack. The slack lets a few conversations
    homed on one worker stay there; without the bound, prompts sharing a system prompt all
    go to one worker until SGLang's 64-request imbalance rule trips."""


class ResumeConfig(Section):
    """Resuming a stream that broke after content reached the caller, and judging stalls
    from what the router learned (docs: README "Routing", "Resuming a broken stream").

    A stream attempt counts as stalled, and is abandoned (resumed or retried elsewhere, the
    worker's breaker told), when its first byte is later than `ttft_multiple` x the worker's
    learned time to first token plus one learned TTFT per request already in flight there,
    or when no chunk came for `chunk_multiple` x its learned seconds per token. Never sooner
    than `min_stall_s` (a busy host's scheduling hiccup is not a stall); `attempt_timeout_s`
    stays the outer bound, and a worker not measured yet has only that bound."""

    enabled: bool = True
    max_resumes: int = Field(default=3, ge=0, le=16)
    """Resumes of one stream; one more break then ends it with a clear error."""
    ttft_multiple: float = Field(default=8.0, gt=1)
    chunk_multiple: float = Field(default=20.0, gt=1)
    min_stall_s: float = Field(default=2.0, gt=0)


class KvEventsConfig(Section):
    """Exact prefix-cache knowledge from the engines' KV-cache events (routing/kv_events.py).

    A worker at `http://HOST:PORT` publishes at `tcp://HOST:(PORT + events_port_offset)` and
    replays at `tcp://HOST:(PORT + replay_port_offset)`: the ports the launcher gives the
    engines it starts (`--kv-events-config`). `endpoints` / `replay_endpoints` (worker URL ->
    `tcp://...`) override that rule for engines started otherwise."""

    enabled: bool = False
    events_port_offset: int = Field(default=1000, ge=1, le=60000)
    replay_port_offset: int = Field(default=2000, ge=1, le=60000)
    topic: str = ""
    endpoints: dict[str, str] = Field(default_factory=dict)
    replay_endpoints: dict[str, str] = Field(default_factory=dict)
    replay_timeout_s: float = Field(default=2.0, gt=0)


class ExpectedCompletionConfig(Section):
    """Policy `expected_completion`: the worker where this request would finish first.

    Priors, used until traffic (or the speed probe at start) has taught each worker's own
    figures: `prefill_ratio` is seconds per uncached prompt token over seconds per output
    token (~0.004 for Llama 3.1 8B on an H100: ~27 µs a prefilled token at 60% of 989
    TFLOP/s against ~6.5 ms a decode step, sim/perf.py), `batch_growth` how much a decode
    step grows per request running beside it (a fraction of the batch-1 step)."""

    prefill_ratio: float = Field(default=0.004, gt=0)
    batch_growth: float = Field(default=0.02, ge=0)
    default_output_tokens: int = Field(default=256, ge=1)
    """Expected output of a request without `max_tokens`, until the model's mean is learned."""
    tokenizer: Literal["sim", "none"] = "sim"
    """How the router turns a prompt into token ids for the exact (KV events) index: "sim"
    is the simulated engine's Llama 3 stand-in; "none" estimates 4 characters a token and
    leaves exact matching off."""
    speed_probe: bool = True
    """At start, one short streamed generation per worker measures its speed."""
    speed_probe_tokens: int = Field(default=16, ge=2, le=256)
    learning_alpha: float = Field(default=0.1, gt=0, le=1)


class HedgeConfig(Section):
    """Hedged streams (routing/hedge.py): a stream whose first token is later than the
    worker's learned `percentile` time to first token gets a copy on the next best worker;
    the first to answer wins, the other is closed. At most `budget` extra requests per
    request over time (a token bucket filled by `budget` per request, capped at `burst`)."""

    enabled: bool = False
    percentile: float = Field(default=95.0, gt=50, lt=100)
    budget: float = Field(default=0.05, ge=0, le=1)
    burst: float = Field(default=5.0, ge=1)
    min_samples: int = Field(default=10, ge=1)
    """TTFT samples a worker needs before its requests may be hedged."""
    window: int = Field(default=200, ge=10)
    """TTFT samples kept per worker for the percentile."""


class RouterConfig(Section):
    policy: PolicyName = "cache_aware"
    request_timeout_s: float = Field(default=600.0, gt=0)
    """Deadline of one request, all attempts and backoffs included."""
    max_attempts: int = Field(default=3, ge=1, le=32)
    attempt_timeout_s: float = Field(default=300.0, gt=0)
    """One attempt: the whole answer, or (streams) the first chunk. A hung worker is
    abandoned after this and the request goes elsewhere."""
    connect_timeout_s: float = Field(default=3.0, gt=0)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    backoff: BackoffConfig = Field(default_factory=BackoffConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    latency: LatencyConfig = Field(default_factory=LatencyConfig)
    cache_aware: CacheAwareConfig = Field(default_factory=CacheAwareConfig)
    expected_completion: ExpectedCompletionConfig = Field(
        default_factory=ExpectedCompletionConfig
    )
    kv_events: KvEventsConfig = Field(default_factory=KvEventsConfig)
    hedge: HedgeConfig = Field(default_factory=HedgeConfig)
    resume: ResumeConfig = Field(default_factory=ResumeConfig)
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)
