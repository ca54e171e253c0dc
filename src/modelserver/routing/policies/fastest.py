"""`fastest`: the seed's policy made cheap.

The seed sent a 256-token generation to every server in turn, kept the fastest and sent
everything there until a reply took longer than LATENCY_GROWING_RATE × the bound. Here the
latency comes from real traffic (EWMA per output token): stick to the current worker while
its latency stays within `latency.ejection_ratio` × the best one's, else switch to the
best. Workers never measured are tried first, once each, so every one gets a latency, and
a worker left behind is tried again once its last sample is `latency.readmit_after_s` old
(the seed's re-probe, done with one real request instead of a 256-token probe each), so a
worker that recovered can win back the traffic.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from modelserver.config import RouterConfig
from modelserver.routing.policies.base import Policy
from modelserver.routing.request_key import RequestInfo
from modelserver.routing.worker import Worker


class FastestPolicy(Policy):
    name = "fastest"

    def __init__(self, config: RouterConfig, rng: random.Random) -> None:
        super().__init__(config, rng)
        self._current: dict[str, str] = {}
        """model -> URL of the worker we stick to."""

    def select(self, workers: Sequence[Worker], request: RequestInfo) -> Worker:
        current_urls = self._current
        # Not measured yet, or back from ejection for a trial: try it before judging.
        unmeasured = [
            w
            for w in workers
            if (w.ewma_latency is None or w.ejected_at is not None) and w.in_flight == 0
        ]
        if unmeasured:
            return self.rng.choice(unmeasured)
        stale = [
            w
            for w in workers
            if w.url != current_urls.get(request.model)
            and w.in_flight == 0
            and (w.latency_age() or 0.0) >= self.config.latency.readmit_after_s
        ]
        if stale:
            return self.rng.choice(stale)
        measured = [w for w in workers if w.ewma_latency is not None and w.ejected_at is None]
        if not measured:  # all unmeasured ones are busy with their first request
            return self.rng.choice(list(workers))
        best = min(measured, key=lambda w: w.ewma_latency or 0.0)
        current = next((w for w in measured if w.url == current_urls.get(request.model)), None)
        bound = (best.ewma_latency or 0.0) * self.config.latency.ejection_ratio
        if current is not None and (current.ewma_latency or 0.0) <= bound:
            return current
        current_urls[request.model] = best.url
        return best

    def on_worker_removed(self, worker: Worker) -> None:
        current_urls = self._current
        for model, url in list(current_urls.items()):
            if url == worker.url:
                del current_urls[model]
