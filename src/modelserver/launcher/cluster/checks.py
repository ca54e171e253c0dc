"""What `up` refuses before starting anything, and why a replica waits: pure functions of the
fleet and the cluster's nodes as Ray reports them (tested without Ray)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from modelserver.config import Fleet, ModelConfig


@dataclass(frozen=True)
class NodeView:
    node_id: str
    labels: Mapping[str, str] = field(default_factory=dict)
    total: Mapping[str, float] = field(default_factory=dict)
    available: Mapping[str, float] = field(default_factory=dict)

    @property
    def short(self) -> str:
        return self.node_id[:12]


def _carries(node: NodeView, model: ModelConfig) -> bool:
    labels = model.node_labels or {}
    return all(node.labels.get(k) == v for k, v in labels.items()) and all(
        node.total.get(name, 0.0) >= amount for name, amount in (model.resources or {}).items()
    )


def _shown(labels: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "none"


def refusals(fleet: Fleet, nodes: Sequence[NodeView]) -> list[str]:
    """Every reason the cluster can never run the fleet as written, each naming its key."""
    problems: list[str] = []
    total_gpus = sum(n.total.get("GPU", 0.0) for n in nodes)
    wanted = sum(m.replicas * m.gpus_each for m in fleet.models)
    if wanted > total_gpus:
        per_model = ", ".join(f"{m.name}: {m.replicas} × {m.gpus_each}"
                              for m in fleet.models if m.gpus_each)
        per_node = ", ".join(f"{n.short}: {n.total.get('GPU', 0):g}" for n in nodes) or "none"
        problems.append(f"models: the fleet asks for {wanted} GPUs ({per_model}) but the whole"
                        f" cluster has {total_gpus:g} (nodes: {per_node})")
    for index, model in enumerate(fleet.models):
        for key, value in (model.node_labels or {}).items():
            if not any(n.labels.get(key) == value for n in nodes):
                found = sorted({f"{key}={n.labels[key]}" for n in nodes if key in n.labels})
                problems.append(f"models[{index}].node_labels.{key}: no node of the cluster"
                                f" carries {key}={value} (found: {', '.join(found) or 'none'})")
        for name, amount in (model.resources or {}).items():
            most = max((n.total.get(name, 0.0) for n in nodes), default=0.0)
            if most < amount:
                problems.append(f"models[{index}].resources.{name}: no node of the cluster has"
                                f" {amount:g} of resource {name!r} (the most any node has:"
                                f" {most:g})")
        fitting = [n for n in nodes if _carries(n, model)]
        largest = max((n.total.get("GPU", 0.0) for n in fitting), default=0.0)
        if fitting and model.gpus_each > largest:
            may_use = " it may use" if model.node_labels or model.resources else ""
            problems.append(f"models[{index}].gpus_per_replica: {model.gpus_each} GPUs, but the"
                            f" largest node{may_use} has {largest:g}; a replica runs on one node")
    return problems


def why_waiting(model: ModelConfig, cpus: float, nodes: Sequence[NodeView]) -> str:
    """Why a replica of `model` fits on no node now ("no node has 2 free GPUs (free: ...)")."""
    fitting = [n for n in nodes if _carries(n, model)]
    pinned = ""
    if model.node_labels or model.resources:
        pins = [_shown(model.node_labels or {})] if model.node_labels else []
        pins += [f"{k} {v:g}" for k, v in (model.resources or {}).items()]
        pinned = f" with {'; '.join(pins)}"
        if not fitting:
            return f"no node{pinned} is in the cluster"
    need = model.gpus_each
    free = ", ".join(f"{n.short}: {n.available.get('GPU', 0):g}" for n in fitting)
    if need and all(n.available.get("GPU", 0.0) < need for n in fitting):
        return f"no node{pinned} has {need} free GPU{'s' if need != 1 else ''} (free: {free})"
    if all(n.available.get("CPU", 0.0) < cpus for n in fitting):
        return f"no node{pinned} has {cpus:g} free CPUs (cluster.cpus_per_replica)"
    return PLACING


PLACING = "waiting for Ray to place its placement group"
"""Room seems free: Ray has not placed the group yet (resources just freed, or in transit)."""
