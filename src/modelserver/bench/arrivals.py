"""When sessions start: an open loop of Poisson arrivals, or a closed loop of fixed concurrency.

Open loop (`Poisson`): session i starts at a seeded exponential inter-arrival schedule,
whether or not earlier ones are done, as independent users do. The rate is given in
requests per second and converted to sessions per second for multi-turn sessions.
Closed loop (`ClosedLoop`): `concurrency` users each start their next session when the last
one is done, so the offered load follows the fleet's speed.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from modelserver.errors import BenchError


@dataclass(frozen=True)
class Poisson:
    """Open loop at `rate` requests/s; `fraction`, when set, is the share of the fleet's
    estimated capacity the rate was derived from (reported, not used here)."""

    rate: float
    fraction: float | None = None

    def start_times(self, sessions: int, turns_per_session: float, seed: int) -> list[float]:
        """Seconds after the start at which each session begins."""
        rng = random.Random(seed ^ 0x5EED)
        session_rate = self.rate / max(turns_per_session, 1.0)
        t, times = 0.0, []
        for _ in range(sessions):
            times.append(t)
            t += rng.expovariate(session_rate)
        return times

    def describe(self) -> str:
        share = f" ({self.fraction:.0%} of estimated capacity)" if self.fraction else ""
        return f"Poisson arrivals at {self.rate:.2f} req/s{share}"


@dataclass(frozen=True)
class ClosedLoop:
    concurrency: int

    def describe(self) -> str:
        return f"closed loop, {self.concurrency} sessions in flight"


Arrivals = Poisson | ClosedLoop

_SPEC = re.compile(r"^(?:(closed):(\d+)|(poisson):(\d*\.?\d+)(x|/s))$")


def parse_arrivals(spec: str, capacity_rps: float) -> Arrivals:
    """`closed:N` (N sessions in flight), `poisson:F x` (F times the fleet's estimated
    capacity, e.g. `poisson:0.8x`) or `poisson:R/s` (R requests per second)."""
    m = _SPEC.match(spec.strip().replace(" ", ""))
    if not m:
        raise BenchError(
            f"--arrivals {spec!r}: expected closed:N, poisson:Fx (a share of capacity) "
            "or poisson:R/s (requests per second)"
        )
    if m.group(1):
        n = int(m.group(2))
        if n < 1:
            raise BenchError(f"--arrivals {spec!r}: concurrency must be at least 1")
        return ClosedLoop(n)
    value = float(m.group(4))
    if value <= 0:
        raise BenchError(f"--arrivals {spec!r}: the rate must be positive")
    if m.group(5) == "x":
        return Poisson(rate=value * capacity_rps, fraction=value)
    return Poisson(rate=value)
