"""The policy contract: a small class with a `name` and `select(workers, request)`.

The router hands a policy only workers that may take a request (healthy, circuit not
open, not draining, not ejected, not already tried for this request: see
`Worker.out_reason`), never an empty list. Hooks default to doing nothing.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import ClassVar

from modelserver.config import RouterConfig
from modelserver.routing.request_key import RequestInfo
from modelserver.routing.speed_probe import SpeedSample
from modelserver.routing.worker import Worker


class Policy(ABC):
    name: ClassVar[str]
    needs_text: ClassVar[bool] = False
    """True if `select` reads `request.text` (the router renders it only then)."""

    def __init__(self, config: RouterConfig, rng: random.Random) -> None:
        self.config = config
        self.rng = rng

    @abstractmethod
    def select(self, workers: Sequence[Worker], request: RequestInfo) -> Worker:
        """Pick one of `workers` (non-empty, all usable) for `request`."""

    def on_request_start(self, worker: Worker, request: RequestInfo) -> None:  # noqa: B027
        """Called once the request is on its way to `worker`."""

    def on_request_complete(  # noqa: B027
        self, worker: Worker, request: RequestInfo, ok: bool
    ) -> None:
        """Called when the attempt on `worker` ended (ok=False: it failed)."""

    def on_worker_removed(self, worker: Worker) -> None:  # noqa: B027
        """Called when a worker leaves the fleet; forget anything kept about it."""

    def on_attempt_measured(  # noqa: B027
        self,
        worker: Worker,
        request: RequestInfo,
        e2e_s: float,
        ttft_s: float | None,
        output_tokens: int | None,
    ) -> None:
        """Called with a successful attempt's times, before `on_request_complete`."""

    async def prepare(  # noqa: B027
        self,
        workers: Sequence[Worker],
        probe: Callable[[Worker], Awaitable[SpeedSample | None]],
    ) -> None:
        """Called once when the router starts (`probe` measures a worker's speed)."""

    async def aclose(self) -> None:  # noqa: B027
        """Called when the router closes: stop any task or socket the policy runs."""


def usable_workers(workers: Sequence[Worker], now: float, readmit_after_s: float) -> list[Worker]:
    """The one shared rule for "may take a request now": healthy (probes, launcher), circuit
    not open (half-open: only if its trial slot is free), not draining, not ejected
    (`Worker.out_reason` gives the reason for each one left out)."""
    return [w for w in workers if w.out_reason(now, readmit_after_s) is None]


def latency_estimate(worker: Worker, default: float) -> float:
    """The worker's learned seconds per token, or `default` while it has none we trust: not
    measured yet, or ejected and now on trial (its old EWMA is what got it ejected; judging
    the trial by it would mean never picking it again)."""
    if worker.ewma_latency is None or worker.ejected_at is not None:
        return default
    return worker.ewma_latency


def fleet_default_latency(workers: Sequence[Worker]) -> float:
    """What to assume for a worker not measured yet: the mean of those that are (so a new
    worker is neither shunned nor flooded), or 1.0 when none is."""
    known = [w.ewma_latency for w in workers if w.ewma_latency is not None and w.ejected_at is None]
    return sum(known) / len(known) if known else 1.0


def weighted_load(worker: Worker, default_latency: float) -> float:
    """Expected wait on `worker`: requests in flight (plus this one) × latency per token."""
    return (worker.in_flight + 1) * latency_estimate(worker, default_latency)


def least_loaded(workers: Sequence[Worker], rng: random.Random) -> Worker:
    """The worker with the smallest weighted load; ties broken at random, never by list
    order (SGLang users saw every request go to the first worker when loads tie:
    sgl-project/sglang#15473, #27547)."""
    default = fleet_default_latency(workers)
    best: list[Worker] = []
    best_load = float("inf")
    for worker in workers:
        load = weighted_load(worker, default)
        if load < best_load:
            best, best_load = [worker], load
        elif load == best_load:
            best.append(worker)
    return best[0] if len(best) == 1 else rng.choice(best)
