"""Running the gateway: in-process for tests and the demo, or as `modelserver gateway`."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from modelserver.config import Fleet, GatewayConfig
from modelserver.gateway.app import build_app
from modelserver.gateway.auth import KeyRing
from modelserver.routing.router import Router

log = logging.getLogger(__name__)


class GatewayServer:
    """The gateway on a real socket: `async with GatewayServer(router, config) as gw: gw.url`.

    The router is started (health probing) and closed with the server unless
    `own_router=False`. `port=0` picks a free port.
    """

    def __init__(
        self,
        router: Router,
        config: GatewayConfig | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        environ: Mapping[str, str] | None = None,
        own_router: bool = True,
    ) -> None:
        self.config = config or GatewayConfig()
        self.host = host if host is not None else self.config.host
        self.port = port if port is not None else self.config.port
        self.keys = KeyRing.from_config(self.config, environ)
        self.keys.check_bind(self.host)
        self.router = router
        self.app = build_app(router, self.config, self.keys)
        self._own_router = own_router
        self._runner: web.AppRunner | None = None

    @classmethod
    def from_fleet(cls, fleet: Fleet, **kwargs: Any) -> GatewayServer:
        return cls(Router.from_fleet(fleet), fleet.gateway, **kwargs)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        if self._own_router:
            await self.router.start()
        # access_log=None: the default access log is replaced by nothing that could carry
        # a header; keys never reach a log line.
        # lingering_time: after answering a request whose body never fully came (408, 413),
        # aiohttp keeps reading for this long so the answer is not lost to a reset; 10 s by
        # default, which lets stalled callers hold connections (and shutdown) that long.
        # handler_cancellation: a caller that leaves cancels its handler, so a request it
        # left waiting in the router's queue gives its place up at once (routing/admission.py)
        # and one already at an engine is stopped there too.
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            lingering_time=1.0,
            handler_cancellation=True,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
        await site.start()
        if self.port == 0:
            server = site._server
            assert isinstance(server, asyncio.base_events.Server)
            self.port = server.sockets[0].getsockname()[1]
        log.info("gateway on %s, auth: %s", self.url, self.keys.describe())

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._own_router:
            await self.router.close()

    async def __aenter__(self) -> GatewayServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve_until_signalled(server: GatewayServer) -> None:
    """Run until SIGINT or SIGTERM, then stop cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()
