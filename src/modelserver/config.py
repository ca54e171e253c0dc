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
from modelserver._router_config import (
    BackoffConfig,
    BreakerConfig,
    CacheAwareConfig,
    ExpectedCompletionConfig,
    HealthConfig,
    HedgeConfig,
    KvEventsConfig,
    LatencyConfig,
    PolicyName,
    ResumeConfig,
    RouterConfig,
)
from modelserver._tenant_config import Tenants
from modelserver.errors import FleetFileError
from modelserver.launcher.backends import check_options

# `[router]` and its tables live in _router_config.py; callers import them from here.
__all__ = [
    "CLUSTER_ADDRESS_FORMS",
    "CLUSTER_HOST",
    "GPU_BACKENDS",
    "BackendName",
    "BackoffConfig",
    "BreakerConfig",
    "CacheAwareConfig",
    "ClusterConfig",
    "ExpectedCompletionConfig",
    "Fleet",
    "FleetSection",
    "GatewayConfig",
    "HealthConfig",
    "HedgeConfig",
    "HostConfig",
    "Kind",
    "KvEventsConfig",
    "LatencyConfig",
    "LauncherConfig",
    "ModelConfig",
    "PolicyName",
    "ResumeConfig",
    "RouterConfig",
    "StaticGpuConfig",
    "WorkerSpec",
    "allowed_values",
    "load_fleet",
    "parse_fleet",
    "resolve_address",
    "resolve_path",
    "worker_name",
]

Kind = Literal["chat", "embedding"]
BackendName = Literal["sglang", "vllm", "llamacpp", "sim"]

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
