"""A refused connection takes a worker out at once (it is dead), until probes bring it back.

Without this, a dead worker kept getting requests until its breaker opened
(`failure_threshold` failed requests) or the next probe round read the launcher's state file.
"""

from __future__ import annotations

import asyncio
import random

from modelserver.config import RouterConfig
from modelserver.routing import MockRequest, MockResponse, MockTransport, Router, WorkerEntry

from .helpers import CHAT, URLS, FakeClock, chat_answer, chat_body

DEAD = URLS[0]


class Fleet:
    """Three workers; the first refuses connections while `dead` is set."""

    def __init__(self) -> None:
        self.dead = True

    def __call__(self, request: MockRequest) -> MockResponse:
        if request.worker == DEAD and self.dead:
            raise ConnectionRefusedError("connection refused")
        if request.path == "/health":
            return MockResponse(json={})
        return chat_answer()


def router_for(fleet: Fleet) -> tuple[Router, MockTransport]:
    transport = MockTransport(fleet)
    config = RouterConfig.model_validate(
        {"policy": "round_robin", "health": {"interval_s": 3600, "success_threshold": 2}}
    )
    router = Router(
        [WorkerEntry("m", url) for url in URLS], config=config, transport=transport,
        clock=FakeClock(), sleep=asyncio.sleep, rng=random.Random(0),
    )
    return router, transport


def chats_to(transport: MockTransport, url: str) -> int:
    return sum(1 for r in transport.requests if r.worker == url and r.path == CHAT)


async def test_refused_worker_is_out_after_one_refusal_and_back_after_probes_answer() -> None:
    fleet = Fleet()
    router, transport = router_for(fleet)
    fleet.dead = False
    await router.start()  # probes run (one round now, the next in an hour: driven by hand)
    try:
        fleet.dead = True  # the engine dies after the probe said it was fine
        for _ in range(9):
            await router.forward("m", CHAT, chat_body())
        assert chats_to(transport, DEAD) == 1  # refused once, then never chosen again
        assert router.worker(DEAD).breaker.consecutive_failures == 1  # breaker still closed
        assert router.workers()[0].status.startswith("health probe failed (cannot connect")

        fleet.dead = False  # restarted: two probe rounds in a row must answer
        await router.probe_once()
        assert router.workers()[0].status != "up"
        await router.probe_once()
        assert router.workers()[0].status == "up"
        for _ in range(3):
            await router.forward("m", CHAT, chat_body())
        assert chats_to(transport, DEAD) == 2
    finally:
        await router.close()


async def test_without_probes_a_refused_worker_is_left_to_the_breaker() -> None:
    # Nothing would bring it back, so one refusal must not take it out for good.
    fleet = Fleet()
    router, transport = router_for(fleet)
    for _ in range(6):
        await router.forward("m", CHAT, chat_body())
    assert chats_to(transport, DEAD) >= 2  # round robin came back to it
    assert router.workers()[0].status == "up"
