"""The gateway's own answers: errors in OpenAI's shape, health, metrics, admin, auth."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from modelserver.config import GatewayConfig, RouterConfig
from modelserver.errors import WorkerTimeout
from modelserver.gateway import GatewayServer
from modelserver.gateway.auth import GatewayConfigError, KeyRing
from modelserver.routing import MockRequest, MockResponse, MockTransport, Router
from modelserver.sim import SimConfig, SimServer
from tests.gateway.conftest import ADMIN_KEY, API_KEY, Stack
from tests.routing.helpers import FakeClock
from tests.waiting import wait_until

AUTH = {"Authorization": f"Bearer {API_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def assert_openai_error(body: Any, status_type: str | None = None) -> None:
    assert set(body) == {"error"}
    assert {"message", "type", "param", "code"} <= set(body["error"])
    assert body["error"]["message"]
    if status_type:
        assert body["error"]["type"] == status_type


async def post(
    http: aiohttp.ClientSession, url: str, data: bytes, headers: dict[str, str]
) -> tuple[int, Any]:
    async with http.post(url, data=data, headers=headers) as response:
        return response.status, orjson.loads(await response.read())


async def test_invalid_json_is_400(stack: Stack, http: aiohttp.ClientSession) -> None:
    status, body = await post(http, stack.base_url + "/chat/completions", b"{not json", AUTH)
    assert status == 400
    assert_openai_error(body, "invalid_request_error")


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        (b"[1, 2]", None),
        (b'{"messages": []}', "model"),
        (b'{"model": 5, "messages": []}', "model"),
        (b'{"model": "chat", "stream": "yes", "messages": []}', "stream"),
    ],
)
async def test_wrong_types_are_400_naming_the_field(
    stack: Stack, http: aiohttp.ClientSession, payload: bytes, param: str | None
) -> None:
    status, body = await post(http, stack.base_url + "/chat/completions", payload, AUTH)
    assert status == 400
    assert_openai_error(body)
    assert body["error"]["param"] == param


async def test_invalid_utf8_is_400(stack: Stack, http: aiohttp.ClientSession) -> None:
    status, body = await post(http, stack.base_url + "/completions", b'{"model": "\xff"}', AUTH)
    assert status == 400
    assert_openai_error(body)


async def test_engine_rejection_passes_through_with_the_engines_message(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    payload = orjson.dumps({"model": "chat", "messages": "not a list"})
    status, body = await post(http, stack.base_url + "/chat/completions", payload, AUTH)
    assert 400 <= status < 500
    assert_openai_error(body)


async def test_huge_body_is_413() -> None:
    router = Router.from_mapping({"m": ["http://127.0.0.1:9"]})
    config = GatewayConfig(max_body_bytes=4096)
    async with (
        GatewayServer(router, config, port=0, environ={}) as gateway,
        aiohttp.ClientSession() as http,
    ):
        big = orjson.dumps({"model": "m", "prompt": "x" * 10_000})
        status, body = await post(http, gateway.url + "/v1/completions", big, {})
    assert status == 413
    assert_openai_error(body)
    assert "4096" in body["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/completions", "/admin/workers"])
async def test_a_huge_content_length_is_413_at_once_without_waiting_for_the_body(
    path: str,
) -> None:
    router = Router.from_mapping({"m": ["http://127.0.0.1:9"]})
    # A body timeout longer than any test: a 413 that waited for the body would hang here.
    config = GatewayConfig(max_body_bytes=4096, body_timeout_s=3600)
    async with GatewayServer(router, config, port=0, environ={}) as gateway:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 99999999999\r\n\r\n{}".encode()
        )
        await writer.drain()
        answer = await reader.read()  # the gateway closes the connection after answering
        writer.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert_openai_error(orjson.loads(payload))
    assert "4096" in orjson.loads(payload)["error"]["message"]


async def test_health_is_200_while_each_model_has_a_worker_and_503_with_reason_after(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    async with http.get(stack.gateway.url + "/health") as response:
        assert response.status == 200
    for sim in stack.embed:
        await sim.stop()
    await stack.gateway.router.probe_once()
    await stack.gateway.router.probe_once()
    await stack.gateway.router.probe_once()
    async with http.get(stack.gateway.url + "/health") as response:
        body = await response.json()
        assert response.status == 503
    assert "emb" in body["reason"]
    assert body["models"]["chat"]["healthy"] == 2


async def test_metrics_count_requests_per_model_and_worker(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    payload = orjson.dumps({"model": "chat", "prompt": "hi", "max_tokens": 2})
    for _ in range(3):
        status, _ = await post(http, stack.base_url + "/completions", payload, AUTH)
        assert status == 200
    async with http.get(stack.gateway.url + "/metrics") as response:
        text = await response.text()
    lines = [line for line in text.splitlines() if line.startswith("modelserver_requests_total")]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in lines if 'code="200"' in line) == 3
    for name in (
        "modelserver_request_duration_seconds_bucket",
        'modelserver_workers_healthy{model="chat"} 2.0',
        "modelserver_breaker_state",
        "modelserver_in_flight",
    ):
        assert name in text


async def test_admin_lists_drains_adds_and_removes_workers(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    admin = stack.gateway.url + "/admin/workers"
    async with http.get(admin, headers=ADMIN) as response:
        workers = (await response.json())["workers"]
    assert {w["url"] for w in workers} == {s.url for s in [*stack.chat, *stack.embed]}
    assert {"status", "in_flight", "ewma_latency_s", "breaker", "requests", "errors"} <= set(
        workers[0]
    )

    drained = stack.chat[0].url
    async with http.post(admin + "/drain", json={"url": drained}, headers=ADMIN) as response:
        assert response.status == 200
    payload = orjson.dumps({"model": "chat", "prompt": "hi", "max_tokens": 2})
    for _ in range(4):
        async with http.post(stack.base_url + "/completions", data=payload, headers=AUTH) as r:
            assert r.headers["X-ModelServer-Worker"] != drained

    async with http.delete(admin, json={"url": drained}, headers=ADMIN) as response:
        assert response.status == 200
    async with http.post(admin, json={"model": "chat", "url": drained}, headers=ADMIN) as response:
        assert response.status == 200
    async with http.post(admin, json={"model": "chat", "url": drained}, headers=ADMIN) as response:
        assert response.status == 400  # already there
    async with http.delete(admin, json={"url": "http://127.0.0.1:1"}, headers=ADMIN) as response:
        assert response.status == 404
        assert_openai_error(await response.json())


async def test_a_worker_added_with_an_engine_key_gets_requests_carrying_that_key() -> None:
    seen: dict[str, str | None] = {}

    def engine(request: MockRequest) -> MockResponse:
        if request.method == "POST":
            seen[request.worker] = request.headers.get("authorization")
        return MockResponse(json={"choices": [{"text": "ok"}]})

    first, added = "http://127.0.0.1:9", "http://127.0.0.1:10"
    router = Router.from_mapping({"m": [first]}, transport=MockTransport(engine))
    config = GatewayConfig(api_keys=[API_KEY], admin_keys=[ADMIN_KEY])
    async with (
        GatewayServer(router, config, port=0, environ={}) as gateway,
        aiohttp.ClientSession() as http,
    ):
        admin = gateway.url + "/admin/workers"
        for junk in ("", "two words", "line\r\nX-Injected: 1", 7):
            body = {"model": "m", "url": added, "api_key": junk}
            async with http.post(admin, json=body, headers=ADMIN) as response:
                assert response.status == 400, junk
                assert (await response.json())["error"]["param"] == "api_key"
        body = {"model": "m", "url": added, "api_key": "sk-engine-added"}
        async with http.post(admin, json=body, headers=ADMIN) as response:
            assert response.status == 200
            assert "sk-engine-added" not in await response.text()
        async with http.post(admin + "/drain", json={"url": first}, headers=ADMIN) as response:
            assert response.status == 200
        payload = orjson.dumps({"model": "m", "prompt": "hi"})
        async with http.post(gateway.url + "/v1/completions", data=payload, headers=AUTH) as r:
            assert r.status == 200
            assert r.headers["X-ModelServer-Worker"] == added
    assert seen == {added: "Bearer sk-engine-added"}


async def test_every_v1_and_admin_route_refuses_without_the_right_key(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    # Walks the route table, so a route added later cannot be forgotten.
    checked = 0
    for route in stack.gateway.app.router.routes():
        path = route.resource.canonical if route.resource else ""
        if not path.startswith(("/v1", "/admin")) or route.method == "HEAD":
            continue
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": API_KEY}):
            async with http.request(route.method, stack.gateway.url + path, headers=headers) as r:
                assert r.status == 401, (route.method, path, headers)
                assert_openai_error(await r.json(), "authentication_error")
        if path.startswith("/admin"):  # an API key is not an admin key
            async with http.request(route.method, stack.gateway.url + path, headers=AUTH) as r:
                assert r.status == 401, (route.method, path)
        checked += 1
    assert checked >= 9


async def test_unknown_route_and_wrong_method_answer_in_openai_shape(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    async with http.get(stack.base_url + "/chat/completions", headers=AUTH) as response:
        assert response.status == 405
        assert_openai_error(await response.json())
    async with http.get(stack.gateway.url + "/nope") as response:
        assert response.status == 404
        assert_openai_error(await response.json())


async def test_bodies_reach_the_engine_unchanged_including_unknown_fields() -> None:
    seen: list[MockRequest] = []

    def engine(request: MockRequest) -> MockResponse:
        seen.append(request)
        return MockResponse(json={"choices": [{"text": "ok"}], "usage": {"completion_tokens": 1}})

    router = Router.from_mapping({"m": ["http://127.0.0.1:9"]}, transport=MockTransport(engine))
    raw = b'{"model":"m","prompt":"hi","x_custom":{"keep":[1,2,3]},"top_k":  7}'
    async with (
        GatewayServer(router, port=0, environ={}) as gateway,
        aiohttp.ClientSession() as http,
    ):
        status, _ = await post(http, gateway.url + "/v1/completions", raw, {})
    assert status == 200
    posts = [r for r in seen if r.method == "POST"]
    assert [r.body for r in posts] == [raw]


async def test_caller_leaving_a_stream_cancels_the_engine_request_and_frees_the_slot() -> None:
    # At speed 1 the engine needs minutes for 20,000 tokens: the slot and the engine's running
    # request can only come back this soon if the gateway cancelled the engine request.
    payload = orjson.dumps(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "go"}],
            "max_tokens": 20_000,
            "stream": True,
        }
    )
    async with SimServer(SimConfig(model="m", speed=1.0)) as sim:
        router = Router.from_mapping({"m": [sim.url]})
        async with GatewayServer(router, port=0, environ={}) as gateway:
            async with aiohttp.ClientSession() as http:
                response = await http.post(gateway.url + "/v1/chat/completions", data=payload)
                await response.content.readline()
                assert len(sim.engine.running) == 1
                response.close()
            await wait_until(
                lambda: router.workers()[0].in_flight == 0, "the router's in-flight count at 0"
            )
            await wait_until(lambda: not sim.engine.running, "the engine request aborted")


def test_open_gateway_refuses_to_bind_beyond_loopback() -> None:
    keys = KeyRing.from_config(GatewayConfig(), environ={})
    keys.check_bind("127.0.0.1")
    keys.check_bind("::1")
    with pytest.raises(GatewayConfigError, match="loopback"):
        keys.check_bind("0.0.0.0")
    KeyRing.from_config(GatewayConfig(), environ={"MODELSERVER_API_KEYS": "a, b"}).check_bind(
        "0.0.0.0"
    )


def test_keys_from_environment_and_never_in_the_description() -> None:
    keys = KeyRing.from_config(
        GatewayConfig(api_keys=["file-key"]),
        environ={
            "MODELSERVER_API_KEYS": "env-key-1,env-key-2",
            "MODELSERVER_ADMIN_KEYS": "adm-secret-9",
        },
    )
    for key in ("file-key", "env-key-1", "env-key-2"):
        assert keys.allows_api(f"Bearer {key}")
    assert keys.allows_admin("Bearer adm-secret-9") and not keys.allows_admin("Bearer file-key")
    assert not keys.allows_api("Basic file-key") and not keys.allows_api(None)
    description = keys.describe()
    assert all(k not in description for k in ("file-key", "env-key-1", "adm-secret-9"))


async def test_a_caller_that_stalls_mid_body_gets_408_and_frees_the_handler() -> None:
    router = Router.from_mapping({"m": ["http://127.0.0.1:9"]})
    config = GatewayConfig(body_timeout_s=0.2)
    async with GatewayServer(router, config, port=0, environ={}) as gateway:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"model": '
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readline(), 30)
        writer.close()
    assert head.startswith(b"HTTP/1.1 408")


async def test_every_attempt_failing_is_502_and_a_passed_deadline_is_504() -> None:
    def broken(request: MockRequest) -> MockResponse:
        return MockResponse(status=500, json={"error": {"message": "boom"}})

    urls = ["http://127.0.0.1:9", "http://127.0.0.1:10"]
    router = Router.from_mapping({"m": urls}, transport=MockTransport(broken))
    payload = orjson.dumps({"model": "m", "prompt": "hi"})
    async with (
        GatewayServer(router, port=0, environ={}) as gateway,
        aiohttp.ClientSession() as http,
    ):
        status, body = await post(http, gateway.url + "/v1/completions", payload, {})
    assert status == 502
    assert_openai_error(body)
    assert "attempts failed" in body["error"]["message"]

    clock = FakeClock()

    def slow(request: MockRequest) -> MockResponse:
        if request.method == "GET":  # health probes pass: the workers look fine
            return MockResponse(body=b"ok")
        clock.advance(1.0)  # each attempt takes a second of the router's clock
        raise WorkerTimeout(request.worker, "no answer")

    # The deadline passes after 3 of the 32 attempts allowed (a 1 ms deadline on the real
    # clock raced the mock's attempts, which can all fail within it).
    config = RouterConfig(request_timeout_s=2.5, max_attempts=32)
    router = Router.from_mapping(
        {"m": urls}, transport=MockTransport(slow), config=config, clock=clock
    )
    async with (
        GatewayServer(router, port=0, environ={}) as gateway,
        aiohttp.ClientSession() as http,
    ):
        status, body = await post(http, gateway.url + "/v1/completions", payload, {})
    assert status == 504
    assert_openai_error(body)


async def test_a_request_reaching_a_closed_router_is_503_shutting_down() -> None:
    def answer(request: MockRequest) -> MockResponse:
        return MockResponse(json={"choices": [{"text": "hi"}]})

    router = Router.from_mapping({"m": ["http://127.0.0.1:9"]}, transport=MockTransport(answer))
    payload = orjson.dumps({"model": "m", "prompt": "hi"})
    async with (
        GatewayServer(router, port=0, environ={}) as gateway,
        aiohttp.ClientSession() as http,
    ):
        await router.close()  # what a shutdown does under requests still arriving
        status, body = await post(http, gateway.url + "/v1/completions", payload, {})
    assert status == 503
    assert_openai_error(body)
    assert body["error"]["code"] == "shutting_down"
