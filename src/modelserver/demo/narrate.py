"""What the demo says: its introduction and one line per thing that happened.

The text helpers turn the launcher's records and the router's reasons into short lines a
newcomer can read; `MovedAttempts` counts the attempts the router moved off a worker.
"""

from __future__ import annotations

import re

from modelserver.launcher.state import WorkerRecord
from modelserver.routing.events import RouterObserver

REFUSED = re.compile(r"\[Errno 111\] Connect call failed \([^)]*\)")
"""asyncio's wording of a refused connection, with the address the line already names."""

INTRO = (
    "ModelServer demo: a small fleet on this machine (no GPU, no network), the gateway in "
    "front of it, traffic through the gateway, and one engine crashing mid-run. Watch the "
    "router route around it and the supervisor restart it; a summary follows."
)


class MovedAttempts(RouterObserver):
    """Counts attempts that failed on `url` and were retried (elsewhere when possible)."""

    def __init__(self) -> None:
        self.url: str | None = None
        self.count = 0
        self.last_error = ""

    def on_retry(self, model: str, failed_worker: str, error: str, next_attempt: int,
                 backoff_s: float) -> None:
        if failed_worker == self.url:
            self.count += 1
            self.last_error = error


def describe_record(record: WorkerRecord) -> str:
    """One line for a worker's new status in the launcher's state file."""
    why = (record.last_error or "").splitlines()
    reason = f" ({why[0][:60]})" if why and record.status in ("backoff", "failed") else ""
    pid = f", pid {record.pid}" if record.pid else ""
    restarts = f", restart {record.restarts}" if record.restarts else ""
    return f"supervisor: {record.name} {record.status}{pid}{restarts}{reason}"


def count(n: int, thing: str) -> str:
    return f"{n} {thing}" if n == 1 else f"{n} {thing}s"


def error_text(error: str, limit: int = 60) -> str:
    """A router error without the worker URL it starts with, short enough for one line."""
    text = error.split(": ", 1)[1] if error.startswith("http") and ": " in error else error
    text = REFUSED.sub("connection refused", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"

