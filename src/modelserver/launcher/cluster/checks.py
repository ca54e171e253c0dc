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
        if any(_carries(n, model) for n in nodes):
            span = nodes_per_replica(model, nodes)
            if isinstance(span, str):
                problems.append(f"models[{index}].gpus_per_replica: {span}")
    return problems


def nodes_per_replica(model: ModelConfig, nodes: Sequence[NodeView]) -> int | str:
    """How many nodes one replica of `model` spans: 1 when a node it may use has all its
    GPUs; else the fewest N >= 2 over which its GPUs split evenly (gpus_per_replica / N on
    each of N distinct nodes it may use); or why it cannot be run at all."""
    need = model.gpus_each
    sizes = sorted((gpus for n in nodes if _carries(n, model)
                    and (gpus := n.total.get("GPU", 0.0)) > 0), reverse=True)
    if not need or not sizes or need <= sizes[0]:
        return 1
    may_use = " it may use" if model.node_labels or model.resources else ""
    larger = (f"{need} GPUs, more than the largest node{may_use} has ({sizes[0]:g}), and"
              f" backend {model.backend!r} cannot span nodes:")
    from modelserver.launcher.backends import backend_for

    why_not = backend_for(model.backend).spans_nodes
    if why_not is not None:
        return f"{larger} {why_not}"
    for count in range(2, len(sizes) + 1):
        if need % count == 0 and sum(1 for size in sizes if size >= need // count) >= count:
            return count
    shown = ", ".join(f"{size:g}" for size in sizes)
    return (f"{need} GPUs cannot be split evenly over distinct nodes{may_use} (GPUs per node:"
            f" {shown});"
            " a replica larger than a node takes gpus_per_replica / N GPUs on each of N nodes")


def why_waiting(model: ModelConfig, cpus: float, nodes: Sequence[NodeView],
                nnodes: int = 1) -> str:
    """Why a replica of `model` fits on no node now ("no node has 2 free GPUs (free: ...)");
    one spanning `nnodes` nodes needs gpus_per_replica / nnodes free on as many nodes."""
    fitting = [n for n in nodes if _carries(n, model)]
    pinned = ""
    if model.node_labels or model.resources:
        pins = [_shown(model.node_labels or {})] if model.node_labels else []
        pins += [f"{k} {v:g}" for k, v in (model.resources or {}).items()]
        pinned = f" with {'; '.join(pins)}"
        if not fitting:
            return f"no node{pinned} is in the cluster"
    need = model.gpus_each // nnodes
    free = ", ".join(f"{n.short}: {n.available.get('GPU', 0):g}" for n in fitting)
    if nnodes > 1 and sum(1 for n in fitting if n.available.get("GPU", 0.0) >= need) < nnodes:
        return (f"fewer than {nnodes} nodes{pinned} have {need} free GPU{'s' if need != 1 else ''}"
                f" each (free: {free})")
    if need and all(n.available.get("GPU", 0.0) < need for n in fitting):
        return f"no node{pinned} has {need} free GPU{'s' if need != 1 else ''} (free: {free})"
    if all(n.available.get("CPU", 0.0) < cpus for n in fitting):
        return f"no node{pinned} has {cpus:g} free CPUs (cluster.cpus_per_replica)"
    return PLACING


PLACING = "waiting for Ray to place its placement group"
"""Room seems free: Ray has not placed the group yet (resources just freed, or in transit)."""
