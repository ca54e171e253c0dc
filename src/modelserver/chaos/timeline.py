"""What happened during a chaos run, with wall-clock times (`time.time()`, the clock the
launcher's state file uses for `updated_at`), so records of the router, the traffic, the
controller and the launcher line up."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelserver._files import read_json
from modelserver.routing.events import AttemptResult, RouterObserver

REFUSED_PREFIX = "cannot connect"
"""How the router's attempt error starts when no connection could be made (WorkerRefused)."""


@dataclass(frozen=True)
class AttemptRecord:
    """The router is about to send an attempt to `worker` (a URL)."""

    t: float
    via: str
    worker: str
    attempt: int


@dataclass(frozen=True)
class ResultRecord:
    t: float
    via: str
    worker: str
    ok: bool
    error: str | None

    @property
    def refused(self) -> bool:
        return (self.error or "").startswith(REFUSED_PREFIX)


@dataclass(frozen=True)
class RequestRecord:
    """One request of the traffic, as its sender saw it."""

    sent: float
    via: str
    worker: str | None
    ok: bool
    error: str | None
    latency_s: float


@dataclass(frozen=True)
class ActionRecord:
    t: float
    kind: str
    """kill, hang, slow, error, clear (a fault lifted), skip (nothing could be spared)."""
    worker: str
    """URL ("" for skip)."""
    name: str
    pid: int | None = None


@dataclass(frozen=True)
class StateEvent:
    """A worker's (status, pid) as the launcher's state file changed it; `t` is the state
    file's `updated_at` of the write that changed it."""

    t: float
    worker: str
    name: str
    status: str
    pid: int | None


@dataclass
class Timeline:
    attempts: list[AttemptRecord] = field(default_factory=list)
    results: list[ResultRecord] = field(default_factory=list)
    requests: list[RequestRecord] = field(default_factory=list)
    actions: list[ActionRecord] = field(default_factory=list)
    states: list[StateEvent] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0


class AttemptRecorder(RouterObserver):
    """Router observer: every attempt and its end, tagged with the traffic path."""

    def __init__(
        self, timeline: Timeline, via: str, clock: Callable[[], float] = time.time
    ) -> None:
        self._timeline = timeline
        self._via = via
        self._clock = clock

    def on_attempt(self, model: str, worker: str, attempt: int, path: str) -> None:
        self._timeline.attempts.append(AttemptRecord(self._clock(), self._via, worker, attempt))

    def on_result(self, result: AttemptResult) -> None:
        self._timeline.results.append(
            ResultRecord(self._clock(), self._via, result.worker, result.ok, result.error)
        )


class StateWatcher:
    """Reads the launcher's state file every `interval_s` and records each worker's changes
    of (status, pid). `current` is the last view: URL -> record."""

    def __init__(self, path: Path, timeline: Timeline, interval_s: float = 0.02) -> None:
        self.path = path
        self._timeline = timeline
        self._interval_s = interval_s
        self._last: dict[str, tuple[str, int | None]] = {}
        self.current: dict[str, dict[str, Any]] = {}

    def read_once(self) -> None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            state = read_json(self.path)
            updated = float(state.get("updated_at", time.time()))
            for record in state.get("workers", []):
                url = str(record["url"]).rstrip("/")
                self.current[url] = record
                key = (str(record["status"]), record.get("pid"))
                if self._last.get(url) != key:
                    self._last[url] = key
                    self._timeline.states.append(
                        StateEvent(updated, url, str(record["name"]), key[0], key[1])
                    )

    async def run(self) -> None:
        while True:
            self.read_once()
            await asyncio.sleep(self._interval_s)
