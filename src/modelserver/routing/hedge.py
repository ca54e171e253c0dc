"""Hedged streams: a stream whose first token is late gets a copy on the next best worker.

"Late" is against the worker's own learned time to first token, a high percentile
(`[router.hedge] percentile`) of its last `window` samples, not a fixed time. The first of
the two attempts to deliver a first chunk wins; the other is cancelled, which closes its
connection, and the engine drops the request when it sees the client gone (SGLang aborts
a request whose client disconnected; it also has `/abort_request` by request id, which a
router forwarding OpenAI bodies does not know). Extra requests stay within a budget: a
token bucket that each hedgeable request fills by `budget` (default 0.05), capped at
`burst`; it starts empty, so hedges never exceed `budget` x requests. A caller marks a call
it does not want sent twice with the header `x-modelserver-idempotent: false`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from modelserver.config import HedgeConfig, RouterConfig
from modelserver.routing.events import AttemptResult, RouterObserver
from modelserver.routing.policies import Policy, usable_workers
from modelserver.routing.request_key import RequestInfo
from modelserver.routing.response import RoutedResponse
from modelserver.routing.worker import Worker

log = logging.getLogger(__name__)

NOT_IDEMPOTENT_HEADER = "x-modelserver-idempotent"


def hedging_allowed(headers: Mapping[str, str] | None) -> bool:
    """False when the caller marked the call as not to be sent twice."""
    if not headers:
        return True
    for name, value in headers.items():
        if name.lower() == NOT_IDEMPOTENT_HEADER and value.strip().lower() in ("false", "0"):
            return False
    return True


class HedgeBudget:
    """A token bucket: each request adds `budget`, a hedge takes one whole token."""

    def __init__(self, budget: float, burst: float) -> None:
        self.budget = budget
        self.burst = burst
        self.tokens = 0.0
        self.requests = 0
        self.hedges = 0

    def on_request(self) -> None:
        self.requests += 1
        self.tokens = min(self.burst, self.tokens + self.budget)

    def try_spend(self) -> bool:
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        self.hedges += 1
        return True


class Hedger(RouterObserver):
    """Learns each worker's time to first token (as a router observer) and runs hedged
    attempts within the budget."""

    def __init__(
        self,
        config: HedgeConfig,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.budget = HedgeBudget(config.budget, config.burst)
        self._sleep = sleep
        self._ttfts: dict[str, deque[float]] = {}
        self.won_by_copy = 0
        """Hedged requests the copy answered first."""

    # -- learning -----------------------------------------------------------------------

    def on_result(self, result: AttemptResult) -> None:
        if result.ok and result.ttft_s is not None:
            samples = self._ttfts.get(result.worker)
            if samples is None:
                samples = self._ttfts[result.worker] = deque(maxlen=self.config.window)
            samples.append(result.ttft_s)

    def late_after(self, url: str) -> float | None:
        """The worker's `percentile` time to first token; None until `min_samples`."""
        samples = self._ttfts.get(url)
        if samples is None or len(samples) < self.config.min_samples:
            return None
        ordered = sorted(samples)
        rank = min(len(ordered) - 1, int(len(ordered) * self.config.percentile / 100.0))
        return ordered[rank]

    # -- running -------------------------------------------------------------------------

    async def run(
        self,
        primary: Worker,
        attempt: Callable[[Worker], Awaitable[RoutedResponse]],
        other: Callable[[], Worker | None],
    ) -> RoutedResponse:
        """`attempt(primary)`; if no first chunk came by the primary's late mark and the
        budget allows, `attempt(other())` (the next best worker, if any) races it. Returns
        the first answer; cancels the other attempt."""
        self.budget.on_request()
        primary_url = primary.url
        late = self.late_after(primary_url)
        first = asyncio.ensure_future(attempt(primary))
        if late is None:
            return await first
        timer = asyncio.ensure_future(self._sleep(late))
        try:
            await asyncio.wait({first, timer}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            first.cancel()
            raise
        finally:
            timer.cancel()
        if first.done() or not self.budget.tokens >= 1.0:
            return await first
        backup = other()
        if backup is None:
            return await first
        self.budget.try_spend()
        second = asyncio.ensure_future(attempt(backup))
        log.info("hedged a stream late on %s (%.3f s)", primary_url, late)
        return await self._first_of(first, second)

    async def _first_of(
        self, first: asyncio.Future[RoutedResponse], second: asyncio.Future[RoutedResponse]
    ) -> RoutedResponse:
        pending = {first, second}
        failure: BaseException | None = None
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                winners = [t for t in (first, second) if t in done and t.exception() is None]
                if winners:
                    for loser in winners[1:]:  # both answered at once: keep the primary's
                        await loser.result().aclose()
                    if winners[0] is second:
                        self.won_by_copy += 1
                    return winners[0].result()
                for task in (first, second):
                    if task in done and (failure is None or task is first):
                        failure = task.exception()
        finally:
            for task in pending:
                await _cancel_and_close(task)
        assert failure is not None
        raise failure


class _RouterView(Protocol):
    policy: Policy
    config: RouterConfig
    _clock: Callable[[], float]


def next_best(
    primary: Worker, candidates: Sequence[Worker], request: RequestInfo, router: _RouterView
) -> Worker | None:
    """The policy's pick among the usable candidates other than `primary`, if any."""
    now = router._clock()
    readmit = router.config.latency.readmit_after_s
    others = [w for w in usable_workers(candidates, now, readmit) if w is not primary]
    return router.policy.select(others, request) if others else None


async def _cancel_and_close(task: asyncio.Future[RoutedResponse]) -> None:
    """Stop the loser: cancelled before its first chunk, or its stream closed after."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        response = await task
        await response.aclose()
