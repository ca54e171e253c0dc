"""When a stream counts as stalled: bounds learned from the worker's own traffic.

A stream attempt's first byte may take `ttft_multiple` x the worker's learned time to first
token, plus one learned TTFT per request already in flight there (its queue); a chunk after
that may take `chunk_multiple` x its learned seconds per output token. The attempt gets the
first bound for the answer's headers and first chunk (`Transport.send(timeout_s=...)`) and
the second for each chunk after (`TransportResponse.set_read_timeout`), never below
`min_stall_s`, and never above `attempt_timeout_s`, the fixed outer bound that alone applies
to a worker not measured yet. A stall is a `WorkerTimeout`: the attempt fails, the
worker's breaker hears of it, and the request goes on elsewhere (before its first chunk: a
retry; after: a resume, resume.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from modelserver.config import ResumeConfig
from modelserver.routing.worker import Worker


@dataclass(frozen=True, slots=True)
class StallBound:
    seconds: float
    basis: str
    """How it was learned, for the error message."""


@dataclass(frozen=True, slots=True)
class StallBounds:
    first: StallBound | None
    """For the answer's headers and first chunk; None: only the outer bound."""
    chunk: StallBound | None
    """For each chunk after the first; None: only the outer bound."""


def stall_bounds(worker: Worker, settings: ResumeConfig, outer_s: float) -> StallBounds:
    """The learned bounds for a stream attempt starting now on `worker` (counted in its
    `in_flight` already)."""
    first = chunk = None
    ttft = worker.ewma_ttft
    if ttft is not None:
        ahead = max(worker.in_flight - 1, 0)
        first = _bounded(
            ttft * (settings.ttft_multiple + ahead),
            f"{settings.ttft_multiple:g} x learned TTFT {ttft * 1000:.0f} ms"
            f" + {ahead} in flight ahead",
            settings,
            outer_s,
        )
    per_token = worker.ewma_latency
    if per_token is not None:
        chunk = _bounded(
            per_token * settings.chunk_multiple,
            f"{settings.chunk_multiple:g} x learned {per_token * 1000:.1f} ms per token",
            settings,
            outer_s,
        )
    return StallBounds(first, chunk)


def _bounded(
    seconds: float, basis: str, settings: ResumeConfig, outer_s: float
) -> StallBound | None:
    if seconds < settings.min_stall_s:
        seconds, basis = settings.min_stall_s, f"the floor min_stall_s (learned: {basis})"
    return StallBound(seconds, basis) if seconds < outer_s else None
