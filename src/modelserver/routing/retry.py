"""Which failures retry elsewhere, how long to back off, and the per-request budget.

A failed attempt is retried on another worker when it is a `RetryableWorkerError`
(connection refused or reset, timeout, HTTP 408, 429, 5xx: errors.is_retryable_status; and
401/403, which the engine says about the key the router sent, not about the caller);
anything else reaches the caller. Backoff is only for the case where no other worker is
left: exponential, capped, with ± jitter (SGLang's `core/retry.rs` BackoffCalculator shape;
tunables in `BackoffConfig`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from modelserver.config import BackoffConfig
from modelserver.errors import (
    EngineRejected,
    RetryableWorkerError,
    WorkerAuthRejected,
    WorkerError,
    is_retryable_status,
)

_AUTH_STATUSES = (401, 403)


def backoff_delay(config: BackoffConfig, retry_index: int, rng: random.Random) -> float:
    """Seconds to wait before retry number `retry_index` (0-based) on the same worker set."""
    delay = min(config.initial_s * config.multiplier**retry_index, config.max_s)
    if config.jitter > 0:
        delay *= 1.0 + rng.uniform(-config.jitter, config.jitter)
    return max(delay, 0.0)


def error_for_status(worker: str, status: int, body: bytes) -> WorkerError:
    """The error an HTTP failure status stands for, with the engine's own message."""
    message = engine_message(body)
    if is_retryable_status(status):
        return RetryableWorkerError(worker, f"HTTP {status}: {message}", status)
    if status in _AUTH_STATUSES:
        # The router sends the engine its own configured key, never the caller's.
        return WorkerAuthRejected(
            worker,
            f"HTTP {status}: {message} (the engine refused the API key the router has for"
            " this worker: set the model's api_key in the fleet file, or give one when"
            " adding the worker)",
            status,
        )
    parsed: object = None
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = body.decode("utf-8", "replace")
    return EngineRejected(worker, status, message, parsed)


def engine_message(body: bytes) -> str:
    """The human message inside an OpenAI-style error body, else the body's text."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:500].decode("utf-8", "replace").strip() or "(empty body)"
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        for key in ("message", "detail", "error"):
            if isinstance(data.get(key), str):
                return str(data[key])
    return body[:500].decode("utf-8", "replace")


@dataclass
class AttemptBudget:
    """What one request may still spend: attempts and time before its deadline."""

    max_attempts: int
    deadline: float
    clock: Callable[[], float]
    attempts: list[str] = field(default_factory=list)
    """One line per failed attempt, `url: error`, for the final error message."""
    statuses: list[int | None] = field(default_factory=list)
    """The engine's HTTP status of each failed attempt (None: no answer), in order."""

    def failed(self, worker: str, error: WorkerError) -> None:
        self.attempts.append(f"{worker}: {error.reason}")
        self.statuses.append(error.status)

    def remaining_s(self) -> float:
        return self.deadline - self.clock()

    def can_try_again(self) -> bool:
        return len(self.attempts) < self.max_attempts and self.remaining_s() > 0
