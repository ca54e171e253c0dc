"""What `up` changes on a fleet running in the cluster, and in which order. No Ray here: the
plan is computed from plain records (the workers whose actors live, those with a placement
group, the records they published) and carried out through injected operations, so
`up --dry-run` prints the same plan `up` carries out, and the order is tested without Ray.

The plan is `launcher.plan`'s `RolloutPlan` (add / replace / remove with reasons). A replica
is kept when its actor lives and it runs with the file's model settings (compared through the
settings its record carries; keys only as digests). The order is local mode's
(`launcher.reconcile`): the adds start and are ready first; each model's replacements go one
at a time (drain, stop, start anew under the same name, ready), `drain_notice_s` after the
previous one came back so routers see it ready again; the removals are drained and stopped
last. Draining marks the replica's record `draining` (the routers' discovery stops picking
it), waits `drain_notice_s`, then until its engine reports nothing in flight, at most
`drain_timeout_s` (the actor runs local mode's `Worker.drain`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from modelserver.config import Fleet, WorkerSpec
from modelserver.launcher.plan import NOT_SERVING, Action, Change, RolloutPlan, keys_digest

KEY_FIELDS = ("api_key",)
"""Model settings that are keys: recorded and compared only as digests."""


def settings_of(fleet: Fleet, spec: WorkerSpec) -> dict[str, Any]:
    """What a running replica must share with the file to be kept: its model's settings
    (replicas aside, keys as digests) and the node inventory it checks GPUs against."""
    assert fleet.cluster is not None
    model = fleet.model(spec.model)
    settings: dict[str, Any] = model.model_dump(mode="json", exclude={"replicas"})
    for key in KEY_FIELDS:
        if settings.get(key):
            settings[key] = keys_digest([settings[key]])
    settings["cluster.inventory"] = [g.model_dump(mode="json")
                                     for g in fleet.cluster.inventory or []]
    return settings


def fingerprint(fleet: Fleet, spec: WorkerSpec) -> str:
    text = json.dumps(settings_of(fleet, spec), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def setting_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """Why a replica recorded with settings `old` must be replaced to run with `new`."""
    if old is None:
        return ["model settings changed (its record predates recorded settings)"]
    reasons = []
    for key in sorted(old.keys() | new.keys()):
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        if key in KEY_FIELDS:
            reasons.append(f"{key} changed")
        else:
            reasons.append(f"{key}: {json.dumps(before)} -> {json.dumps(after)}")
    return reasons


def plan(fleet: Fleet, live: set[str], groups: set[str],
         records: Mapping[str, Mapping[str, Any]]) -> RolloutPlan:
    """The changes that bring the cluster (`live` actors, placement `groups`, `records`) to
    the fleet file."""
    wanted = {spec.name: spec for spec in fleet.workers()}
    adds: list[Change] = []
    replaces: list[Change] = []
    kept: list[str] = []
    for worker, spec in wanted.items():
        record = records.get(worker, {})
        if worker not in live:
            why = ("its supervising actor is gone" if worker in groups or worker in records
                   else "new in the fleet file")
            adds.append(Change(Action.ADD, worker, spec.model, (why,)))
        elif record.get("fingerprint") == fingerprint(fleet, spec):
            kept.append(worker)
        else:
            reasons = setting_changes(record.get("settings"), settings_of(fleet, spec))
            replaces.append(Change(Action.REPLACE, worker, spec.model,
                                   tuple(reasons or ["model settings changed"]),
                                   serving=record.get("status") not in NOT_SERVING))
    removes = [
        Change(Action.REMOVE, worker, str(records.get(worker, {}).get("model", "?")),
               ("not in the fleet file: drained, then stopped",),
               serving=records.get(worker, {}).get("status") not in NOT_SERVING)
        for worker in sorted((live | groups) - wanted.keys())
    ]
    notes = []
    for model in sorted({c.model for c in replaces if c.serving}):
        count = fleet.model(model).replicas
        notes.append(f"{model}: one replica at a time, {count - 1} of {count} keep serving"
                     if count > 1 else
                     f"{model} has one replica: it serves nothing while it is replaced")
    return RolloutPlan("cluster", tuple(adds + replaces + removes), tuple(kept), tuple(notes))


class ClusterOps(Protocol):
    """What a rollout does to the cluster (`executor.RayOps`; a recorder in tests)."""

    def create(self, worker: str) -> None:
        """Place the replica and start its actor (what is left of an old one goes first)."""
        ...

    def drain(self, workers: Sequence[str]) -> dict[str, str]:
        """Drain the replicas together; how each went."""
        ...

    def remove(self, workers: Sequence[str]) -> None:
        """Stop their engines, kill their actors, remove their groups and records."""
        ...

    def wait_settled(self, workers: Sequence[str]) -> dict[str, str]:
        """Wait until each is ready, failed or waiting for room; each one's status."""
        ...

    def sleep(self, seconds: float) -> None: ...


@dataclass
class Outcome:
    drained: dict[str, str] = field(default_factory=dict)
    """worker -> how its drain went."""
    problems: list[str] = field(default_factory=list)


def carry_out(rollout: RolloutPlan, ops: ClusterOps, notice_s: float) -> Outcome:
    """Carry `rollout` out in the module's order."""
    done = Outcome()
    adds = [c.worker for c in rollout.of(Action.ADD)]
    for worker in adds:
        ops.create(worker)
    if adds:  # one that waits for room is placed by Ray when room appears: not a problem
        _settled(ops, adds, done, "did not start", ("ready", "waiting"))
    rounds = list(rollout.replacement_rounds().values())
    if rounds:
        with ThreadPoolExecutor(len(rounds)) as pool:
            for finished in pool.map(lambda r: _replace_in_turn(r, ops, notice_s), rounds):
                done.drained.update(finished.drained)
                done.problems += finished.problems
    removes = rollout.of(Action.REMOVE)
    if removes:
        done.drained.update(ops.drain([c.worker for c in removes if c.serving]))
        ops.remove([c.worker for c in removes])
    return done


def _replace_in_turn(changes: Sequence[Change], ops: ClusterOps, notice_s: float) -> Outcome:
    done = Outcome()
    for index, change in enumerate(changes):
        if index and change.serving:
            ops.sleep(notice_s)  # the routers must see the previous one ready again
        if change.serving:
            done.drained.update(ops.drain([change.worker]))
        ops.remove([change.worker])
        ops.create(change.worker)
        if not _settled(ops, [change.worker], done, "did not start again"):
            rest = [c.worker for c in changes[index + 1:]]
            if rest:
                done.problems.append(f"{change.model}: not replaced, as {change.worker}"
                                     f" did not start: {', '.join(rest)} (they run as before)")
            return done
    return done


def _settled(ops: ClusterOps, workers: Sequence[str], done: Outcome, what: str,
             fine: tuple[str, ...] = ("ready",)) -> bool:
    statuses = ops.wait_settled(workers)
    bad = {w: s for w, s in statuses.items() if s not in fine}
    done.problems += [f"{w} {what}: {s}" for w, s in sorted(bad.items())]
    return not bad
