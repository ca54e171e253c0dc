"""Faults injected into the fleet while a contender runs, and when.

`--fault ACTION[:WORKER]@WHEN`, repeatable:

- ACTION: `kill` (SIGKILL the engine process; its port then drops every connection),
  `slow` (the engine's steps grow slower and slower: sim fault `slow-ramp=1`, i.e. 1 + t
  times slower t seconds after), `hang` (sim fault `hang`: it accepts requests and never
  answers);
- WORKER: the engine's index (default 1, a full-speed engine);
- WHEN: `40%` (once 40% of the workload's requests have been sent: the same point of the
  workload for every contender, however fast it is) or `12s` / `12` (seconds after the
  contender's first request).

Each fault's real time is recorded, so the load plots can mark it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from modelserver.errors import BenchError

Action = Literal["kill", "slow", "hang"]
SIM_SPECS: dict[str, str] = {"slow": "slow-ramp=1", "hang": "hang"}
DEFAULT_WORKER = 1

_FAULT = re.compile(r"^(kill|slow|hang)(?::(\d+))?@(\d*\.?\d+)(%|s)?$")


@dataclass(frozen=True)
class FaultPlan:
    action: Action
    worker: int
    at: float
    unit: Literal["share", "seconds"]

    def due(self, elapsed_s: float, sent_share: float) -> bool:
        if self.unit == "share":
            return sent_share >= self.at
        return elapsed_s >= self.at

    def describe(self) -> str:
        when = f"{self.at:.0%} of requests sent" if self.unit == "share" else f"{self.at:g} s"
        return f"{self.action} engine {self.worker} at {when}"


def parse_fault(spec: str, workers: int) -> FaultPlan:
    m = _FAULT.match(spec.strip())
    if not m:
        raise BenchError(
            f"--fault {spec!r}: expected ACTION[:WORKER]@WHEN, ACTION one of kill, slow, hang; "
            "WHEN like 40% or 12s (e.g. kill@40%, slow:0@10s)"
        )
    action, worker_text, value, unit = m.groups()
    worker = int(worker_text) if worker_text is not None else min(DEFAULT_WORKER, workers - 1)
    if not 0 <= worker < workers:
        raise BenchError(f"--fault {spec!r}: engine {worker} does not exist "
                         f"(engines 0..{workers - 1})")
    at = float(value)
    if unit == "%":
        if at > 100:
            raise BenchError(f"--fault {spec!r}: a share of requests is at most 100%")
        return FaultPlan(action, worker, at / 100.0, "share")  # type: ignore[arg-type]
    return FaultPlan(action, worker, at, "seconds")  # type: ignore[arg-type]
