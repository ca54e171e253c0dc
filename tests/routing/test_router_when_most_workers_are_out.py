"""When most of a model's workers are broken, the one still answering keeps serving.

Found by the chaos run (tests/reliability/test_chaos.py): the worker left healthy grew slower
under the whole load, was ejected as slow against the stale latency of workers that had
since died, and requests then failed with "no healthy worker" while it was alive.
"""

from __future__ import annotations

from modelserver.routing import MockRequest, MockResponse

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
