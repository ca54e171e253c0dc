"""What `up` must change on a running fleet: the wanted workers against what runs, as a plan.

Pure: its inputs are plain records (names, ports, what each was or would be started with),
not processes, so any executor (this host's supervisor, `launcher.reconcile`, today; a
cluster executor later) can compute and carry out the same plan, and `up --dry-run` prints
it without touching anything.

The rules:

- in the fleet file and not running: **add** it;
- running and not in the file: **remove** it (drain, then stop);
- in both, started with something else than it would be now (its command line, its GPUs,
  the environment the launcher sets, its keys): **replace** it. In place: a replica keeps
  its name and port, so the old one is drained and stopped and the new one started there;
- order: the adds start first and must be ready before anything goes; replacements go one
  at a time per model, the next once the previous is ready, so a model keeps replicas - 1
  serving; removals come last;
- unless resources force stop-then-start: a worker that starts (an add or a replacement)
  on GPUs or a port a going worker holds cannot start before that worker stopped, so that
  one goes first; the plan names both (`Change.stop_first`).

A worker recorded without `started_with` (never started, or by an older launcher) is kept:
what it runs with is unknown, so nothing is replaced on a guess.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

NOT_SERVING = frozenset({"waiting", "failed", "stopped", "stopping"})
"""Recorded statuses of a worker that serves nothing: replacing it costs no capacity."""


@dataclass(frozen=True)
class Fingerprint:
    """What a worker's process was (or would be) started with; keys never appear in it."""

    command: tuple[str, ...]
    """The command line, keys masked."""
    gpus: tuple[str, ...] = ()
    """GPU ids (UUIDs or indices) it sees; `ANY_GPU` for one placement will choose."""
    env: tuple[tuple[str, str], ...] = ()
    """The environment variables the launcher sets for it (not the inherited ones, not
    CUDA_VISIBLE_DEVICES: that is `gpus`), keys masked."""
    keys: str = ""
    """A digest of its keys (API keys), so a changed key is seen without storing it."""
    mem_fraction: float | None = None
    """The memory fraction it was given (also in `command`), so a worker that stays on its
    GPUs is compared with the fraction it got, not one computed from memory it now holds."""

    def to_json(self) -> dict[str, Any]:
        return {
            "command": list(self.command), "gpus": list(self.gpus),
            "env": dict(self.env), "keys": self.keys, "mem_fraction": self.mem_fraction,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Fingerprint | None:
        """The fingerprint a state file recorded; None if absent or not one."""
        if not isinstance(data, Mapping):
            return None
        command, gpus, env = data.get("command"), data.get("gpus", []), data.get("env", {})
        fraction = data.get("mem_fraction")
        if not (isinstance(command, list) and isinstance(gpus, list) and isinstance(env, dict)):
            return None
        return cls(
            command=tuple(str(a) for a in command), gpus=tuple(str(g) for g in gpus),
            env=tuple(sorted((str(k), str(v)) for k, v in env.items())),
            keys=str(data.get("keys", "")),
            mem_fraction=float(fraction) if isinstance(fraction, int | float) else None,
        )


ANY_GPU = "any"
"""A GPU placement will choose (the model names none): equal to nothing recorded."""


def keys_digest(keys: Iterable[str]) -> str:
    """A short digest of a worker's keys: changes when a key does, reveals none."""
    found = sorted({k for k in keys if k})
    if not found:
        return ""
    return "sha256:" + hashlib.sha256("\0".join(found).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Running:
    """A worker the state records (what runs, or ran, on the host)."""

    name: str
    model: str
    status: str
    port: int
    started_with: Fingerprint | None


@dataclass(frozen=True)
class Wanted:
    """A worker of the fleet file, with what it would be started with now (on the GPUs it
    holds when it may keep them)."""

    name: str
    model: str
    port: int
    replicas: int
    """How many replicas its model has on this host (for the capacity a replacement keeps)."""
    started_with: Fingerprint


class Action(StrEnum):
    ADD = "add"
    REPLACE = "replace"
    REMOVE = "remove"


@dataclass(frozen=True)
class Change:
    action: Action
    worker: str
    model: str
    reasons: tuple[str, ...]
    stop_first: tuple[str, ...] = ()
    """Going workers holding the GPUs or port this one starts on: they stop before it starts
    (stop-then-start), whatever the usual order."""
    serving: bool = True
    """For a replace or remove: the worker serves now (so it is drained first)."""


@dataclass(frozen=True)
class RolloutPlan:
    host: str
    changes: tuple[Change, ...] = ()
    kept: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())
    """What the order costs, in words: a model left without a replica while its only one
    is replaced, a worker stopped before its successor is ready because of its GPUs."""

    @property
    def empty(self) -> bool:
        return not self.changes

    def of(self, action: Action) -> list[Change]:
        return [c for c in self.changes if c.action is action]

    @property
    def early_stops(self) -> list[str]:
        """Going workers that stop first, before any start (stop-then-start)."""
        going = {c.worker for c in self.changes if c.action is not Action.ADD}
        return sorted({n for c in self.changes for n in c.stop_first if n in going})

    def replacement_rounds(self) -> dict[str, list[Change]]:
        """Replacements per model, in replica order: each model's go one at a time."""
        rounds: dict[str, list[Change]] = {}
        for change in self.of(Action.REPLACE):
            rounds.setdefault(change.model, []).append(change)
        return rounds

    def describe(self) -> list[str]:
        """The plan in lines, as `up` and `up --dry-run` print it."""
        counts = {a: len(self.of(a)) for a in Action}
        if self.empty:
            return [f"{self.host}: nothing to change ({len(self.kept)} workers as the file says)"]
        lines = [
            f"{self.host}: {counts[Action.ADD]} to add, {counts[Action.REPLACE]} to replace,"
            f" {counts[Action.REMOVE]} to remove, {len(self.kept)} kept"
        ]
        width = max(len(c.worker) for c in self.changes)
        for change in self.changes:
            why = "; ".join(change.reasons)
            lines.append(f"  {change.action.value:<8} {change.worker:<{width}}  {why}")
        lines += [f"  note: {note}" for note in self.notes]
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "changes": [
                {"action": c.action.value, "worker": c.worker, "model": c.model,
                 "reasons": list(c.reasons), "stop_first": list(c.stop_first)}
                for c in self.changes
            ],
            "kept": list(self.kept),
            "notes": list(self.notes),
        }


def plan_changes(host: str, wanted: Sequence[Wanted], running: Sequence[Running]) -> RolloutPlan:
    """The changes that bring `running` to `wanted` (see the module's rules)."""
    now = {r.name: r for r in running}
    want = {w.name: w for w in wanted}
    adds: list[Change] = []
    replaces: list[Change] = []
    removes: list[Change] = []
    kept: list[str] = []
    for worker in wanted:
        current = now.get(worker.name)
        if current is None:
            adds.append(Change(Action.ADD, worker.name, worker.model, ("new in the fleet file",)))
            continue
        reasons = differences(current, worker)
        if reasons:
            replaces.append(Change(Action.REPLACE, worker.name, worker.model, tuple(reasons),
                                   serving=current.status not in NOT_SERVING))
        else:
            kept.append(worker.name)
    for current in running:
        if current.name not in want and current.status != "stopped":
            removes.append(Change(Action.REMOVE, current.name, current.model,
                                  ("not in the fleet file: drained, then stopped",),
                                  serving=current.status not in NOT_SERVING))
    going = {c.worker: now[c.worker] for c in [*replaces, *removes]}
    notes: list[str] = []
    adds = [_with_holders(c, want[c.worker], going, notes) for c in adds]
    replaces = [_with_holders(c, want[c.worker], going, notes) for c in replaces]
    notes += _capacity_notes(replaces, want)
    return RolloutPlan(host, tuple(adds + replaces + removes), tuple(kept), tuple(notes))


def differences(current: Running, wanted: Wanted) -> list[str]:
    """Why `current` must be replaced to become `wanted`; empty if it may stay."""
    old, new = current.started_with, wanted.started_with
    if old is None:
        return []  # unknown: keep it rather than replace on a guess
    reasons: list[str] = []
    if old.command != new.command:
        reasons.append(f"command changed: {_command_diff(old.command, new.command)}")
    if not _same_gpus(old.gpus, new.gpus):
        reasons.append(f"GPUs changed: {_gpus(old.gpus)} -> {_gpus(new.gpus)}")
    if old.env != new.env:
        names = sorted({k for k, _ in set(old.env) ^ set(new.env)})
        reasons.append(f"environment changed: {', '.join(names)}")
    if old.keys != new.keys:
        reasons.append("API key changed")
    return reasons


def _same_gpus(old: Sequence[str], new: Sequence[str]) -> bool:
    if len(old) != len(new):
        return False
    return all(n == ANY_GPU or o == n for o, n in zip(old, new, strict=True))


def _gpus(ids: Sequence[str]) -> str:
    if not ids:
        return "none"
    if all(g == ANY_GPU for g in ids):
        return f"any {len(ids)}"
    return ",".join(ids)


def _command_diff(old: Sequence[str], new: Sequence[str]) -> str:
    """The arguments removed (-) and added (+), in order, a changed value with its flag:
    `-'--speed 1' +'--speed 2'`."""
    parts: list[str] = []
    matcher = difflib.SequenceMatcher(a=list(old), b=list(new), autojunk=False)
    for tag, a0, a1, b0, b1 in matcher.get_opcodes():
        if tag == "equal":
            continue
        changed = old[a0] if a0 < a1 else new[b0]
        if a0 and not changed.startswith("-") and old[a0 - 1].startswith("-"):
            a0, b0 = a0 - 1, b0 - 1  # a changed value: show its flag with it
        if tag in ("replace", "delete"):
            parts.append(f"-{' '.join(old[a0:a1])!r}")
        if tag in ("replace", "insert"):
            parts.append(f"+{' '.join(new[b0:b1])!r}")
    return " ".join(parts) or "(reordered)"


def _with_holders(
    change: Change, wanted: Wanted, going: Mapping[str, Running], notes: list[str]
) -> Change:
    """`change`, with the going workers (other than itself) whose GPUs or port it needs."""
    needs = {g for g in wanted.started_with.gpus if g != ANY_GPU}
    holders: list[str] = []
    for name, other in going.items():
        if name == change.worker:
            continue  # a replacement frees its own GPUs and port by stopping first
        held = set(other.started_with.gpus if other.started_with else ())
        why = [f"GPU {','.join(sorted(needs & held))}"] if needs & held else []
        if other.port == wanted.port:
            why.append(f"port {other.port}")
        if why:
            holders.append(name)
            notes.append(
                f"stop-then-start: {name} stops before {change.worker} starts"
                f" ({' and '.join(why)} held by {name})"
            )
    if not holders:
        return change
    return Change(change.action, change.worker, change.model, change.reasons,
                  tuple(sorted(holders)), change.serving)


def _capacity_notes(replaces: Sequence[Change], want: Mapping[str, Wanted]) -> list[str]:
    notes = []
    for model in sorted({c.model for c in replaces if c.serving}):
        replicas = next(want[c.worker].replicas for c in replaces if c.model == model)
        if replicas == 1:
            notes.append(f"{model} has one replica here: it serves nothing while it is replaced")
        else:
            notes.append(f"{model}: one replica at a time, {replicas - 1} of {replicas} keep"
                         " serving")
    return notes
