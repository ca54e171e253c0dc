"""The fleet file: typed, validated, with errors that name the file, the key and what is allowed.

A fleet file is TOML with the sections `[fleet]`, `[[hosts]]`, `[[models]]`, `[launcher]`,
`[router]`, `[gateway]` and, for a fleet run on a Ray cluster, `[cluster]`. `load_fleet(path)`
returns a `Fleet`; every mistake becomes one `FleetFileError` listing each problem as
`models[2].backend: ... ; allowed: ...`.

Counting rule: `replicas` is the number of workers of a model on *each* of its hosts; replica
`i` on a host listens on `port + i`. In cluster mode (`[cluster]`) there are no hosts:
`replicas` counts the model's workers in the whole cluster, Ray places each on a node (a
model may be pinned by `node_labels` or `resources`), and a model without `port` gets a free
port on its node for each placement.

Validation is strict (`_fleet_values`): `true` is no port and `"5"` no timeout.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import Field, ValidationError, field_validator, model_validator

from modelserver._fleet_messages import KeyProblem, allowed_keys, describe
from modelserver._fleet_values import (
    ANY_ADDRESS,
    GpuRef,
    Section,
    may_share_socket,
    no_gpu_twice,
    shared_gpus,
    socket_address,
)
from modelserver._tenant_config import AdmissionConfig, Tenants
from modelserver.errors import FleetFileError
from modelserver.launcher.backends import check_options

Kind = Literal["chat", "embedding"]
BackendName = Literal["sglang", "vllm", "llamacpp", "sim"]
PolicyName = Literal[
    "fastest", "round_robin", "least_load", "cache_aware", "expected_completion"
]

GPU_BACKENDS: frozenset[str] = frozenset({"sglang", "vllm"})


class FleetSection(Section):
    name: str = "fleet"
    state_dir: str = ".modelserver"


class StaticGpuConfig(Section):
    """One GPU of a host's static inventory (a machine without NVML, or a dry run)."""

    index: int = Field(ge=0)
    uuid: str = ""
    name: str = "static GPU"
    total_gib: float = Field(gt=0)
    used_gib: float = Field(default=0.0, ge=0)


class HostConfig(Section):
    name: str = Field(min_length=1)
    address: str = "127.0.0.1"
    """An IP or DNS name other hosts reach this one at, or "auto" (found with psutil)."""
    gpus: str | list[GpuRef] = "all"
    """Which GPUs ModelServer may use here: "all", "none", or indices / UUIDs."""
    inventory: list[StaticGpuConfig] | None = None
    """The launcher's GPU inventory of this host, written out instead of asking NVML."""

    @field_validator("address")
    @classmethod
    def _reachable(cls, value: str) -> str:
        if socket_address(value) == ANY_ADDRESS:
            raise ValueError(
                f"{value!r} is no address another machine can reach; give this host's IP or"
                ' DNS name (its engines listen there), or "auto"'
            )
        return value

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpus_shape(cls, value: Any) -> Any:
        if (isinstance(value, str) and value not in ("all", "none")) or not isinstance(
            value, str | list
        ):
            raise ValueError(
                f'must be "all", "none" or a list of GPU indices or UUIDs (got {value!r})'
            )
        return value

    @field_validator("gpus")
    @classmethod
    def _gpus_once(cls, value: str | list[int | str]) -> str | list[int | str]:
        if isinstance(value, list):
            no_gpu_twice(value)
        return value


class ModelConfig(Section):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    kind: Kind = "chat"
    backend: BackendName
    path: str = ""
    """Weights: a folder, a GGUF file or a hub id. Relative paths starting with '.' are
    resolved against the fleet file's folder."""
    hosts: list[str] | None = None
    replicas: int = Field(default=1, ge=1, le=1024)
    gpus_per_replica: int | None = Field(default=None, ge=0, le=64)
    gpus: list[GpuRef] | None = None
    """Explicit GPUs for this model on each host, split in order into groups of
    `gpus_per_replica`; when absent the launcher chooses among free GPUs."""
    port: int | None = Field(default=None, ge=1, le=65535)
    """Replica i listens on port + i; required but in cluster mode, where a model without it
    gets a free port on its node each time it is placed."""
    args: list[str] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)
    api_key: str | None = None
    """The engine's own API key: passed to the engine and sent by the router."""
    node_labels: dict[str, str] | None = None
    """Cluster mode: only nodes carrying every one of these Ray node labels (`ray start
    --labels`) may run this model's replicas."""
    resources: dict[str, float] | None = None
    """Cluster mode: Ray custom resources each replica takes besides its GPUs (`ray start
    --resources`), e.g. {"a100" = 1} to pin a model to the nodes that declare it."""

    @property
    def gpus_each(self) -> int:
        if self.gpus_per_replica is not None:
            return self.gpus_per_replica
        return 1 if self.backend in GPU_BACKENDS else 0

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if self.port is not None and self.port + self.replicas - 1 > 65535:
            raise ValueError(f"ports {self.port}..{self.port + self.replicas - 1} run past 65535")
        if self.backend != "sim" and not self.path:
            raise ValueError(f"backend {self.backend!r} needs `path` (the model weights)")
        if self.gpus is not None:
            wanted = self.replicas * self.gpus_each
            if len(self.gpus) != wanted:
                raise ValueError(
                    f"`gpus` lists {len(self.gpus)} GPUs but replicas × gpus_per_replica"
                    f" = {self.replicas} × {self.gpus_each} = {wanted}"
                )
        return self


class LauncherConfig(Section):
    ready_timeout_s: float = Field(default=900.0, gt=0)
    """How long a starting engine may take to answer its readiness probe (SGLang loading a
    70B model from disk takes minutes)."""
    max_restarts: int = Field(default=5, ge=0)
    backoff_initial_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=60.0, gt=0)
    stop_grace_s: float = Field(default=30.0, ge=0)
    health_interval_s: float = Field(default=5.0, gt=0)
    wait_for_gpus_s: float = Field(default=0.0, ge=0)
    """Wait this long for busy GPUs to free up before giving up (0: do not wait)."""
    gpu_busy_used_gib: float = Field(default=10.0, ge=0)
    """A GPU with more memory in use than this is busy (the seed's 10 GB rule)."""
    mem_fraction_margin: float = Field(default=0.05, ge=0, lt=1)
    """Subtracted from the free-memory ratio to get the engine's memory fraction."""
    mem_fraction_max: float = Field(default=0.88, gt=0, le=1)
    ready_poll_s: float = Field(default=0.5, gt=0)
    """How often a starting engine's readiness probe is asked."""
    unhealthy_after: int = Field(default=3, ge=1)
    """Failed health probes in a row after which a ready worker is restarted."""
    backoff_jitter: float = Field(default=0.2, ge=0, lt=1)
    """Each backoff delay is shortened by a random share up to this (spreads restarts)."""
    stable_after_s: float = Field(default=120.0, gt=0)
    """A worker that served this long has recovered: its next crash starts a new streak for
    max_restarts and the backoff."""
    probe_timeout_s: float = Field(default=20.0, gt=0)
    """How long one readiness or health GET may take. SGLang's /health waits up to its
    SGLANG_HEALTH_CHECK_TIMEOUT (20 s) for the scheduler before answering
    (python/sglang/srt/entrypoints/http_server.py, sgl-project/sglang at 0025436e)."""
    placement_poll_s: float = Field(default=5.0, gt=0)
    """How often workers waiting for GPUs or a port are placed again."""
    log_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """An engine's (and the supervisor's) log is rotated once it is larger than this
    (`modelserver.launcher.logfiles`: copy, then truncate; the engine keeps its file)."""
    log_keep: int = Field(default=3, ge=0, le=100)
    """Rotated logs kept beside the live one (`x.log.1` newest ... `x.log.N`); 0: only
    truncate. A worker's logs take at most about (log_keep + 1) × log_max_bytes."""
    log_check_s: float = Field(default=10.0, gt=0)
    """How often the supervisor checks the logs' sizes."""
    drain_notice_s: float = Field(default=10.0, ge=0)
    """`up` on a changed fleet: how long a worker marked draining (or back to ready) is left
    for the routers to notice before the next step; routers re-read the state files every
    `[router.health] interval_s` (default 5 s), so keep this above theirs."""
    drain_timeout_s: float = Field(default=60.0, ge=0)
    """The bound on a draining worker's requests in flight: it is stopped when its engine
    reports none left, or after this long (counted from the start of the drain)."""


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


class GatewayConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    api_keys: list[str] = Field(default_factory=list)
    admin_keys: list[str] = Field(default_factory=list)
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    body_timeout_s: float = Field(default=30.0, gt=0)
    """How long a caller may take to send its request body (a stalled one holds a handler)."""
    tenants: Tenants = Field(default_factory=list)


CLUSTER_ADDRESS_FORMS = '"auto", "local", "HOST:PORT" or "ray://HOST:PORT"'
CLUSTER_HOST = "cluster"
"""The host name of every worker of a cluster-mode fleet (Ray, not the file, picks its node)."""


class ClusterConfig(Section):
    """`[cluster]`: run the fleet on a Ray cluster (docs/CLUSTER.md)."""

    engine: Literal["ray"] = "ray"
    address: str = "auto"
    """"auto": the running cluster this machine belongs to (`ray start` ran here, or
    RAY_ADDRESS names it); "HOST:PORT": the head's GCS address (from a machine of the
    cluster); "ray://HOST:PORT": a cluster's Ray Client server; "local": a private
    single-machine Ray that `up` starts and `down` stops (for trying cluster mode)."""
    local_gpus: int | None = Field(default=None, ge=0, le=1024)
    """With address = "local": the GPUs the private Ray declares (default: Ray detects them)."""
    dashboard_host: str = "127.0.0.1"
    """With address = "local": where Ray's dashboard listens; loopback unless asked (anyone
    who reaches it can run code on the cluster)."""
    inventory: list[StaticGpuConfig] | None = None
    """Every node's GPUs, written out instead of asking NVML there (machines without NVML,
    tests). The check that a replica's GPUs are free runs on its node either way."""
    cpus_per_replica: float = Field(default=1.0, gt=0)
    """Ray CPUs each replica's placement group holds besides its GPUs (its actor and the
    engine's own processes run on them)."""
    ready_wait_s: float = Field(default=900.0, gt=0)
    """How long `up` waits for every replica to be ready, failed or waiting for room."""
    discovery_interval_s: float = Field(default=0.5, gt=0)
    """How often the router reads the replicas' records from the cluster (a replica that
    moved is routed to at its new address within this plus one read after it is ready)."""

    @field_validator("address")
    @classmethod
    def _address_form(cls, value: str) -> str:
        if value in ("auto", "local"):
            return value
        rest = value.removeprefix("ray://")
        host, _, port = rest.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"must be {CLUSTER_ADDRESS_FORMS} (got {value!r})")
        return value


@dataclass(frozen=True)
class WorkerSpec:
    """One replica of one model on one host, as the fleet file implies it."""

    name: str
    model: str
    kind: Kind
    backend: BackendName
    host: str
    address: str
    port: int
    replica: int
    api_key: str | None = None

    @property
    def url(self) -> str:
        """Empty in cluster mode until placed: the node the replica lands on gives it."""
        if not self.address:
            return ""
        address = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{address}:{self.port}"


class Fleet(Section):
    fleet: FleetSection = Field(default_factory=FleetSection)
    hosts: list[HostConfig] = Field(default_factory=list)
    models: list[ModelConfig] = Field(default_factory=list)
    launcher: LauncherConfig = Field(default_factory=LauncherConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    cluster: ClusterConfig | None = None
    source: str = Field(default="<memory>", exclude=True)
    """The file this fleet was read from (not a key of the file)."""
    base_dir: str = Field(default=".", exclude=True)

    @model_validator(mode="after")
    def _cross_checks(self) -> Fleet:
        _check_unique("hosts", [h.name for h in self.hosts])
        _check_unique("models", [m.name for m in self.models])
        if self.cluster is not None:
            self._check_cluster_mode()
            return self
        for index, model in enumerate(self.models):
            if model.port is None:
                raise KeyProblem(f"models[{index}].port",
                                 "required key is missing (only a [cluster] fleet may leave it"
                                 " out)")
            for key in ("node_labels", "resources"):
                if getattr(model, key) is not None:
                    raise KeyProblem(f"models[{index}].{key}",
                                     "pins a model to Ray nodes, so it needs a [cluster] table"
                                     ' (engine = "ray"); without one, list the model\'s hosts')
        known_hosts = {h.name for h in self.hosts}
        for index, model in enumerate(self.models):
            for host in model.hosts or []:
                if host not in known_hosts:
                    raise KeyProblem(
                        f"models[{index}].hosts",
                        f"unknown host {host!r}; hosts in this file: "
                        + (", ".join(repr(h) for h in sorted(known_hosts)) or "none"),
                    )
        if self.models and not self.hosts:
            raise KeyProblem("hosts", "the fleet has models but no [[hosts]]")
        for index, model in enumerate(self.models):
            for host_cfg in self.hosts_of(model):
                _check_gpus_fit(index, model, host_cfg)
        self._check_machines_shared()
        self._check_ports()
        return self

    def _check_cluster_mode(self) -> None:
        """Ray places the replicas: no hosts, no explicit GPUs; fixed ports must not clash
        (any two replicas may land on one node)."""
        if self.hosts:
            raise KeyProblem("hosts", "a [cluster] fleet has no [[hosts]]: Ray places the"
                             " replicas; pin a model with models[i].node_labels or"
                             " models[i].resources")
        taken: dict[int, str] = {}
        for index, model in enumerate(self.models):
            if model.hosts is not None:
                raise KeyProblem(f"models[{index}].hosts",
                                 "not used in a [cluster] fleet; pin the model with node_labels"
                                 " or resources")
            if model.gpus is not None:
                raise KeyProblem(f"models[{index}].gpus",
                                 "not used in a [cluster] fleet: Ray assigns each replica its"
                                 " GPUs on its node; give gpus_per_replica")
            for name, amount in (model.resources or {}).items():
                if name in ("GPU", "CPU", "memory") or amount <= 0:
                    raise KeyProblem(f"models[{index}].resources.{name}",
                                     "must be a custom resource (not GPU, CPU or memory) with"
                                     f" a positive amount (got {amount!r})")
            if model.port is None:
                continue
            for replica in range(model.replicas):
                port = model.port + replica
                if port in taken:
                    raise KeyProblem(f"models[{index}].port",
                                     f"{worker_name(model.name, replica, CLUSTER_HOST)} would"
                                     f" listen on port {port}, already taken by {taken[port]}"
                                     " (any two replicas may land on one node)")
                taken[port] = worker_name(model.name, replica, CLUSTER_HOST)

    def _check_machines_shared(self) -> None:
        """Two [[hosts]] that are one machine (both loopback, or one address) must not both
        be free to give an engine the same GPU: each host's launcher places on its own."""
        needs_gpus = {
            host.name for model in self.models if model.gpus_each
            for host in self.hosts_of(model)
        }
        for later, host in enumerate(self.hosts):
            for earlier in self.hosts[:later]:
                if _machine(earlier) != _machine(host):
                    continue
                shared = shared_gpus(earlier.gpus, host.gpus)
                if shared and {earlier.name, host.name} <= needs_gpus:
                    raise KeyProblem(
                        f"hosts[{later}].gpus",
                        f"hosts {earlier.name!r} ({earlier.address}) and {host.name!r}"
                        f" ({host.address}) are the same machine, and both may give {shared}"
                        " to an engine; list disjoint `gpus` for each",
                    )

    def _check_ports(self) -> None:
        """No two listeners that may share one socket: a worker's address:port against the
        others (127.0.0.1 and localhost are one address), and the gateway's against every
        worker (0.0.0.0 is every address of the machine the gateway runs on)."""
        taken: dict[tuple[str, int], WorkerSpec] = {}
        for worker in self.workers():
            key = (socket_address(worker.address), worker.port)
            if key in taken:
                other = taken[key]
                same = (
                    "" if other.address == worker.address
                    else f" ({worker.address} and {other.address} are one address)"
                )
                raise KeyProblem(
                    f"models[{self._model_index(worker.model)}].port",
                    f"{worker.name} would listen on {worker.address}:{worker.port},"
                    f" already taken by {other.name} on {other.address}:{other.port}{same}",
                )
            taken[key] = worker
        gateway = self.gateway
        for worker in taken.values():
            if worker.port == gateway.port and may_share_socket(gateway.host, worker.address):
                where = f"{gateway.host}:{gateway.port}"
                if socket_address(gateway.host) == ANY_ADDRESS:
                    where += " (every address of the machine it runs on)"
                raise KeyProblem(
                    "gateway.port",
                    f"the gateway on {where} would take port {gateway.port} of {worker.name}"
                    f" on {worker.address}:{worker.port}; give one of them another port",
                )

    def _model_index(self, name: str) -> int:
        return next(i for i, m in enumerate(self.models) if m.name == name)

    # -- queries ---------------------------------------------------------------------------

    def model(self, name: str) -> ModelConfig:
        for model in self.models:
            if model.name == name:
                return model
        from modelserver.errors import UnknownModel

        raise UnknownModel(name, [m.name for m in self.models])

    def host(self, name: str) -> HostConfig:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(f"unknown host {name!r}; hosts: {[h.name for h in self.hosts]}")

    def hosts_of(self, model: ModelConfig) -> list[HostConfig]:
        if model.hosts is None:
            return list(self.hosts)
        return [self.host(name) for name in model.hosts]

    def workers(self, host: str | None = None) -> list[WorkerSpec]:
        """Every replica the file implies, optionally only those of one host. In cluster
        mode the host is CLUSTER_HOST, the address empty and the port 0 where the model has
        none: the node the replica lands on fills them in."""
        specs: list[WorkerSpec] = []
        if self.cluster is not None:
            return [
                WorkerSpec(
                    name=worker_name(model.name, replica, CLUSTER_HOST), model=model.name,
                    kind=model.kind, backend=model.backend, host=CLUSTER_HOST, address="",
                    port=model.port + replica if model.port is not None else 0,
                    replica=replica, api_key=model.api_key,
                )
                for model in self.models for replica in range(model.replicas)
                if host in (None, CLUSTER_HOST)
            ]
        for model in self.models:
            for host_cfg in self.hosts_of(model):
                if host is not None and host_cfg.name != host:
                    continue
                address = resolve_address(host_cfg.address)
                for replica in range(model.replicas):
                    specs.append(
                        WorkerSpec(
                            name=worker_name(model.name, replica, host_cfg.name),
                            model=model.name,
                            kind=model.kind,
                            backend=model.backend,
                            host=host_cfg.name,
                            address=address,
                            port=(model.port or 0) + replica,
                            replica=replica,
                            api_key=model.api_key,
                        )
                    )
        return specs

    def state_dir(self) -> Path:
        return resolve_path(self.fleet.state_dir, self.base_dir)

    def model_path(self, model: ModelConfig) -> str:
        if model.path.startswith("."):
            return str(resolve_path(model.path, self.base_dir))
        return str(Path(model.path).expanduser()) if model.path.startswith("~") else model.path


def worker_name(model: str, replica: int, host: str) -> str:
    """A worker's name: `llama-8b-0@gpu-a` (model, replica index, host)."""
    return f"{model}-{replica}@{host}"


def resolve_path(value: str, base_dir: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (Path(base_dir) / path).resolve()


def _machine(host: HostConfig) -> str:
    return socket_address(resolve_address(host.address))


def resolve_address(address: str) -> str:
    """Turn "auto" into this machine's first non-loopback IPv4 address (psutil), else keep."""
    if address != "auto":
        return address
    from modelserver.netinfo import primary_address

    return primary_address()


def _check_gpus_fit(index: int, model: ModelConfig, host: HostConfig) -> None:
    """What the file alone can tell about GPUs; the real inventory is checked at placement."""
    needed = model.replicas * model.gpus_each
    if needed and host.gpus == "none":
        raise KeyProblem(
            f"models[{index}].gpus_per_replica",
            f'{model.name!r} needs {needed} GPU(s) on host {host.name!r}, which has gpus = "none"',
        )
    if not isinstance(host.gpus, list):
        return
    if needed > len(host.gpus):
        raise KeyProblem(
            f"models[{index}].replicas",
            f"replicas × gpus_per_replica = {model.replicas} × {model.gpus_each} = {needed}"
            f" GPUs, but host {host.name!r} offers {len(host.gpus)}: {host.gpus}",
        )
    for gpu in model.gpus or []:
        if gpu not in host.gpus:
            raise KeyProblem(
                f"models[{index}].gpus",
                f"GPU {gpu!r} is not among host {host.name!r}'s gpus {host.gpus}",
            )


def _check_unique(section: str, names: list[str]) -> None:
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name in seen:
            raise KeyProblem(f"{section}[{index}].name", f"duplicate name {name!r}")
        seen.add(name)


# -- loading ---------------------------------------------------------------------------------


def load_fleet(path: str | Path) -> Fleet:
    """Read and validate a fleet file; raise `FleetFileError` naming every problem."""
    file = Path(path)
    shown = str(path)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise FleetFileError(shown, ["no such file"]) from None
    except IsADirectoryError:
        raise FleetFileError(shown, ["is a folder, not a fleet file"]) from None
    except PermissionError:
        raise FleetFileError(shown, ["cannot be read (permission denied)"]) from None
    except OSError as exc:
        raise FleetFileError(shown, [f"cannot be read ({exc.strerror})"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise FleetFileError(shown, [f"is not UTF-8 text (byte {exc.start})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise FleetFileError(shown, [f"invalid TOML: {exc}"]) from None
    # A file that names no model would start nothing (and `up` could only complain that no
    # host is this machine); say what a fleet file needs, beside any other mistake.
    empty = [] if data.get("models") else [_what_a_fleet_needs(data)]
    try:
        fleet = parse_fleet(data, source=shown, base_dir=str(file.resolve().parent))
    except FleetFileError as exc:
        raise FleetFileError(shown, empty + exc.problems) from None
    if empty:
        raise FleetFileError(shown, empty)
    return fleet


def _what_a_fleet_needs(data: dict[str, Any]) -> str:
    needs = "at least one [[models]] table (name, backend, port)"
    if not data.get("hosts"):
        needs += ' and one [[hosts]] table (name; address, default "127.0.0.1")'
    return f"models: the file describes no model to serve; a fleet file needs {needs}"


def parse_fleet(data: dict[str, Any], source: str = "<memory>", base_dir: str = ".") -> Fleet:
    """Validate an already-parsed fleet document (a dict shaped like the TOML file),
    each model's `options` included (its backend says which and what values)."""
    for reserved in ("source", "base_dir"):
        if reserved in data:
            raise FleetFileError(source, [f"{reserved}: unknown key; {allowed_keys(Fleet)}"])
    try:
        fleet = Fleet.model_validate({**data, "source": source, "base_dir": base_dir})
    except ValidationError as exc:
        raise FleetFileError(source, describe(exc, data, Fleet)) from None
    check_options(fleet)
    return fleet


def allowed_values(literal: Any) -> tuple[str, ...]:
    """The names a Literal type allows (for messages and CLI help)."""
    return tuple(str(v) for v in get_args(literal))
