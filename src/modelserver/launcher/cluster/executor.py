"""Cluster mode from any machine of the cluster: reconcile (`up`), rows (`status`), logs,
`down`. Ray does the placing, the membership and the remote processes; this module only says
what should run and reads what does.

One replica = one placement group (one bundle: its GPUs, `cluster.cpus_per_replica` CPUs and
its custom resources, STRICT_PACK on one node, node labels as the bundle's label selector)
+ one named, detached `ReplicaActor` in it with unlimited restarts. When a node dies, Ray
re-places the group on a node with room and restarts the actor there; when a node joins, Ray
places the groups still pending. Both are Ray's own reconciling, not ours.

`up` run again is a reconcile: a replica whose actor lives with the same model settings is
kept (adopted), one whose settings changed is replaced, one no longer in the file removed,
a new one added (`rollout`: the plan, and the order that drains replicas before they go).
A replica's model settings, and their fingerprint, travel with its record.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.experimental import internal_kv
from ray.util.placement_group import (
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from modelserver.config import Fleet, WorkerSpec
from modelserver.errors import ClusterError
from modelserver.launcher.cluster import rollout
from modelserver.launcher.cluster.actor import ReplicaActor
from modelserver.launcher.cluster.checks import (
    PLACING,
    NodeView,
    nodes_per_replica,
    refusals,
    why_waiting,
)
from modelserver.launcher.cluster.names import (
    NAMESPACE,
    actor_name,
    fleet_key,
    placement_group_name,
    rank_actor_name,
    record_key,
    record_prefix,
    worker_of,
)
from modelserver.launcher.cluster.ranks import RankActor
from modelserver.launcher.cluster.rollout import Outcome, carry_out, fingerprint, settings_of
from modelserver.launcher.plan import Action, RolloutPlan

SETTLED = ("ready", "failed")


def nodes_now() -> list[NodeView]:
    from ray._private.state import available_resources_per_node

    per_node = available_resources_per_node  # untyped in Ray
    available: dict[str, dict[str, float]] = per_node()  # type: ignore[no-untyped-call]
    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return [
        NodeView(n["NodeID"], dict(n.get("Labels") or {}), dict(n["Resources"]),
                 dict(available.get(n["NodeID"], {})))
        for n in nodes if n["Alive"]
    ]


def check(fleet: Fleet) -> None:
    """Refuse a fleet the cluster can never run (nothing started): ClusterError."""
    problems = refusals(fleet, nodes_now())
    if problems:
        raise ClusterError(f"{fleet.source}: the cluster cannot run this fleet:\n  "
                           + "\n  ".join(problems))


def publish_fleet(fleet: Fleet) -> None:
    """The fleet document the actors read: the gateway's keys are left out (no actor needs
    them); engines' keys stay, in the key-value store, not in any actor's arguments."""
    doc = fleet.model_dump(mode="json", exclude_none=True)
    doc["gateway"].pop("api_keys", None)
    doc["gateway"].pop("admin_keys", None)
    body = {"fleet": doc, "source": fleet.source, "base_dir": fleet.base_dir}
    internal_kv._internal_kv_put(fleet_key(fleet.fleet.name), json.dumps(body).encode(),
                                 overwrite=True, namespace=NAMESPACE)


def read_records(fleet_name: str) -> dict[str, dict[str, Any]]:
    """worker name -> the record its actor (or `up`) published last."""
    prefix = record_prefix(fleet_name)
    keys = internal_kv._internal_kv_list(prefix, namespace=NAMESPACE)
    records: dict[str, dict[str, Any]] = {}
    for key in keys:
        raw = internal_kv._internal_kv_get(key, namespace=NAMESPACE)
        if raw is not None:
            records[key[len(prefix):].decode()] = json.loads(raw)
    return records


def _live_actors(fleet_name: str) -> set[str]:
    names = ray.util.list_named_actors()
    return {w for n in names if (w := worker_of(fleet_name, n)) is not None}


def _groups(fleet_name: str) -> dict[str, dict[str, Any]]:
    """worker -> its placement group's entry (not removed)."""
    groups: dict[str, dict[str, Any]] = {}
    for entry in placement_group_table().values():
        name = str(entry.get("name", ""))
        if name.startswith(f"{fleet_name}/") and name.endswith("/pg") \
                and entry["state"] != "REMOVED":
            groups[name[len(fleet_name) + 1:-3]] = entry
    return groups


# -- up ------------------------------------------------------------------------------------


@dataclass
class Reconciled:
    added: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    outcome: Outcome = field(default_factory=Outcome)


def plan(fleet: Fleet) -> RolloutPlan:
    """What `up` would change (reads only): `rollout.plan` on what the cluster holds."""
    name = fleet.fleet.name
    return rollout.plan(fleet, _live_actors(name), set(_groups(name)), read_records(name))


def reconcile(fleet: Fleet) -> Reconciled:
    """Bring what runs in the cluster to the fleet file (see `rollout`: adds ready first,
    replacements one at a time per model, drained before they go; removals drained last)."""
    publish_fleet(fleet)
    changes = plan(fleet)
    done = Reconciled(
        added=[c.worker for c in changes.of(Action.ADD)], kept=list(changes.kept),
        replaced=[c.worker for c in changes.of(Action.REPLACE)],
        removed=[c.worker for c in changes.of(Action.REMOVE)],
    )
    done.outcome = carry_out(changes, RayOps(fleet), fleet.launcher.drain_notice_s)
    return done


class RayOps:
    """`rollout.ClusterOps` on the Ray cluster."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.specs = {spec.name: spec for spec in fleet.workers()}

    def create(self, worker: str) -> None:
        name = self.fleet.fleet.name
        if worker in _groups(name) or worker in _live_actors(name):
            remove(self.fleet, [worker])  # what is left of an actor that is gone
        _create(self.fleet, self.specs[worker])

    def drain(self, workers: Sequence[str]) -> dict[str, str]:
        return drain(self.fleet, workers)

    def remove(self, workers: Sequence[str]) -> None:
        remove(self.fleet, workers)

    def wait_settled(self, workers: Sequence[str]) -> dict[str, str]:
        assert self.fleet.cluster is not None
        rows = wait_settled(self.fleet, self.fleet.cluster.ready_wait_s, lambda _: None,
                            only=set(workers))
        return {r["name"]: r["status"] for r in rows}

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def drain(fleet: Fleet, workers: Iterable[str]) -> dict[str, str]:
    """Have each serving replica's actor drain it (record `draining`, notice, until nothing is
    in flight or `drain_timeout_s`, then its engine stopped), all at once; how each went."""
    name = fleet.fleet.name
    groups = _groups(name)
    calls: dict[str, Any] = {}
    for worker in workers:
        if groups.get(worker, {}).get("state") != "CREATED":
            continue  # not placed: it serves nothing
        try:
            handle = ray.get_actor(actor_name(name, worker), namespace=NAMESPACE)
        except ValueError:
            continue
        calls[worker] = handle.drain.remote()
    settings = fleet.launcher
    bound = settings.drain_notice_s + settings.drain_timeout_s + settings.stop_grace_s + 60
    outcomes: dict[str, str] = {}
    for worker, call in calls.items():
        try:
            outcomes[worker] = str(ray.get(call, timeout=bound))
        except Exception as exc:  # its actor died meanwhile: `remove` ends what is left
            outcomes[worker] = f"not drained: {exc}".splitlines()[0]
    return outcomes


def _create(fleet: Fleet, spec: WorkerSpec) -> None:
    """One placement group and its actors: one bundle on one node (STRICT_PACK), or, for a
    replica larger than a node, one bundle per node (STRICT_SPREAD, its GPUs split evenly)
    with a rank actor in each bundle after the first (`ranks`)."""
    assert fleet.cluster is not None
    model = fleet.model(spec.model)
    name = fleet.fleet.name
    nnodes = nodes_per_replica(model, nodes_now())
    if isinstance(nnodes, str):  # the cluster changed since `check`
        raise ClusterError(f"{spec.name}: {nnodes}")
    bundle: dict[str, float] = {"CPU": fleet.cluster.cpus_per_replica, **(model.resources or {})}
    if model.gpus_each:
        bundle["GPU"] = float(model.gpus_each // nnodes)
    fp = fingerprint(fleet, spec)
    settings = settings_of(fleet, spec)
    # Recorded before anything is placed: `status` and the next `up` see it at once.
    _put_record(name, spec.name, {
        "name": spec.name, "model": spec.model, "kind": spec.kind, "url": "", "host": spec.host,
        "port": spec.port, "status": "waiting", "waiting_for": "not placed yet",
        "node": None, "fingerprint": fp, "settings": settings, "restarts": 0, "gpus": [],
        "nnodes": nnodes,
    })
    group = placement_group(
        [dict(bundle) for _ in range(nnodes)],
        strategy="STRICT_PACK" if nnodes == 1 else "STRICT_SPREAD",
        name=placement_group_name(name, spec.name), lifetime="detached",
        bundle_label_selector=[dict(model.node_labels)] * nnodes if model.node_labels else None,
    )
    # Ray warns that a restartable detached actor dies with its placement group when the
    # group is removed: here that is the point (`remove` kills both together).
    with _quiet("ray.actor"):
        _start_actor(fleet, spec, group, fp, nnodes)


def _start_actor(fleet: Fleet, spec: WorkerSpec, group: Any, fp: str, nnodes: int) -> None:
    assert fleet.cluster is not None
    model = fleet.model(spec.model)
    name = fleet.fleet.name
    for rank in range(nnodes):
        options = dict(
            namespace=NAMESPACE, lifetime="detached", max_restarts=-1, max_concurrency=4,
            num_cpus=fleet.cluster.cpus_per_replica, num_gpus=model.gpus_each // nnodes,
            resources=dict(model.resources or {}),
            scheduling_strategy=PlacementGroupSchedulingStrategy(group, rank),
        )
        if rank == 0:
            ray.remote(ReplicaActor).options(name=actor_name(name, spec.name), **options) \
                .remote(name, spec.name, fp, nnodes)
        else:
            ray.remote(RankActor).options(name=rank_actor_name(name, spec.name, rank),
                                          **options).remote(name, spec.name, rank, nnodes)


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    target = logging.getLogger(logger)
    level = target.level
    target.setLevel(logging.ERROR)
    try:
        yield
    finally:
        target.setLevel(level)


def _put_record(fleet_name: str, worker: str, record: dict[str, Any]) -> None:
    internal_kv._internal_kv_put(record_key(fleet_name, worker), json.dumps(record).encode(),
                                 overwrite=True, namespace=NAMESPACE)


def wait_settled(
    fleet: Fleet, timeout_s: float, progress: Callable[[list[dict[str, Any]]], None],
    only: set[str] | None = None,
) -> list[dict[str, Any]]:
    """Rows once every replica (of `only`) is ready, failed, or waiting for room Ray has
    looked for."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = [r for r in status_rows(fleet) if only is None or r["name"] in only]
        progress(rows)
        if all(r["status"] in SETTLED or r.get("_placing_tried") for r in rows):
            return rows
        if time.monotonic() >= deadline:
            return rows
        time.sleep(0.5)


# -- status --------------------------------------------------------------------------------


def status_rows(fleet: Fleet) -> list[dict[str, Any]]:
    """One row per replica (today's fields, plus `node`): the actor's record where its
    placement group is placed on the node the record names; else waiting (with why) or
    starting on its new node."""
    assert fleet.cluster is not None
    name = fleet.fleet.name
    records = read_records(name)
    groups = _groups(name)
    live = _live_actors(name)
    nodes: list[NodeView] | None = None
    rows = []
    for spec in fleet.workers():
        record = records.get(spec.name, {})
        row: dict[str, Any] = {
            "name": spec.name, "model": spec.model, "kind": spec.kind, "backend": spec.backend,
            "host": spec.host, "url": record.get("url", ""), "status": "stopped", "pid": None,
            "restarts": record.get("restarts", 0), "gpus": record.get("gpus", []),
            "last_error": record.get("last_error"), "started_at": record.get("started_at"),
            "waiting_for": None, "node": None,
        }
        group = groups.get(spec.name)
        if spec.name not in live or group is None:
            if group is not None or spec.name in records:
                row["last_error"] = "its supervising actor is gone; `modelserver up` starts it"
            rows.append(row)
            continue
        placed_on = group["bundles_to_node_id"].get(0)
        if group["state"] != "CREATED":
            nodes = nodes if nodes is not None else nodes_now()
            model = fleet.model(spec.model)
            why = why_waiting(model, fleet.cluster.cpus_per_replica, nodes,
                              len(group.get("bundles") or {}) or 1)
            row.update(status="waiting", url="", waiting_for=why)
            # Settled for `up` once Ray tried and no node has room: then only a node joining
            # or GPUs freeing up places it.
            row["_placing_tried"] = group["stats"]["scheduling_attempt"] >= 1 and why != PLACING
        elif record.get("node") == placed_on and record.get("status"):
            row.update(status=record["status"], pid=record.get("pid"), node=placed_on,
                       waiting_for=record.get("waiting_for"))
            row["_placing_tried"] = record["status"] == "waiting"
        else:
            row.update(status="starting", url="", node=placed_on,
                       waiting_for=None, last_error=f"placed on node {placed_on[:12]}; its"
                       " supervising actor is starting")
        rows.append(row)
    return rows


# -- logs ----------------------------------------------------------------------------------


def log_chunk(fleet: Fleet, worker: str, offset: int, max_bytes: int) -> tuple[int, bytes]:
    try:
        actor = ray.get_actor(actor_name(fleet.fleet.name, worker), namespace=NAMESPACE)
    except ValueError:
        raise ClusterError(f"{worker} has no supervising actor in the cluster") from None
    answer: Any = ray.get(actor.log_chunk.remote(offset, max_bytes), timeout=30)
    return int(answer[0]), bytes(answer[1])


# -- down ----------------------------------------------------------------------------------


def remove(fleet: Fleet, workers: Iterable[str]) -> None:
    """Stop each replica's engine (its actor: SIGTERM, grace, SIGKILL), kill the actor,
    remove its placement group and its record; wait until no actor of them is left."""
    name = fleet.fleet.name
    workers = list(workers)
    groups = _groups(name)
    handles = {}
    for worker in workers:
        try:
            handles[worker] = ray.get_actor(actor_name(name, worker), namespace=NAMESPACE)
        except ValueError:
            continue
    # An actor whose group is not placed never runs: nothing to stop, and no answer to wait for.
    stops: list[Any] = [h.stop.remote() for w, h in handles.items()
             if groups.get(w, {}).get("state") == "CREATED"]
    if stops:
        ray.wait(stops, num_returns=len(stops), timeout=fleet.launcher.stop_grace_s + 30)
    for handle in handles.values():
        ray.kill(handle, no_restart=True)
    for rank_actor in _rank_actors(name, workers):
        ray.kill(rank_actor, no_restart=True)
    for worker in workers:
        with contextlib.suppress(ValueError):
            remove_placement_group(get_placement_group(placement_group_name(name, worker)))
        internal_kv._internal_kv_del(record_key(name, worker), namespace=NAMESPACE)
    deadline = time.monotonic() + 60
    while _live_actors(name) & set(workers) and time.monotonic() < deadline:
        time.sleep(0.2)


def _rank_actors(fleet_name: str, workers: Iterable[str]) -> list[Any]:
    """The rank actors (ranks >= 1) of `workers` that still live."""
    wanted = set(workers)
    found = []
    for actor in ray.util.list_named_actors():
        worker, _, rank = actor[len(fleet_name) + 1:].rpartition("/rank")
        if actor.startswith(f"{fleet_name}/") and worker in wanted and rank.isdigit():
            with contextlib.suppress(ValueError):
                found.append(ray.get_actor(actor, namespace=NAMESPACE))
    return found


def down(fleet: Fleet) -> list[str]:
    """Remove every replica of the fleet, whatever file started it; the workers removed."""
    name = fleet.fleet.name
    workers = sorted(_live_actors(name) | _groups(name).keys() | read_records(name).keys())
    remove(fleet, workers)
    internal_kv._internal_kv_del(fleet_key(name), namespace=NAMESPACE)
    return workers
