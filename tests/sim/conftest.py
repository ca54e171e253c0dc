"""Fixtures: in-process simulated engines (stopped after each test) and an HTTP session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from modelserver.sim import SimConfig, SimServer

StartSim = Callable[..., Awaitable[SimServer]]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@pytest.fixture
async def start_sim() -> AsyncIterator[StartSim]:
    """Start a SimServer on a free port; every one started is stopped at the end."""
    servers: list[SimServer] = []

    async def start(**fields: Any) -> SimServer:
        config = SimConfig(**{"model": "llama", "speed": 50.0, **fields})
        server = SimServer(config)
        servers.append(server)
        await server.start()
        return server

    yield start
    for server in servers:
        await server.stop()
