"""When every attempt was refused for overload, the caller hears 429 or 503, not 502."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from modelserver.config import RouterConfig
from modelserver.gateway import GatewayServer
from modelserver.gateway.attempts import overload_status
from modelserver.routing import MockRequest, MockResponse, MockTransport, Router

# Each model's two workers answer every generation with these statuses.
ANSWERS = {
    "all-429": (429, 429),
    "all-503": (503, 503),
    "429-and-503": (429, 503),
    "429-and-500": (429, 500),
}


def engine(request: MockRequest) -> MockResponse:
    if request.method == "GET":
        return MockResponse(body=b"ok")  # health probes pass
    model = request.json["model"]
    worker_index = int(request.worker.rsplit(":", 1)[1]) % 2
    status = ANSWERS[model][worker_index]
    return MockResponse(status=status, json={"error": {"message": f"busy ({status})"}})


@pytest.fixture
async def gateway() -> AsyncIterator[GatewayServer]:
    mapping = {
        model: [f"http://127.0.0.1:{20000 + 2 * i}", f"http://127.0.0.1:{20001 + 2 * i}"]
        for i, model in enumerate(ANSWERS)
    }
    # Two attempts, one on each worker, and no backoff round trying them again.
    router = Router.from_mapping(
        mapping, transport=MockTransport(engine), config=RouterConfig(max_attempts=2)
    )
    async with GatewayServer(router, port=0, environ={}) as server:
        yield server


Answer = tuple[int, dict[str, str], dict[str, object]]


async def ask(http: aiohttp.ClientSession, gateway: GatewayServer, model: str) -> Answer:
    body = orjson.dumps({"model": model, "prompt": "hi"})
    async with http.post(gateway.url + "/v1/completions", data=body) as response:
        return response.status, dict(response.headers), await response.json()


@pytest.mark.parametrize(
    ("model", "status"),
    [("all-429", 429), ("all-503", 503), ("429-and-503", 503), ("429-and-500", 502)],
)
async def test_the_caller_hears_overload_when_every_attempt_was_refused_for_it(
    gateway: GatewayServer, model: str, status: int
) -> None:
    async with aiohttp.ClientSession() as http:
        answered, headers, body = await ask(http, gateway, model)
    assert answered == status
    error = body["error"]
    assert isinstance(error, dict) and "2 attempts failed" in error["message"]
    if status in (429, 503):
        assert error["code"] == "engines_overloaded"
        assert headers["Retry-After"] == "1"
    else:
        assert error["code"] == "all_attempts_failed"
        assert "Retry-After" not in headers


async def test_concurrent_requests_each_hear_their_own_attempts(gateway: GatewayServer) -> None:
    models = [model for model in ANSWERS for _ in range(8)]
    async with aiohttp.ClientSession() as http:
        answers = await asyncio.gather(*(ask(http, gateway, model) for model in models))
    expected = {"all-429": 429, "all-503": 503, "429-and-503": 503, "429-and-500": 502}
    assert [status for status, _, _ in answers] == [expected[model] for model in models]


def test_overload_needs_every_failed_attempt_to_be_429_or_503() -> None:
    assert overload_status([]) is None
    assert overload_status([429, None]) is None  # one got no answer at all
    assert overload_status([429, 429]) == 429
    assert overload_status([503, 429]) == 503
