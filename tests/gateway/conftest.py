"""A gateway on a real socket in front of simulated SGLang engines on real sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from modelserver.config import GatewayConfig, RouterConfig
from modelserver.gateway import GatewayServer
from modelserver.routing import Router
from modelserver.sim import SimConfig, SimServer

API_KEY = "sk-test-api-key-0001"
ADMIN_KEY = "sk-test-admin-key-0002"


@dataclass
class Stack:
    gateway: GatewayServer
    chat: list[SimServer]
    embed: list[SimServer]

    @property
    def base_url(self) -> str:
        return self.gateway.url + "/v1"


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    chat = [SimServer(SimConfig(model="chat", speed=200.0, seed=i)) for i in range(2)]
    embed = [SimServer(SimConfig(model="emb", kind="embedding", speed=200.0))]
    started: list[SimServer] = []
    try:
        for sim in [*chat, *embed]:
            await sim.__aenter__()
            started.append(sim)
        router = Router.from_mapping(
            {
                "chat": [s.url for s in chat],
                "emb": {"kind": "embedding", "urls": [s.url for s in embed]},
            },
            config=RouterConfig(policy="round_robin"),
        )
        config = GatewayConfig(api_keys=[API_KEY], admin_keys=[ADMIN_KEY])
        async with GatewayServer(router, config, port=0, environ={}) as gateway:
            yield Stack(gateway, chat, embed)
    finally:
        for sim in started:
            await sim.__aexit__(None, None, None)
