"""A worker as the router sees it: health, learned latency, load, circuit breaker.

Health has three independent sources, any of which takes the worker out of rotation:
the launcher's state file (a worker it reports failed or stopped), active probes (the
engine's cheap health endpoint), and real traffic (the circuit breaker). Latency comes
from real traffic only: an EWMA of seconds per output token and of time to first token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from modelserver.config import BreakerConfig
from modelserver.routing.breaker import BreakerState, CircuitBreaker

READY = "ready"


@dataclass(frozen=True)
class WorkerStats:
    """A snapshot of one worker for admin pages and `modelserver status`."""

    url: str
    model: str
    kind: str
    name: str
    status: str
    """"up", or why the worker is out of rotation ("draining", "circuit open ...", ...)."""
    in_flight: int
    ewma_latency_s: float | None
    """EWMA of seconds per output token (embeddings: seconds per request)."""
    ewma_ttft_s: float | None
    breaker: str
    requests: int
    errors: int
    draining: bool
    ejected: bool


class Worker:
    """One engine at one URL serving one model. Mutated only from the router's event loop."""

    __slots__ = (
        "_clock",
        "api_key",
        "backend",
        "breaker",
        "draining",
        "ejected_at",
        "ejection_note",
        "errors",
        "ewma_latency",
        "ewma_ttft",
        "idle",
        "in_flight",
        "kind",
        "last_probe_error",
        "latency_samples",
        "launcher_status",
        "measured_at",
        "model",
        "name",
        "probe_failures",
        "probe_healthy",
        "probe_successes",
        "requests",
        "trial_in_flight",
        "url",
    )

    def __init__(
        self,
        url: str,
        model: str,
        kind: str,
        breaker: BreakerConfig,
        clock: Callable[[], float],
        name: str | None = None,
        api_key: str | None = None,
        backend: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.backend = backend
        """The engine type ("sglang", "vllm", "llamacpp", "sim"), when known: a resumed
        chat request is worded for it (resume.py)."""
        self.model = model
        self.kind = kind
        self.name = name or self.url
        self.api_key = api_key
        self.breaker = CircuitBreaker(breaker, clock)
        self.in_flight = 0
        self.idle: asyncio.Event | None = None
        """Set when `in_flight` drops to 0; created by the first `Router.wait_drained`."""
        self.requests = 0
        self.errors = 0
        self.ewma_latency: float | None = None
        self.ewma_ttft: float | None = None
        self.latency_samples = 0
        self.measured_at: float | None = None
        """When the last latency sample came in (the router's clock)."""
        self._clock = clock
        # Optimistic until a probe says otherwise: a fresh router can serve at once.
        self.probe_healthy = True
        self.probe_failures = 0
        self.probe_successes = 0
        self.last_probe_error: str | None = None
        self.launcher_status: str | None = None
        self.draining = False
        self.ejected_at: float | None = None
        self.ejection_note = ""
        self.trial_in_flight = False

    # -- eligibility -----------------------------------------------------------------------

    def out_reason(
        self, now: float, readmit_after_s: float, *, last_resort: bool = False
    ) -> str | None:
        """Why this worker must not get a new request now, or None if it may.

        The one shared rule every policy relies on: healthy, circuit not open, not draining,
        not ejected (an ejected worker may take a single trial after `readmit_after_s`).

        `last_resort` is the router's rule when no worker passes that one (Envoy's "panic
        routing"): a worker out only for being slow, or only by its circuit while its health
        probe answers, still takes requests. Known dead (launcher, probes) or draining: never.
        """
        if self.draining:
            return "draining"
        if self.launcher_status is not None and self.launcher_status != READY:
            return f"launcher reports {self.launcher_status}"
        if not self.probe_healthy:
            return f"health probe failed ({self.last_probe_error or 'no answer'})"
        if not self.breaker.allows_request() and not (last_resort and self.probe_successes > 0):
            if self.breaker.state is BreakerState.OPEN:
                return f"circuit open after {self.breaker.consecutive_failures} failures"
            return "circuit half-open, trial request in flight"
        if (
            not last_resort
            and self.ejected_at is not None
            and (self.trial_in_flight or now - self.ejected_at < readmit_after_s)
        ):
            return f"ejected as slow ({self.ejection_note})"
        return None

    # -- learning from traffic ---------------------------------------------------------------

    def observe_latency(self, seconds_per_token: float, alpha: float) -> None:
        if self.ewma_latency is None:
            self.ewma_latency = seconds_per_token
        else:
            self.ewma_latency += alpha * (seconds_per_token - self.ewma_latency)
        self.latency_samples += 1
        self.measured_at = self._clock()

    def latency_age(self) -> float | None:
        """Seconds since the last latency sample; None if never measured."""
        return None if self.measured_at is None else self._clock() - self.measured_at

    def observe_ttft(self, seconds: float, alpha: float) -> None:
        if self.ewma_ttft is None:
            self.ewma_ttft = seconds
        else:
            self.ewma_ttft += alpha * (seconds - self.ewma_ttft)

    def stats(self, now: float, readmit_after_s: float) -> WorkerStats:
        reason = self.out_reason(now, readmit_after_s)
        return WorkerStats(
            url=self.url,
            model=self.model,
            kind=self.kind,
            name=self.name,
            status=reason or "up",
            in_flight=self.in_flight,
            ewma_latency_s=self.ewma_latency,
            ewma_ttft_s=self.ewma_ttft,
            breaker=self.breaker.state.value,
            requests=self.requests,
            errors=self.errors,
            draining=self.draining,
            ejected=self.ejected_at is not None,
        )

    def __repr__(self) -> str:
        return f"Worker({self.url!r}, model={self.model!r}, in_flight={self.in_flight})"
