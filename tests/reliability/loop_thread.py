"""Simulated engines and a gateway on an event loop thread of their own, for synchronous tests
(schemathesis sends its requests with `requests`, which blocks)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from modelserver.config import GatewayConfig, RouterConfig
from modelserver.gateway import GatewayServer
from modelserver.routing import Router
from modelserver.sim import SimConfig, SimServer

T = TypeVar("T")

API_KEY = "sk-reliability-api-key"
ADMIN_KEY = "sk-reliability-admin-key"


class GatewayThread:
    """Two chat sims, one embedding sim and a gateway with keys, on a background loop.

    `with GatewayThread() as stack: stack.url`; `stack.call(coro)` runs a coroutine there
    (to read the router's counters, say)."""

    def __init__(self, router_config: RouterConfig | None = None) -> None:
        self._router_config = router_config or RouterConfig(
            policy="round_robin", attempt_timeout_s=5.0, request_timeout_s=10.0
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.sims: list[SimServer] = []
        self.gateway: GatewayServer | None = None

    @property
    def url(self) -> str:
        assert self.gateway is not None
        return self.gateway.url

    @property
    def router(self) -> Router:
        assert self.gateway is not None
        return self.gateway.router

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def __enter__(self) -> GatewayThread:
        self._thread.start()
        try:
            self.call(self._start())
        except BaseException:
            self.__exit__()
            raise
        return self

    async def _start(self) -> None:
        configs = [
            SimConfig(model="chat", speed=500.0, seed=0),
            SimConfig(model="chat", speed=500.0, seed=1),
            SimConfig(model="emb", kind="embedding", speed=500.0),
        ]
        for config in configs:
            sim = SimServer(config)
            await sim.start()
            self.sims.append(sim)
        router = Router.from_mapping(
            {
                "chat": [s.url for s in self.sims[:2]],
                "emb": {"kind": "embedding", "urls": [self.sims[2].url]},
            },
            config=self._router_config,
        )
        keys = GatewayConfig(api_keys=[API_KEY], admin_keys=[ADMIN_KEY])
        self.gateway = GatewayServer(router, keys, port=0, environ={})
        await self.gateway.start()

    async def _stop(self) -> None:
        if self.gateway is not None:
            await self.gateway.stop()
        for sim in self.sims:
            await sim.stop()

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self.call(self._stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()
