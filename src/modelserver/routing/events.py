"""What the router tells its observers (the gateway's Prometheus metrics, logs, tests).

Observers are called synchronously on the router's event loop; they must be quick and must
not raise (an exception is logged and dropped so a metrics bug cannot fail a request).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """The end of one attempt on one worker."""

    model: str
    worker: str
    """The worker's URL."""
    path: str
    attempt: int
    """1 for the first attempt of a request, 2 for its first retry, ..."""
    stream: bool
    ok: bool
    status: int | None
    """The engine's HTTP status; None when no answer came (refused, reset, timeout)."""
    error: str | None
    e2e_s: float
    """Seconds from sending to the last byte (streams: to the end of the stream)."""
    ttft_s: float | None
    """Streams: seconds to the first chunk. None for non-streamed requests."""
    output_tokens: int | None
    """Completion tokens from `usage` (streams: SSE events counted), when known."""


@dataclass(frozen=True)
class ResumeRecord:
    """One resume, for observers (the gateway's metrics, the bench)."""

    model: str
    failed_worker: str
    worker: str
    """The worker that continues the stream."""
    error: str
    delivered_tokens: int
    gap_s: float
    """Seconds between the last event handed on before the break and the first one after
    it: what the resume added to the caller's wait."""


class RouterObserver:
    """Base class with no-op hooks; override the ones you need and pass an instance to
    `Router(observers=[...])` or `Router.add_observer`."""

    def on_attempt(self, model: str, worker: str, attempt: int, path: str) -> None:
        """An attempt is about to be sent to `worker`."""

    def on_result(self, result: AttemptResult) -> None:
        """An attempt ended (success, failure, or the engine rejected the request)."""

    def on_retry(
        self, model: str, failed_worker: str, error: str, next_attempt: int, backoff_s: float
    ) -> None:
        """A failed attempt will be retried (elsewhere if possible; after `backoff_s`
        seconds when only the worker that just failed is left)."""

    def on_resume(self, record: ResumeRecord) -> None:
        """A stream that broke after content reached its caller goes on on another worker."""

    def on_no_healthy_worker(self, model: str, reasons: dict[str, str]) -> None:
        """Every worker of `model` was out when a request came; `reasons` maps URL -> why."""
