"""Hedged streams on a mock transport: the budget of extra requests, the opt-out header,
and first-answer-wins. The late mark is an injected sleep, never the wall clock."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

from modelserver.config import RouterConfig
from modelserver.routing import MockRequest, MockResponse, MockTransport, Router, WorkerEntry
from modelserver.routing.hedge import HedgeBudget, Hedger

from .helpers import FakeClock, sse

URLS = ["http://a:1", "http://b:1", "http://c:1"]
CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def _slow_stream(yields: int) -> AsyncIterator[bytes]:
    for _ in range(yields):  # an engine that takes a few loop turns to its first token
        await asyncio.sleep(0)
    for chunk in sse("hello", " world"):
        yield chunk


def _router(transport: MockTransport, **hedge: object) -> tuple[Router, Hedger]:
    config = RouterConfig.model_validate(
        {"policy": "round_robin", "hedge": {"enabled": True, "min_samples": 1, **hedge}}
    )

    async def late_mark(seconds: float) -> None:
        await asyncio.sleep(0)  # the late mark passes after one loop turn

    clock = FakeClock()
    router = Router(
        [WorkerEntry("m", url) for url in URLS],
        config=config,
        transport=transport,
        clock=clock,
        sleep=late_mark,
    )
    hedger = router.hedger
    assert hedger is not None
    return router, hedger


async def _read(router: Router, headers: dict[str, str] | None = None) -> str:
    response = await router.forward("m", CHAT, BODY, stream=True, headers=headers)
    assert response.chunks is not None
    async with response:
        return b"".join([c async for c in response.chunks]).decode()


async def test_the_hedge_budget_holds_over_1000_requests() -> None:
    # Every first token comes after the late mark, so every request would be hedged.
    transport = MockTransport(lambda r: MockResponse(chunks=_slow_stream(5)))
    router, hedger = _router(transport)
    for _ in range(1000):
        text = await _read(router)
        assert "hello" in text
    sent = sum(1 for r in transport.requests if r.path == CHAT)
    assert hedger.budget.requests == 1000
    assert 45 <= hedger.budget.hedges <= 50  # 5% of 1000, the bucket starting empty
    assert sent == 1000 + hedger.budget.hedges
    assert transport.open_answers == 0  # every loser's connection was given back
    await router.close()


async def test_a_call_marked_not_idempotent_is_never_hedged() -> None:
    transport = MockTransport(lambda r: MockResponse(chunks=_slow_stream(5)))
    router, hedger = _router(transport, burst=100.0, budget=1.0)
    for _ in range(50):
        await _read(router, headers={"x-modelserver-idempotent": "false"})
    assert hedger.budget.hedges == 0
    assert sum(1 for r in transport.requests if r.path == CHAT) == 50
    await router.close()


async def test_the_copy_answers_first_when_the_primary_is_stuck() -> None:
    release = asyncio.Event()

    async def stuck() -> AsyncIterator[bytes]:
        await release.wait()
        for chunk in sse("late"):
            yield chunk

    def handler(request: MockRequest) -> MockResponse:
        if request.worker == URLS[0] and hedger.budget.requests > 1:
            return MockResponse(chunks=stuck())
        return MockResponse(chunks=_slow_stream(0))

    transport = MockTransport(handler)
    router, hedger = _router(transport, budget=1.0)
    await _read(router)  # worker a answers once: its time to first token is learned
    picked = Counter(r.worker for r in transport.requests if r.path == CHAT)
    assert picked == {URLS[0]: 1}
    await _read(router)  # b (round robin), no samples yet: not hedged
    await _read(router)  # c
    text = await _read(router)  # a again, stuck: the copy on the next worker answers
    assert "hello" in text and "late" not in text
    assert hedger.won_by_copy == 1
    assert transport.open_answers == 0  # the stuck attempt was closed
    release.set()
    await router.close()


def test_the_bucket_never_lends_more_than_its_share() -> None:
    budget = HedgeBudget(0.05, burst=5.0)
    spent = 0
    for _ in range(10_000):
        budget.on_request()
        spent += budget.try_spend()
    assert 495 <= spent <= 500
