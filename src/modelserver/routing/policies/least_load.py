"""`least_load`: power of two choices on requests in flight weighted by learned latency.

Two distinct workers drawn at random, the one with the smaller (in flight + 1) × EWMA
seconds per token wins. Sampling two instead of scanning all keeps a herd of clients with
the same stale view from piling onto one worker (Mitzenmacher, "The Power of Two Choices in
Randomized Load Balancing", 2001).
"""

from __future__ import annotations

from collections.abc import Sequence

from modelserver.routing.policies.base import Policy, fleet_default_latency, weighted_load
from modelserver.routing.request_key import RequestInfo
from modelserver.routing.worker import Worker


class LeastLoadPolicy(Policy):
    name = "least_load"

    def select(self, workers: Sequence[Worker], request: RequestInfo) -> Worker:
        if len(workers) == 1:
            return workers[0]
        first, second = self.rng.sample(list(workers), 2)
        default = fleet_default_latency(workers)
        load_first = weighted_load(first, default)
        load_second = weighted_load(second, default)
        if load_first == load_second:
            return first  # sample order is already random
        return first if load_first < load_second else second
