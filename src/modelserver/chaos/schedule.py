"""What to break next: a seeded choice of action and target among the healthy workers.

Pure: the caller says which workers are healthy now (ready in the launcher's state file and
not already broken by us); the same seed and the same answers give the same actions. A
model always keeps `keep_healthy` untouched workers, so every request has somewhere to go.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

ActionKind = Literal["kill", "hang", "slow", "error"]

FAULT_SPECS: dict[str, str] = {
    # The simulator's fault grammar (docs/SIMULATOR.md).
    "hang": "hang",                    # accepts requests, never answers
    "slow": "slow-ramp=2",             # each step (1 + 2t) times longer
    "error": "error-rate=0.5:503",     # half the requests answered 503
}


@dataclass(frozen=True)
class ChaosSettings:
    mean_gap_s: float = 2.0
    """Mean seconds between actions (exponentially distributed gaps)."""
    hold_min_s: float = 1.0
    hold_max_s: float = 4.0
    """A hang, slow-down or 5xx lasts this long (uniform), then its faults are cleared."""
    keep_healthy: int = 1
    """Workers of each model left untouched at every moment."""
    kinds: tuple[ActionKind, ...] = ("kill", "hang", "slow", "error")


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    target: str
    """The worker's name (`model-i@host`)."""
    hold_s: float
    """How long the fault lasts (0 for a kill: the supervisor restarts the worker)."""

    @property
    def spec(self) -> str:
        return FAULT_SPECS.get(self.kind, "")


class Chaos:
    """The seeded source of actions."""

    def __init__(self, settings: ChaosSettings, seed: int) -> None:
        if settings.keep_healthy < 1:
            raise ValueError("keep_healthy must be at least 1: a model needs a worker left")
        self.settings = settings
        self._rng = random.Random(seed)

    def next_gap(self) -> float:
        return self._rng.expovariate(1.0 / self.settings.mean_gap_s)

    def choose(self, healthy: Mapping[str, Sequence[str]]) -> Action | None:
        """An action on one of the healthy workers (model -> names) of a model that has more
        than `keep_healthy` of them; None if no model can spare one."""
        kind = self._rng.choice(self.settings.kinds)
        spare = sorted(
            name for names in healthy.values()
            if len(names) > self.settings.keep_healthy for name in names
        )
        if not spare:
            return None
        target = self._rng.choice(spare)
        hold = 0.0 if kind == "kill" else self._rng.uniform(
            self.settings.hold_min_s, self.settings.hold_max_s
        )
        return Action(kind, target, hold)
