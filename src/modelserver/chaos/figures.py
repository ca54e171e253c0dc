"""The figures of a chaos run, computed from its timeline (pure).

"Known dead": a worker is known dead from the first moment either
  (a) the launcher's state file says it is not ready (backoff, starting, failed, stopped:
      its process exited, was killed by the supervisor as unhealthy, or has not answered its
      readiness probe yet), at the `updated_at` of the write that said so, or
  (b) an attempt of the router on it ended with a refused connection (nothing listens),
until the state file next says it is ready. An attempt sent to a worker more than `grace_s`
(1 s) after it became known dead counts in `routed_to_known_dead`.
"""

from __future__ import annotations

import bisect
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from modelserver.chaos.timeline import Timeline

READY = "ready"


@dataclass
class PathFigures:
    sent: int = 0
    succeeded: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    """The first few failures' messages."""
    latency_p50_s: float | None = None
    latency_p99_s: float | None = None


@dataclass
class ChaosFigures:
    duration_s: float
    paths: dict[str, PathFigures]
    actions: dict[str, int]
    attempts: int
    failed_attempts: int
    routed_to_known_dead: int
    routed_to_known_dead_examples: list[str]
    kills: int
    kill_to_last_request_s: list[float]
    """Per kill that got a request afterwards: seconds from the kill to the last attempt
    sent to that worker before it was ready again."""
    kills_without_later_request: int
    restarts_ready: int
    ready_to_first_request_s: list[float]
    """Per restart that became ready: seconds to the first attempt sent to it."""

    @property
    def sent(self) -> int:
        return sum(p.sent for p in self.paths.values())

    @property
    def failed(self) -> int:
        return sum(p.failed for p in self.paths.values())

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["summary"] = {
            "kill_to_last_request_s": summary(self.kill_to_last_request_s),
            "ready_to_first_request_s": summary(self.ready_to_first_request_s),
        }
        return data


def summary(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "median": None, "max": None}
    return {"n": len(values), "median": statistics.median(values), "max": max(values)}


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def dead_intervals(timeline: Timeline) -> dict[str, list[tuple[float, float]]]:
    """worker URL -> [(known dead since, ready again or +inf)], from the state file's
    statuses and the refused connections the router saw."""
    marks: dict[str, list[tuple[float, bool]]] = {}  # (t, is_ready)
    for event in timeline.states:
        marks.setdefault(event.worker, []).append((event.t, event.status == READY))
    for result in timeline.results:
        if result.refused:
            marks.setdefault(result.worker, []).append((result.t, False))
    intervals: dict[str, list[tuple[float, float]]] = {}
    for worker, events in marks.items():
        since: float | None = None
        for t, ready in sorted(events, key=lambda e: (e[0], e[1])):
            if ready and since is not None:
                intervals.setdefault(worker, []).append((since, t))
                since = None
            elif not ready and since is None:
                since = t
        if since is not None:
            intervals.setdefault(worker, []).append((since, float("inf")))
    return intervals


def compute_figures(timeline: Timeline, grace_s: float = 1.0) -> ChaosFigures:
    paths: dict[str, PathFigures] = {}
    latencies: dict[str, list[float]] = {}
    for request in timeline.requests:
        figures = paths.setdefault(request.via, PathFigures())
        figures.sent += 1
        if request.ok:
            figures.succeeded += 1
            latencies.setdefault(request.via, []).append(request.latency_s)
        else:
            figures.failed += 1
            if len(figures.errors) < 5:
                figures.errors.append(request.error or "?")
    for via, values in latencies.items():
        paths[via].latency_p50_s = _percentile(values, 0.5)
        paths[via].latency_p99_s = _percentile(values, 0.99)

    intervals = dead_intervals(timeline)
    to_dead: list[str] = []
    for attempt in timeline.attempts:
        for since, until in intervals.get(attempt.worker, ()):
            if since + grace_s < attempt.t < until:
                to_dead.append(
                    f"{attempt.via} attempt at +{attempt.t - timeline.started:.2f}s to"
                    f" {attempt.worker}, known dead since +{since - timeline.started:.2f}s"
                )

    sends: dict[str, list[float]] = {}
    for attempt in timeline.attempts:
        sends.setdefault(attempt.worker, []).append(attempt.t)
    for times in sends.values():
        times.sort()

    kill_to_last: list[float] = []
    kills = [a for a in timeline.actions if a.kind == "kill"]
    without = 0
    for kill in kills:
        until = min(
            (u for s, u in intervals.get(kill.worker, ()) if u > kill.t), default=float("inf")
        )
        times = sends.get(kill.worker, [])
        after = times[bisect.bisect_left(times, kill.t): bisect.bisect_left(times, until)]
        if after:
            kill_to_last.append(after[-1] - kill.t)
        else:
            without += 1

    ready_to_first: list[float] = []
    restarts = 0
    for worker, spans in intervals.items():
        times = sends.get(worker, [])
        for _, ready_at in spans:
            if ready_at == float("inf"):
                continue
            restarts += 1
            index = bisect.bisect_left(times, ready_at)
            if index < len(times):
                ready_to_first.append(times[index] - ready_at)

    return ChaosFigures(
        duration_s=timeline.ended - timeline.started,
        paths=paths,
        actions=dict(Counter(a.kind for a in timeline.actions)),
        attempts=len(timeline.attempts),
        failed_attempts=sum(1 for r in timeline.results if not r.ok),
        routed_to_known_dead=len(to_dead),
        routed_to_known_dead_examples=to_dead[:5],
        kills=len(kills),
        kill_to_last_request_s=kill_to_last,
        kills_without_later_request=without,
        restarts_ready=restarts,
        ready_to_first_request_s=ready_to_first,
    )
