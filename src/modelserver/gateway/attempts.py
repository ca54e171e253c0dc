"""How each failed attempt of the request being served ended, for the gateway's own answer.

When every attempt was refused for overload (429 or 503), the caller should hear that, not a
plain 502: OpenAI clients back off and retry on 429/503. The router reports each attempt to
its observers synchronously, in the task of the request it belongs to, so a context variable
set by the request's handler collects that request's statuses and no other's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from modelserver.routing.events import AttemptResult, RouterObserver

OVERLOAD_STATUSES = frozenset({429, 503})

_FAILED_STATUSES: ContextVar[list[int | None] | None] = ContextVar(
    "failed_attempt_statuses", default=None
)


class FailedAttemptStatuses(RouterObserver):
    """Adds the engine status of each failed attempt (None: no answer) to the list of the
    request being served, if its handler is recording."""

    def on_result(self, result: AttemptResult) -> None:
        statuses = _FAILED_STATUSES.get()
        if statuses is not None and not result.ok:
            statuses.append(result.status)


@contextmanager
def recording_failed_attempts() -> Iterator[list[int | None]]:
    statuses: list[int | None] = []
    token = _FAILED_STATUSES.set(statuses)
    try:
        yield statuses
    finally:
        _FAILED_STATUSES.reset(token)


def overload_status(statuses: list[int | None]) -> int | None:
    """429 when every failed attempt was a 429; 503 when each was a 429 or a 503 and one at
    least a 503; None otherwise (a worker that failed in another way, or no attempt)."""
    if not statuses or not all(status in OVERLOAD_STATUSES for status in statuses):
        return None
    return 429 if all(status == 429 for status in statuses) else 503
