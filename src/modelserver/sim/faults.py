"""Faults the simulated engine can be told to show, and the grammar that names them.

A spec is a comma-separated list of items (spaces ignored, empty spec = healthy):

    crash-after=N        accept N generation requests, then die when the next one arrives
    crash-at=T           die T seconds after the faults were set
    hang                 the GPU stops: no engine step runs, so running requests stop and
                         new ones are accepted and never answered; /health then fails the
                         way SGLang's does (no answer within its 20 s timeout)
    slow-ramp=R          every step takes (1 + R*t) times longer, t = seconds since set
    error-rate=P[:S]     answer a generation request with HTTP S (500 or 503, default 500)
                         with probability P (0..1), drawn from the seeded generator
    slow-start=T         /health and /health_generate answer 503 for T seconds
    refuse               stop listening: connections are refused until the faults change
                         (so, over HTTP, until the process is killed: /sim/faults is on
                         the same port)
    refuse=T             stop listening for T seconds, then listen again (after a crash:
                         come back as a restarted engine, empty cache)

"Die" means the process exits (status 1) when run as `modelserver sim`, and the server stops
listening and drops its connections when run in-process. Times count from when the spec
was set: at start for `--fault`, at the call for `POST /sim/faults`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

from modelserver.errors import ModelServerError


class FaultSpecError(ModelServerError, ValueError):
    """A fault spec does not follow the grammar; the message says which item and why."""


GRAMMAR = (
    "crash-after=N, crash-at=SECONDS, hang, slow-ramp=RATE, error-rate=P[:500|503], "
    "slow-start=SECONDS, refuse[=SECONDS]"
)


@dataclass(frozen=True)
class Faults:
    crash_after: int | None = None
    crash_at: float | None = None
    hang: bool = False
    slow_ramp: float = 0.0
    error_rate: float = 0.0
    error_status: int = 500
    slow_start: float = 0.0
    refuse: bool = False
    refuse_for: float | None = None  # seconds; None: until the faults change

    def describe(self) -> str:
        items: list[str] = []
        if self.crash_after is not None:
            items.append(f"crash-after={self.crash_after}")
        if self.crash_at is not None:
            items.append(f"crash-at={self.crash_at:g}")
        if self.hang:
            items.append("hang")
        if self.slow_ramp:
            items.append(f"slow-ramp={self.slow_ramp:g}")
        if self.error_rate:
            items.append(f"error-rate={self.error_rate:g}:{self.error_status}")
        if self.slow_start:
            items.append(f"slow-start={self.slow_start:g}")
        if self.refuse_for is not None:
            items.append(f"refuse={self.refuse_for:g}")
        elif self.refuse:
            items.append("refuse")
        return ",".join(items)


def _number(item: str, text: str, *, integer: bool = False) -> float:
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise FaultSpecError(f"fault {item!r}: {text!r} is not {kind}") from None
    if value < 0:
        raise FaultSpecError(f"fault {item!r}: must not be negative")
    return value


def parse_faults(spec: str) -> Faults:
    """Parse a fault spec (see the module docstring); raises FaultSpecError."""
    fields: dict[str, Any] = {}
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        name, _, value = (part.strip() for part in item.partition("="))
        if (
            name in ("crash-after", "crash-at", "slow-ramp", "slow-start", "error-rate")
            and not value
        ):
            raise FaultSpecError(f"fault {item!r} needs a value; allowed: {GRAMMAR}")
        if name == "hang":
            if value:
                raise FaultSpecError(f"fault {item!r}: hang takes no value")
            fields["hang"] = True
        elif name == "refuse":
            fields["refuse"] = True
            if value:
                fields["refuse_for"] = _number(item, value)
        elif name == "crash-after":
            fields["crash_after"] = int(_number(item, value, integer=True))
        elif name == "crash-at":
            fields["crash_at"] = _number(item, value)
        elif name == "slow-ramp":
            fields["slow_ramp"] = _number(item, value)
        elif name == "slow-start":
            fields["slow_start"] = _number(item, value)
        elif name == "error-rate":
            rate_text, _, status_text = value.partition(":")
            rate = _number(item, rate_text)
            if rate > 1:
                raise FaultSpecError(f"fault {item!r}: the rate is a probability, 0 to 1")
            status = int(_number(item, status_text, integer=True)) if status_text else 500
            if status not in (500, 503):
                raise FaultSpecError(f"fault {item!r}: status must be 500 or 503")
            fields["error_rate"] = rate
            fields["error_status"] = status
        else:
            raise FaultSpecError(f"unknown fault {name!r} in {spec!r}; allowed: {GRAMMAR}")
    return Faults(**fields)


class FaultState:
    """The faults in force and the clock and counters they depend on."""

    def __init__(self, faults: Faults, now: float, seed: int) -> None:
        self.faults = faults
        self.since = now
        self.accepted = 0  # generation requests accepted since the faults were set
        self._random = random.Random(seed)

    def replace(self, faults: Faults, now: float) -> None:
        self.faults = faults
        self.since = now
        self.accepted = 0

    def latency_multiplier(self, now: float) -> float:
        return 1.0 + self.faults.slow_ramp * max(0.0, now - self.since)

    def lift_refusal(self) -> None:
        """A timed `refuse` is over; the other faults and their clocks carry on."""
        self.faults = replace(self.faults, refuse=False, refuse_for=None)

    def refusal_ends_at(self) -> float | None:
        seconds = self.faults.refuse_for
        return None if seconds is None else self.since + seconds

    def starting(self, now: float) -> bool:
        return now - self.since < self.faults.slow_start

    def crash_due_at(self) -> float | None:
        at = self.faults.crash_at
        return None if at is None else self.since + at

    def should_crash_before_request(self) -> bool:
        limit = self.faults.crash_after
        return limit is not None and self.accepted >= limit

    def injected_error(self) -> int | None:
        """HTTP status to answer this request with, or None to serve it."""
        rate = self.faults.error_rate
        if rate and self._random.random() < rate:
            return self.faults.error_status
        return None
