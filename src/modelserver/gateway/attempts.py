"""How the failed attempts of a request ended, for the gateway's own answer.

When every attempt was refused for overload (429 or 503), the caller should hear that, not a
plain 502: OpenAI clients back off and retry on 429/503. The statuses come with the
router's `DeadlineExceeded`.
"""

from __future__ import annotations

OVERLOAD_STATUSES = frozenset({429, 503})


def overload_status(statuses: list[int | None]) -> int | None:
    """429 when every failed attempt was a 429; 503 when each was a 429 or a 503 and one at
    least a 503; None otherwise (a worker that failed in another way, or no attempt)."""
    if not statuses or not all(status in OVERLOAD_STATUSES for status in statuses):
        return None
    return 429 if all(status == 429 for status in statuses) else 503
