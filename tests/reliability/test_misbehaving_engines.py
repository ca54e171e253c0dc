"""Engines that misbehave (tests/reliability/fake_engine.py), seen through the client and the
gateway: each is handled by failing over to a good worker, or with a clear error when no good
worker is left; never a hang beyond the request deadline.

The router gets a short attempt timeout and deadline here. A test bounds each call with
`asyncio.wait_for(..., HANG_BOUND_S)`, far above the deadline: a call that hangs fails the
test instead of the suite, and no timing threshold is asserted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from modelserver import AsyncModelServer, RequestError, WorkerError
from modelserver.config import GatewayConfig, RouterConfig
from modelserver.gateway import GatewayServer
from modelserver.routing import Router
from tests.reliability.fake_engine import ANSWER, BEHAVIOURS, Behaviour, FakeEngine

CONFIG = RouterConfig(
    policy="round_robin",
    attempt_timeout_s=1.0,
    request_timeout_s=4.0,
    connect_timeout_s=1.0,
    max_attempts=3,
)
HANG_BOUND_S = CONFIG.request_timeout_s + 20
KEY = "sk-misbehaving-engines-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
MESSAGES = [{"role": "user", "content": "hello"}]

# What the final error says for each behaviour when no good worker is left.
WHY = {
    "invalid_json": "not JSON",
    "wrong_type": "text/html",
    "cut_before_first": "connection lost",
    "cut_after_first": "connection lost",
    "never_ends": "timed out",
    "always_500": "HTTP 500: engine exploded",
}
# Streams fail over only before their first chunk; `cut_after_first` sends one.
BEFORE_FIRST_CHUNK = [b for b in BEHAVIOURS if b != "cut_after_first"]


async def bounded(call: Any) -> Any:
    return await asyncio.wait_for(call, HANG_BOUND_S)


def no_slot_left_taken(router: Router) -> None:
    assert [w.in_flight for w in router.workers()] == [0] * len(router.workers())


@pytest.fixture
async def good() -> AsyncIterator[FakeEngine]:
    async with FakeEngine("good") as engine:
        yield engine


# -- through the client ----------------------------------------------------------------------


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
async def test_client_fails_over_from_a_misbehaving_engine(
    behaviour: Behaviour, good: FakeEngine
) -> None:
    async with (
        FakeEngine(behaviour) as bad,
        AsyncModelServer({"m": [bad.url, good.url]}, config=CONFIG, probe=False) as ms,
    ):
        for _ in range(4):
            result = await bounded(ms.chat("m", MESSAGES))
            assert result.text == ANSWER and result.worker == good.url
        assert bad.posts >= 1  # it was tried, and its failure was not the caller's
        stats = {s.url: s for s in ms.workers()}
        assert stats[bad.url].errors == bad.posts
        no_slot_left_taken(ms.router)


@pytest.mark.parametrize("behaviour", BEFORE_FIRST_CHUNK)
async def test_client_stream_fails_over_before_its_first_chunk(
    behaviour: Behaviour, good: FakeEngine
) -> None:
    async with (
        FakeEngine(behaviour) as bad,
        AsyncModelServer({"m": [bad.url, good.url]}, config=CONFIG, probe=False) as ms,
    ):
        for _ in range(4):
            pieces = await bounded(_collect(ms.stream("m", MESSAGES)))
            assert "".join(pieces).strip() == ANSWER
        assert bad.posts >= 1
        no_slot_left_taken(ms.router)


async def _collect(stream: AsyncIterator[str]) -> list[str]:
    return [piece async for piece in stream]


async def test_client_stream_cut_after_its_first_chunk_raises_a_clear_error() -> None:
    async with (
        FakeEngine("cut_after_first") as bad,
        AsyncModelServer({"m": [bad.url]}, config=CONFIG, probe=False) as ms,
    ):
        pieces: list[str] = []
        with pytest.raises(WorkerError, match="stream broke") as caught:
            await bounded(_extend(pieces, ms.stream("m", MESSAGES)))
        assert pieces == ["half"]  # what came before the cut reached the caller
        assert caught.value.worker == bad.url
        no_slot_left_taken(ms.router)


async def test_client_stream_that_ends_without_done_raises_instead_of_passing_for_whole(
) -> None:
    async with (
        FakeEngine("ends_early") as bad,
        AsyncModelServer({"m": [bad.url]}, config=CONFIG, probe=False) as ms,
    ):
        pieces: list[str] = []
        with pytest.raises(WorkerError, match=r"ended before data: \[DONE\]"):
            await bounded(_extend(pieces, ms.stream("m", MESSAGES)))
        assert pieces == ["half"]
        no_slot_left_taken(ms.router)


async def _extend(pieces: list[str], stream: AsyncIterator[str]) -> None:
    async for piece in stream:
        pieces.append(piece)


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
async def test_client_with_only_a_misbehaving_engine_gets_a_clear_error(
    behaviour: Behaviour,
) -> None:
    async with (
        FakeEngine(behaviour) as bad,
        AsyncModelServer({"m": [bad.url]}, config=CONFIG, probe=False) as ms,
    ):
        with pytest.raises(RequestError) as caught:
            await bounded(ms.chat("m", MESSAGES))
        message = str(caught.value)
        assert WHY[behaviour] in message and bad.url in message, message
        no_slot_left_taken(ms.router)


# -- through the gateway ---------------------------------------------------------------------


async def _gateway_call(
    urls: list[str], payload: dict[str, Any]
) -> tuple[int, dict[str, str], bytes, Router]:
    router = Router.from_mapping({"m": urls}, config=CONFIG)
    config = GatewayConfig(api_keys=[KEY])
    async with (
        GatewayServer(router, config, port=0, environ={}) as gateway,
        aiohttp.ClientSession() as http,
    ):
        async def call() -> tuple[int, dict[str, str], bytes]:
            url = gateway.url + "/v1/chat/completions"
            async with http.post(url, data=orjson.dumps(payload), headers=AUTH) as response:
                return response.status, dict(response.headers), await response.read()

        status, headers, body = await bounded(call())
        no_slot_left_taken(router)
    return status, headers, body, router


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
async def test_gateway_fails_over_from_a_misbehaving_engine(
    behaviour: Behaviour, good: FakeEngine
) -> None:
    async with FakeEngine(behaviour) as bad:
        payload = {"model": "m", "messages": MESSAGES}
        # Round robin starts with the first worker: the bad one is tried first.
        status, headers, body, _ = await _gateway_call([bad.url, good.url], payload)
        assert bad.posts == 1
    assert status == 200, body
    assert headers["X-ModelServer-Worker"] == good.url
    assert headers["Content-Type"].startswith("application/json")
    assert orjson.loads(body)["choices"][0]["message"]["content"] == ANSWER


@pytest.mark.parametrize("behaviour", BEFORE_FIRST_CHUNK)
async def test_gateway_stream_fails_over_before_its_first_chunk(
    behaviour: Behaviour, good: FakeEngine
) -> None:
    async with FakeEngine(behaviour) as bad:
        payload = {"model": "m", "messages": MESSAGES, "stream": True}
        status, headers, body, _ = await _gateway_call([bad.url, good.url], payload)
        assert bad.posts == 1
    assert status == 200, body
    assert headers["X-ModelServer-Worker"] == good.url
    assert body.endswith(b"data: [DONE]\n\n") and b"good" in body


async def test_gateway_stream_cut_after_its_first_chunk_ends_with_an_error_event() -> None:
    async with FakeEngine("cut_after_first") as bad:
        payload = {"model": "m", "messages": MESSAGES, "stream": True}
        status, _, body, _ = await _gateway_call([bad.url], payload)
    assert status == 200  # the first chunk was already out when the engine went away
    events = [e for e in body.split(b"\n\n") if e]
    assert b'"half"' in events[0]
    error = orjson.loads(events[-1].removeprefix(b"data: "))["error"]
    assert error["code"] == "worker_failed" and "stream broke" in error["message"]


async def test_gateway_stream_that_ends_without_done_ends_with_an_error_event() -> None:
    async with FakeEngine("ends_early") as bad:
        payload = {"model": "m", "messages": MESSAGES, "stream": True}
        status, _, body, _ = await _gateway_call([bad.url], payload)
    assert status == 200
    events = [e for e in body.split(b"\n\n") if e]
    assert b'"half"' in events[0] and len(events) == 2
    error = orjson.loads(events[-1].removeprefix(b"data: "))["error"]
    assert error["code"] == "worker_failed" and "ended before data: [DONE]" in error["message"]


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
async def test_gateway_with_only_a_misbehaving_engine_answers_a_clear_error(
    behaviour: Behaviour,
) -> None:
    async with FakeEngine(behaviour) as bad:
        payload = {"model": "m", "messages": MESSAGES}
        status, _, body, _ = await _gateway_call([bad.url], payload)
    assert status in (502, 503, 504), body
    error = orjson.loads(body)["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    assert WHY[behaviour] in error["message"], error
