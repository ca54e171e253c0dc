"""Policy `expected_completion` against real simulated engines of different speeds.

Speeds are set where the sim keeps them apart (speed <= ~5, see test_router_on_sims); the
assertions are on where requests went and on what the policy knew when it chose, never on
how long anything took."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import Any

from modelserver.routing.request_key import RequestInfo
from modelserver.routing.worker import Worker
from modelserver.sim import SimConfig

from .kv_sims import policy_of, sims, subscribed_router

CHAT = "/v1/chat/completions"
FAST, SLOW = 4.0, 0.5  # far apart: a busy test machine blurs a probe, never by 8x


def body(i: int, max_tokens: int = 48) -> dict[str, Any]:
    return {
        "model": "m",
        "messages": [{"role": "user", "content": f"request number {i}: " + "word " * 60}],
        "max_tokens": max_tokens,
    }


async def test_a_slower_engine_gets_a_request_only_when_every_faster_ones_wait_is_longer() -> None:
    configs = (
        SimConfig(model="m", speed=FAST, max_running=2),
        SimConfig(model="m", speed=FAST, max_running=2),
        SimConfig(model="m", speed=SLOW, max_running=8),
    )
    async with sims(*configs) as servers:
        fast_urls = {servers[0].url, servers[1].url}
        slow_url = servers[2].url
        router = subscribed_router(servers)  # no events published: the approximate tree
        async with router:
            await router.start()  # the speed probe, before any request
            policy = policy_of(router)
            lines = {s.url: policy.model_of(router.worker(s.url)).line(0.0) for s in servers}
            assert all(lines[slow_url] is not None and lines[u] is not None for u in fast_urls)
            assert all(lines[slow_url][0] > lines[u][0] for u in fast_urls)  # type: ignore[index]

            decisions: list[tuple[str, dict[str, float], dict[str, int]]] = []
            select = policy.select

            def recording(workers: Sequence[Worker], request: RequestInfo) -> Worker:
                chosen = select(workers, request)
                estimates = policy.last_estimates
                decisions.append((chosen.url, estimates, {w.url: w.in_flight for w in workers}))
                return chosen

            policy.select = recording  # type: ignore[method-assign]

            # One at a time: nothing waits anywhere, so the slow engine gets nothing.
            for i in range(6):
                answer = await router.forward("m", CHAT, body(i))
                assert answer.worker in fast_urls
            # A burst: the fast engines' slots fill up and their queues grow.
            answers = await asyncio.gather(
                *(router.forward("m", CHAT, body(100 + i)) for i in range(48))
            )
            where = Counter(a.worker for a in answers)
            assert where[slow_url] >= 1, where  # the burst did overflow to it...
            for chosen, estimates, in_flight in decisions:
                if chosen != slow_url:
                    continue
                for url in fast_urls:  # ...only when each faster one would finish later
                    assert estimates[url] >= estimates[slow_url]
                    assert in_flight[url] >= 2  # because its running slots were full
