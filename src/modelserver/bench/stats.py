"""From the outcomes of one contender's run to its figures.

- `completed_rps`: completed requests / wall time from the first send to the last answer;
  this is also the goodput (failed requests do not count).
- `output_tok_s`: completion tokens of completed requests / the same wall time.
- `ttft_*`: time to first token of completed streamed requests; `e2e_*`: end-to-end
  latency of completed requests (all attempts and retries included).
- `cache_hit_ratio`: sum of `cached_tokens` / sum of `prompt_tokens`, as the engines
  reported them in each answer's usage.
- `failed`: requests that did not complete; `to_dead_worker`: generation requests that
  reached a killed engine's port (each attempt counts, whoever retried it).
- `cpu_ms_per_request`: CPU time (user + system) of the driving process during the run,
  plus that of the contender's own processes (SGLang's router), per request sent.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from modelserver.bench.outcome import Outcome


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100), linear between closest ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class ContenderFigures:
    name: str
    family: str
    requests: int
    completed: int
    failed: int
    duration_s: float
    completed_rps: float
    output_tok_s: float
    ttft_p50: float | None
    ttft_p90: float | None
    ttft_p99: float | None
    e2e_p50: float | None
    e2e_p90: float | None
    e2e_p99: float | None
    cache_hit_ratio: float | None
    to_dead_worker: int
    cpu_ms_per_request: float
    per_worker: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    skipped: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize(
    name: str,
    family: str,
    outcomes: Sequence[Outcome],
    duration_s: float,
    cpu_s: float,
    to_dead_worker: int,
) -> ContenderFigures:
    done = [o for o in outcomes if o.ok]
    ttfts = [o.ttft_s for o in done if o.streamed and o.ttft_s is not None]
    e2es = [o.e2e_s for o in done]
    prompt = sum(o.prompt_tokens for o in done)
    cached = sum(o.cached_tokens for o in done)
    duration = max(duration_s, 1e-9)
    errors = Counter(_short(o.error) for o in outcomes if not o.ok)
    return ContenderFigures(
        name=name,
        family=family,
        requests=len(outcomes),
        completed=len(done),
        failed=len(outcomes) - len(done),
        duration_s=duration_s,
        completed_rps=len(done) / duration,
        output_tok_s=sum(o.completion_tokens for o in done) / duration,
        ttft_p50=percentile(ttfts, 50),
        ttft_p90=percentile(ttfts, 90),
        ttft_p99=percentile(ttfts, 99),
        e2e_p50=percentile(e2es, 50),
        e2e_p90=percentile(e2es, 90),
        e2e_p99=percentile(e2es, 99),
        cache_hit_ratio=(cached / prompt) if prompt else None,
        to_dead_worker=to_dead_worker,
        cpu_ms_per_request=1000.0 * cpu_s / max(len(outcomes), 1),
        per_worker=dict(Counter(o.worker or "?" for o in done)),
        errors=[f"{count} x {text}" for text, count in errors.most_common(5)],
    )


def skipped(name: str, family: str, reason: str) -> ContenderFigures:
    """The figures row of a contender that could not run here, with the reason."""
    return ContenderFigures(
        name=name, family=family, requests=0, completed=0, failed=0, duration_s=0.0,
        completed_rps=0.0, output_tok_s=0.0, ttft_p50=None, ttft_p90=None, ttft_p99=None,
        e2e_p50=None, e2e_p90=None, e2e_p99=None, cache_hit_ratio=None, to_dead_worker=0,
        cpu_ms_per_request=0.0, skipped=reason,
    )


def _short(error: str | None) -> str:
    text = (error or "unknown error").splitlines()[0]
    return text[:160]


def ratio(ours: float | None, theirs: float | None) -> float | None:
    """ours / theirs, or None when either is missing or theirs is zero."""
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs
