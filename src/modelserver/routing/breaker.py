"""A circuit breaker per worker, as an explicit state machine.

    CLOSED --(failure_threshold consecutive failures)--> OPEN
    OPEN --(cooldown_s elapsed; checked lazily)--> HALF_OPEN
    HALF_OPEN --(one trial at a time; success_threshold successes)--> CLOSED
    HALF_OPEN --(trial fails)--> OPEN (cool-down starts again)

Tunables: `BreakerConfig` in config.py (after SGLang's `core/circuit_breaker.rs`). The clock
is injected so the transitions are tested without sleeping.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from modelserver.config import BreakerConfig


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Counts consecutive failures of one worker and keeps it out while they last."""

    def __init__(self, config: BreakerConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._changed_at = clock()
        self.consecutive_failures = 0
        self._trial_successes = 0
        self._trial_in_flight = False

    @property
    def state(self) -> BreakerState:
        # OPEN turns HALF_OPEN by itself once the cool-down is over; checked on read so no
        # timer task is needed.
        if (
            self._state is BreakerState.OPEN
            and self._clock() - self._changed_at >= self.config.cooldown_s
        ):
            self._transition(BreakerState.HALF_OPEN)
        return self._state

    def allows_request(self) -> bool:
        """Closed: yes. Open: no. Half-open: only if no trial request is already out."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        return state is BreakerState.HALF_OPEN and not self._trial_in_flight

    def on_request_start(self) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self._trial_in_flight = True

    def record_success(self) -> None:
        self.consecutive_failures = 0
        state = self.state
        if state is BreakerState.HALF_OPEN:
            self._trial_in_flight = False
            self._trial_successes += 1
            if self._trial_successes >= self.config.success_threshold:
                self._transition(BreakerState.CLOSED)

    def record_failure(self) -> None:
        self.consecutive_failures += 1
        state = self.state
        if state is BreakerState.HALF_OPEN:
            self._transition(BreakerState.OPEN)  # the trial failed: cool down again
        elif (
            state is BreakerState.CLOSED
            and self.consecutive_failures >= self.config.failure_threshold
        ):
            self._transition(BreakerState.OPEN)

    def release_trial(self) -> None:
        """A trial ended without a verdict (cancelled, or a non-retryable 4xx)."""
        self._trial_in_flight = False

    def reset(self) -> None:
        self.consecutive_failures = 0
        self._transition(BreakerState.CLOSED)

    def _transition(self, new: BreakerState) -> None:
        if new is self._state:
            return
        # Every edge resets the trial bookkeeping; only CLOSED forgets the failure count.
        self._state = new
        self._changed_at = self._clock()
        self._trial_successes = 0
        self._trial_in_flight = False
        if new is BreakerState.CLOSED:
            self.consecutive_failures = 0
