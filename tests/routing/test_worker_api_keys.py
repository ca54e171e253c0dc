"""Engine API keys: a worker added at run time gets its model's key, and an engine that
refuses the router's key (401/403) is a misconfigured worker: the request goes elsewhere,
the worker's circuit counts it, and the caller is not told its own key was wrong."""

from __future__ import annotations

import pytest

from modelserver.config import RouterConfig
from modelserver.errors import DeadlineExceeded, EngineRejected, WorkerAuthRejected
from modelserver.routing import MockRequest, MockResponse, MockTransport, Router, WorkerEntry
from modelserver.sim import SimConfig, SimThread

from .helpers import CHAT, URLS, chat_answer, chat_body, error_answer, make_router

KEY = "engine-secret"


def key_checking(request: MockRequest) -> MockResponse:
    if request.headers.get("authorization") != f"Bearer {KEY}":
        return error_answer(401, "Unauthorized")
    return chat_answer()


def keyed_router(transport: MockTransport) -> Router:
    config = RouterConfig(policy="round_robin")
    return Router([WorkerEntry("m", URLS[0], api_key=KEY)], config=config, transport=transport)


async def test_a_worker_added_later_gets_its_models_key() -> None:
    transport = MockTransport(key_checking)
    router = keyed_router(transport)
    router.remove_worker(URLS[0])  # the key outlives the model's last worker
    router.add_worker("m", URLS[1])
    response = await router.forward("m", CHAT, chat_body())
    assert response.worker == URLS[1]
    assert transport.requests[-1].headers["authorization"] == f"Bearer {KEY}"


async def test_a_key_given_when_adding_a_worker_wins_and_no_key_stays_no_key() -> None:
    transport = MockTransport(lambda r: chat_answer())
    router = keyed_router(transport)
    router.add_worker("m", URLS[1], api_key="its-own")
    router.add_worker("other", URLS[2])
    router.drain(URLS[0])
    await router.forward("m", CHAT, chat_body())
    await router.forward("other", CHAT, chat_body())
    sent = {r.worker: r.headers.get("authorization") for r in transport.requests}
    assert sent == {URLS[1]: "Bearer its-own", URLS[2]: None}


@pytest.mark.parametrize("status", [401, 403])
async def test_an_engine_refusing_the_key_is_retried_elsewhere_and_counts_against_it(
    status: int,
) -> None:
    def handler(request: MockRequest) -> MockResponse:
        if request.worker == URLS[0]:
            return error_answer(status, "Unauthorized")
        return chat_answer()

    router, transport, _, sleep, _ = make_router(handler)
    response = await router.forward("m", CHAT, chat_body())  # round robin: URLS[0] first
    assert [r.worker for r in transport.requests] == [URLS[0], response.worker]
    assert response.worker != URLS[0] and sleep.delays == []
    misconfigured = router.worker(URLS[0])
    assert misconfigured.errors == 1 and misconfigured.breaker.consecutive_failures == 1


async def test_every_worker_refusing_the_key_is_a_failed_request_not_a_caller_auth_error() -> None:
    router, *_ = make_router(lambda r: error_answer(401, "Unauthorized"))
    with pytest.raises(DeadlineExceeded) as caught:
        await router.forward("m", CHAT, chat_body())
    assert not isinstance(caught.value, EngineRejected)
    assert not caught.value.timed_out  # every attempt failed: the gateway's 502
    assert len(caught.value.attempts) == 3
    assert "refused the API key the router has for this worker" in str(caught.value)
    assert isinstance(caught.value.__cause__, WorkerAuthRejected)


async def test_a_real_engine_with_a_key_serves_a_worker_added_without_one() -> None:
    with (
        SimThread(SimConfig(model="m", api_key=KEY)) as first,
        SimThread(SimConfig(model="m", api_key=KEY)) as second,
    ):
        async with Router([WorkerEntry("m", first.url, api_key=KEY)]) as router:
            router.add_worker("m", second.url)
            router.drain(first.url)
            response = await router.forward("m", CHAT, chat_body(max_tokens=4))
            assert response.worker == second.url and response.status == 200
            # Without the key, the sim says 401: what a misconfigured worker looks like.
            router.remove_worker(second.url)
            router.add_worker("m", second.url, api_key="wrong")
            with pytest.raises(DeadlineExceeded, match="HTTP 401"):
                await router.forward("m", CHAT, chat_body(max_tokens=4))
