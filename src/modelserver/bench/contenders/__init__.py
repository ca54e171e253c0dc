"""The contenders, by name, and the groups `--contenders` accepts (`ours`, `smg`,
`sglang`, `litellm`, `peers`, `all`). A peer whose package is not installed is left out with the
reason (see `unavailable`)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from modelserver.bench.contenders.base import Contender, Target
from modelserver.errors import BenchError

__all__ = ["CONTENDERS", "GROUPS", "Contender", "ContenderOptions", "Target", "make_contender",
           "resolve_names", "unavailable"]

OUR_POLICIES = ("fastest", "round_robin", "least_load", "cache_aware", "expected_completion")
# SGLang's gateway today (`smg`); `sglang:*` below is its older `sglang-router` 0.3.2 wheel,
# kept as history.
SMG_POLICIES = ("cache_aware", "prefix_hash", "least_load", "power_of_two")

CONTENDERS: tuple[str, ...] = (
    *(f"ours:{p}" for p in OUR_POLICIES),
    "seed",
    *(f"smg:{p}" for p in SMG_POLICIES),
    "smg:round_robin",
    "sglang:cache_aware",
    "sglang:power_of_two",
    "sglang:round_robin",
    "litellm:latency",
    "litellm:shuffle",
    "oracle",
    "ours:expected_completion+hedge",
)

# `smg:round_robin` and `sglang:round_robin` are only for reproducing SGLang's published
# cache-aware vs round-robin result; name them explicitly (`ours:round_robin` is the
# round-robin baseline otherwise).
# `ours:expected_completion+hedge` is the hedging experiment.
_ONLY_BY_NAME = ("smg:round_robin", "sglang:round_robin", "ours:expected_completion+hedge")
GROUPS: dict[str, tuple[str, ...]] = {
    "all": tuple(c for c in CONTENDERS if c not in _ONLY_BY_NAME),
    "ours": tuple(f"ours:{p}" for p in OUR_POLICIES),
    "smg": tuple(f"smg:{p}" for p in SMG_POLICIES),
    "sglang": ("sglang:cache_aware", "sglang:power_of_two"),
    "litellm": ("litellm:latency", "litellm:shuffle"),
    "peers": ("seed", *(f"smg:{p}" for p in SMG_POLICIES), "sglang:cache_aware",
              "sglang:power_of_two", "litellm:latency", "litellm:shuffle"),
}

_PACKAGES = {"smg": "smg", "sglang": "sglang_router", "litellm": "litellm"}


@dataclass(frozen=True)
class ContenderOptions:
    """What some contenders need to know about the run."""

    time_scale: float = 1.0
    """The engines' speed; the seed's absolute latency constants are divided by it."""
    log_dir: Path | None = None
    max_running: dict[str, int] | None = None
    """The oracle's knowledge of each engine's batch cap, by URL."""


def resolve_names(spec: str) -> list[str]:
    """`ours:cache_aware,sglang,oracle` -> the contender names, in the canonical order."""
    wanted: set[str] = set()
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        if item in GROUPS:
            wanted.update(GROUPS[item])
        elif item in CONTENDERS:
            wanted.add(item)
        else:
            raise BenchError(
                f"unknown contender {item!r}; valid: {', '.join(CONTENDERS)} "
                f"or a group: {', '.join(GROUPS)}"
            )
    if not wanted:
        raise BenchError("--contenders names no contender")
    return [name for name in CONTENDERS if name in wanted]


def unavailable(name: str) -> str | None:
    """Why a contender cannot run here (its package is missing), or None."""
    family = name.split(":", 1)[0]
    package = _PACKAGES.get(family)
    if package is not None and importlib.util.find_spec(package) is None:
        return f"python package {package!r} is not installed (pip install '.[bench]')"
    return None


def make_contender(name: str, options: ContenderOptions) -> Contender:
    family, _, variant = name.partition(":")
    factories: dict[str, Callable[[], Contender]] = {
        "ours": lambda: _ours(variant),
        "seed": lambda: _seed(options),
        "smg": lambda: _smg(variant, options),
        "sglang": lambda: _sglang(variant, options),
        "litellm": lambda: _litellm(variant),
        "oracle": lambda: _oracle(options),
    }
    if name not in CONTENDERS or family not in factories:
        raise BenchError(f"unknown contender {name!r}; valid: {', '.join(CONTENDERS)}")
    return factories[family]()


def _ours(policy: str) -> Contender:
    from modelserver.bench.contenders.ours import OursContender
    from modelserver.config import RouterConfig

    policy, hedged, _ = policy.partition("+hedge")
    if policy != "expected_completion":
        return OursContender(policy)
    # The bench's engines publish KV-cache events; `+hedge` turns hedged streams on too.
    config = {"kv_events": {"enabled": True}, "hedge": {"enabled": bool(hedged)}}
    contender = OursContender(policy, RouterConfig.model_validate(config))
    contender.name = f"ours:{policy}{hedged}"
    return contender


def _seed(options: ContenderOptions) -> Contender:
    from modelserver.bench.contenders.seed import SeedContender

    return SeedContender(time_scale=options.time_scale)


def _smg(policy: str, options: ContenderOptions) -> Contender:
    from modelserver.bench.contenders.smg_gateway import SmgContender

    return SmgContender(policy, log_dir=options.log_dir)


def _sglang(policy: str, options: ContenderOptions) -> Contender:
    from modelserver.bench.contenders.sglang_router import SglangRouterContender

    return SglangRouterContender(policy, log_dir=options.log_dir)


def _litellm(variant: str) -> Contender:
    from modelserver.bench.contenders.litellm_router import LitellmRouterContender

    strategy = {"latency": "latency-based-routing", "shuffle": "simple-shuffle"}[variant]
    return LitellmRouterContender(strategy)


def _oracle(options: ContenderOptions) -> Contender:
    from modelserver.bench.contenders.oracle import OracleContender

    return OracleContender(max_running=options.max_running)
