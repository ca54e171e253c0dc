"""`round_robin`: each usable worker in turn, per model."""

from __future__ import annotations

import random
from collections.abc import Sequence

from modelserver.config import RouterConfig
from modelserver.routing.policies.base import Policy
from modelserver.routing.request_key import RequestInfo
from modelserver.routing.worker import Worker


class RoundRobinPolicy(Policy):
    name = "round_robin"

    def __init__(self, config: RouterConfig, rng: random.Random) -> None:
        super().__init__(config, rng)
        self._turns: dict[str, int] = {}

    def select(self, workers: Sequence[Worker], request: RequestInfo) -> Worker:
        turn = self._turns.get(request.model, 0)
        self._turns[request.model] = turn + 1
        return workers[turn % len(workers)]
