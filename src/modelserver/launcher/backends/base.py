"""What every backend does: turn a placed replica into argv + env, and say how to probe it.

A backend never starts anything itself; the supervisor does, with the `LaunchSpec` it gets.
Probes are plain HTTP GETs that must answer 200: `ready_paths` (all of them, in order) while
starting, `health_path` while running.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import Field, TypeAdapter, ValidationError

from modelserver.launcher.secrets import GATEWAY_KEY_ENVS, masked_argv

if TYPE_CHECKING:  # types only: the fleet config imports this package to check options
    from modelserver.config import Fleet, ModelConfig
    from modelserver.launcher.placement import Placement


@dataclass(frozen=True)
class LaunchSpec:
    argv: tuple[str, ...]
    env: Mapping[str, str]

    def shown(self) -> str:
        """The command line for logs and messages, with secrets replaced by ***."""
        return " ".join(masked_argv(self.argv))


@dataclass(frozen=True)
class Span:
    """One node's share of a replica that spans nodes (cluster mode, `gpus_per_replica` more
    than one node has): `nnodes` processes, one per node, that meet at `dist_init_addr`
    (HOST:PORT on rank 0's node); rank 0 serves HTTP, the others only compute."""

    nnodes: int
    rank: int
    dist_init_addr: str
    total_gpus: int
    """GPUs of the whole replica (every node's share)."""


# Types of options several backends take.
MemFraction = Annotated[float, Field(gt=0, le=1)]
"""Share of each GPU's memory the engine may take (overrides the free-memory rule)."""
Program = Annotated[str, Field(min_length=1)]


class Backend(ABC):
    name: ClassVar[str]
    options: ClassVar[Mapping[str, Any]] = {}
    """Keys allowed in `models[i].options` for this backend, each with the type its value
    must have, checked strictly as the fleet file's own keys are (`true` is no number)."""
    ready_paths: ClassVar[tuple[str, ...]] = ("/health",)
    health_path: ClassVar[str] = "/health"
    api_key_env: ClassVar[str | None] = None
    """The environment variable the engine reads its API key from, if it has one. The key
    then goes there (readable by the owner only) instead of on the command line, which
    every user of the host can read with `ps`."""

    spans_nodes: ClassVar[str | None] = "it runs each replica as one process on one node"
    """Why this backend cannot run a replica over several nodes; None: it can (`span_argv`)."""

    @abstractmethod
    def argv(self, placement: Placement, model: ModelConfig, fleet: Fleet) -> list[str]:
        """The engine's command line (no shell), the user's `args` last."""

    def span_argv(
        self, placement: Placement, model: ModelConfig, fleet: Fleet, span: Span
    ) -> list[str]:
        """The command line of one node's process of a spanning replica (`placement` holds
        this node's GPUs)."""
        raise NotImplementedError(self.spans_nodes)

    def command(self, placement: Placement, fleet: Fleet, span: Span | None = None) -> LaunchSpec:
        model = fleet.model(placement.worker.model)
        env = engine_env(placement)
        if self.api_key_env is not None:
            # Never inherit a key from the launcher's own environment.
            env.pop(self.api_key_env, None)
            if model.api_key:
                env[self.api_key_env] = model.api_key
        argv = (self.argv(placement, model, fleet) if span is None
                else self.span_argv(placement, model, fleet, span))
        return LaunchSpec(tuple(argv), env)

    def api_key_flags(self, model: ModelConfig) -> list[str]:
        """`--api-key KEY` for engines that only take it on the command line."""
        if self.api_key_env is not None or not model.api_key:
            return []
        return ["--api-key", model.api_key]

    def engine_problem(self, index: int, model: ModelConfig) -> str | None:
        """Why this machine cannot run the engine at all (not installed), or None. A start
        would fail on every retry; preflight fails its workers at once instead."""
        return None

    def option_problems(self, index: int, model: ModelConfig) -> list[str]:
        allowed = ", ".join(sorted(self.options)) or "none"
        problems: list[str] = []
        for key, value in model.options.items():
            where = f"models[{index}].options.{key}"
            if key not in self.options:
                problems.append(
                    f"{where}: unknown option for backend {self.name!r}; allowed: {allowed}"
                )
            elif (why := self.option_value_problem(key, value, model)) is not None:
                problems.append(f"{where}: {why}")
        return problems

    def option_value_problem(self, key: str, value: Any, model: ModelConfig) -> str | None:
        """Why `value` cannot be option `key` of `model`, or None if it can."""
        try:
            TypeAdapter(self.options[key]).validate_python(value, strict=True)
        except ValidationError as exc:
            return f"{exc.errors()[0]['msg']} (got {value!r})"
        return None


def engine_env(placement: Placement, parent: Mapping[str, str] | None = None) -> dict[str, str]:
    """The parent's environment with the replica's GPUs, without the gateway's keys.

    CUDA_VISIBLE_DEVICES names GPUs by UUID where NVML gave one (stable across reboots and
    driver re-enumeration), else by index with CUDA_DEVICE_ORDER=PCI_BUS_ID so that CUDA's
    index means NVML's. A replica without GPUs gets an empty list: it sees none. Every other
    CUDA_* variable is kept: CUDA_HOME / CUDA_PATH are where flashinfer's and triton's JIT
    find nvcc, CUDA_MPS_* where an MPS daemon is.
    """
    env = dict(os.environ if parent is None else parent)
    for name in GATEWAY_KEY_ENVS:
        env.pop(name, None)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(placement.gpu_ids)
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    return env


def kv_events_flags(
    placement: Placement, model: ModelConfig, fleet: Fleet, *, vllm: bool = False
) -> list[str]:
    """`--kv-events-config JSON` when `[router.kv_events] enabled` and the model generates:
    PUB bound at the worker's port + `events_port_offset`, replay (ROUTER) at port +
    `replay_port_offset`, where the router looks (routing/policies/expected_completion.py,
    `events_endpoints`). SGLang's keys: sgl-project/sglang
    python/sglang/srt/disaggregation/kv_events.py `KVEventsConfig`; vLLM's add
    `enable_kv_cache_events` (vllm/config/kv_events.py)."""
    rule = fleet.router.kv_events
    if not rule.enabled or model.kind != "chat":
        return []
    port = placement.worker.port
    if port + max(rule.events_port_offset, rule.replay_port_offset) > 65535:
        return []  # no such port; the router, by the same rule, expects no events here
    config: dict[str, Any] = {
        "publisher": "zmq",
        "endpoint": f"tcp://*:{port + rule.events_port_offset}",
        "replay_endpoint": f"tcp://*:{port + rule.replay_port_offset}",
        "topic": rule.topic,
    }
    if vllm:
        config = {"enable_kv_cache_events": True, **config}
    return ["--kv-events-config", json.dumps(config)]


def before_user_args(argv: list[str], model: ModelConfig, flags: list[str]) -> list[str]:
    """`argv` with `flags` inserted before the user's `args` (which stay last)."""
    cut = len(argv) - len(model.args)
    return argv[:cut] + flags + argv[cut:]


def flag_pairs(pairs: list[tuple[str, Any]]) -> list[str]:
    """[("--a", 1), ("--b", None)] -> ["--a", "1"]: None means "leave the flag out"."""
    out: list[str] = []
    for flag, value in pairs:
        if value is not None:
            out += [flag, str(value)]
    return out
