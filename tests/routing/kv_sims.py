"""Simulated engines publishing KV-cache events, and a router subscribed to them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp

from modelserver.config import RouterConfig
from modelserver.routing import Router, WorkerEntry
from modelserver.routing.policies.expected_completion import ExpectedCompletionPolicy
from modelserver.sim import SimConfig, SimServer

# `tcp://*:*`: SGLang's publisher binds a wildcard endpoint; ZMQ picks a free port.
EVENTS = '{"publisher": "zmq", "endpoint": "tcp://*:*", "replay_endpoint": "tcp://*:*"}'


def events_sim(speed: float = 100.0, events: str = EVENTS, **fields: Any) -> SimConfig:
    return SimConfig(model="m", speed=speed, kv_events_config=events, **fields)


@contextlib.asynccontextmanager
async def sims(*configs: SimConfig) -> AsyncIterator[list[SimServer]]:
    servers: list[SimServer] = []
    try:
        for config in configs:
            server = SimServer(config)
            servers.append(server)
            await server.start()
        yield servers
    finally:
        for server in servers:
            await server.stop()


def _local(endpoint: str | None) -> str:
    assert endpoint is not None
    return endpoint.replace("0.0.0.0", "127.0.0.1")


def subscribed_router(servers: list[SimServer], **config: Any) -> Router:
    """A router on `expected_completion`, told where each sim publishes (and replays)."""
    events: dict[str, Any] = {"enabled": True, "endpoints": {}, "replay_endpoints": {}}
    for server in servers:
        if server.kv_events is not None:
            events["endpoints"][server.url] = _local(server.kv_events.bound)
            if server.kv_events.bound_replay is not None:
                events["replay_endpoints"][server.url] = _local(server.kv_events.bound_replay)
    settings = RouterConfig.model_validate(
        {"policy": "expected_completion", "kv_events": events, **config}
    )
    return Router([WorkerEntry("m", s.url) for s in servers], config=settings)


def policy_of(router: Router) -> ExpectedCompletionPolicy:
    assert isinstance(router.policy, ExpectedCompletionPolicy)
    return router.policy


async def wait_until(condition: Callable[[], bool], what: str, polls: int = 3000) -> None:
    """Poll a condition every 10 ms; the bound is a safety net against a hang, not a
    timing assertion."""
    for _ in range(polls):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def chat_body(system: str, question: str, max_tokens: int = 8, **extra: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": question},
        ],
        "max_tokens": max_tokens,
        **extra,
    }


async def post_direct(server: SimServer, body: dict[str, Any]) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(server.url + "/v1/chat/completions", json=body) as answer,
    ):
        assert answer.status == 200
        data: dict[str, Any] = await answer.json()
        return data


def engine_pages(server: SimServer, tokens: list[int]) -> int:
    """Tokens of `tokens` the engine holds, in whole pages (what its events can say)."""
    page = server.config.page_size
    return server.engine.cache.match(tokens) // page * page
