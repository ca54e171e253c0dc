"""When most of a model's workers are broken, the one still answering keeps serving.

Found by the chaos run (tests/reliability/test_chaos.py): the worker left healthy grew slower
under the whole load, was ejected as slow against the stale latency of workers that had
since died, and requests then failed with "no healthy worker" while it was alive; and a
worker whose 5xx had stopped stayed out by its circuit while the others were broken.
"""

from __future__ import annotations

import random

import pytest

from modelserver.config import RouterConfig
from modelserver.errors import NoHealthyWorker
from modelserver.routing import MockRequest, MockResponse, MockTransport, Router, WorkerEntry

from .helpers import CHAT, URLS, FakeClock, chat_answer, chat_body, error_answer, make_router

LATENCY = {"min_samples": 2, "ejection_ratio": 3.0, "min_gap_s": 0.0, "readmit_after_s": 30}


class Engines:
    """Answers after `delay[url]` seconds of the fake clock; 503 from the `failing` ones."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.delay: dict[str, float] = {}
        self.failing: set[str] = set()

    def __call__(self, request: MockRequest) -> MockResponse:
        if request.worker in self.failing:
            return error_answer(503, "broken")
        self.clock.advance(self.delay.get(request.worker, 0.0))
        return chat_answer()


async def test_a_worker_ejected_as_slow_serves_when_every_other_worker_is_out() -> None:
    clock = FakeClock()
    engines = Engines(clock)
    engines.delay[URLS[0]] = 0.5
    router, *_ = make_router(engines, clock=clock, latency=LATENCY)
    for _ in range(9):
        await router.forward("m", CHAT, chat_body())
    slow = router.worker(URLS[0])
    assert slow.ejected_at is not None  # slow next to the others: out
    router.drain(URLS[1])
    router.drain(URLS[2])
    answer = await router.forward("m", CHAT, chat_body())
    assert answer.worker == URLS[0]  # a slow answer rather than "no healthy worker"


async def test_latency_is_compared_only_with_workers_that_could_take_the_request() -> None:
    clock = FakeClock()
    engines = Engines(clock)
    router, *_ = make_router(
        engines, urls=URLS[:2], clock=clock, latency=LATENCY, breaker={"failure_threshold": 1}
    )
    for _ in range(4):  # both measured, both fast
        await router.forward("m", CHAT, chat_body())
    engines.failing.add(URLS[1])  # it breaks: its circuit opens, its fast EWMA stays behind
    for _ in range(2):  # round robin reaches it within two
        await router.forward("m", CHAT, chat_body())
    assert router.workers()[1].status.startswith("circuit open")
    router.add_worker("m", URLS[2])  # a fresh worker, not measured yet
    engines.delay[URLS[0]] = 0.5  # the survivor slows under the whole load
    for _ in range(2):
        await router.forward("m", CHAT, chat_body())
    assert router.worker(URLS[0]).latency_samples >= 3
    assert router.worker(URLS[0]).ejected_at is None


async def test_a_worker_out_by_its_circuit_serves_while_its_probe_answers_and_none_else_can(
) -> None:
    clock = FakeClock()
    engines = Engines(clock)
    transport = MockTransport(engines)
    config = RouterConfig.model_validate(
        {"policy": "round_robin", "breaker": {"failure_threshold": 1, "cooldown_s": 60},
         "health": {"interval_s": 3600}}
    )
    router = Router([WorkerEntry("m", url) for url in URLS], config=config,
                    transport=transport, clock=clock, rng=random.Random(0))
    await router.start()  # one probe round: every worker answers its health endpoint
    try:
        engines.failing.add(URLS[0])
        for _ in range(3):
            await router.forward("m", CHAT, chat_body())
        assert router.workers()[0].status.startswith("circuit open")
        engines.failing.clear()  # it recovered, but its circuit stays open for a minute
        router.drain(URLS[1])
        router.drain(URLS[2])
        assert (await router.forward("m", CHAT, chat_body())).worker == URLS[0]
    finally:
        await router.close()


async def test_without_a_probe_answer_an_open_circuit_still_means_no_healthy_worker() -> None:
    clock = FakeClock()
    engines = Engines(clock)
    engines.failing.add(URLS[0])
    router, *_ = make_router(engines, clock=clock, breaker={"failure_threshold": 1})
    for _ in range(3):
        await router.forward("m", CHAT, chat_body())
    router.drain(URLS[1])
    router.drain(URLS[2])
    with pytest.raises(NoHealthyWorker):
        await router.forward("m", CHAT, chat_body())


async def test_a_retry_goes_to_a_worker_out_for_being_slow_before_one_that_failed() -> None:
    # The chaos run: the healthy worker, slower under the whole load, was ejected; the two
    # others answered 503 half the time, and a request spent its attempts between them.
    clock = FakeClock()
    engines = Engines(clock)
    engines.delay[URLS[0]] = 0.5
    router, *_ = make_router(engines, clock=clock, latency=LATENCY)
    for _ in range(9):
        await router.forward("m", CHAT, chat_body())
    assert router.worker(URLS[0]).ejected_at is not None
    engines.failing.update(URLS[1:])
    answer = await router.forward("m", CHAT, chat_body())
    assert answer.worker == URLS[0] and answer.attempts == 3
