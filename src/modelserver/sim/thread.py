"""A simulated engine on an event loop thread of its own, for synchronous callers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from modelserver.sim.config import SimConfig
from modelserver.sim.engine import Engine
from modelserver.sim.server import SimServer

T = TypeVar("T")


class SimThread:
    """A `SimServer` on its own event loop thread, for synchronous code and tests."""

    def __init__(self, config: SimConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config
        self._host = host
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: SimServer | None = None

    @property
    def server(self) -> SimServer:
        if self._server is None:
            raise RuntimeError("the simulated engine is not running")
        return self._server

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def engine(self) -> Engine:
        return self.server.engine

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def start(self) -> SimThread:
        self._thread.start()

        async def start() -> SimServer:
            server = SimServer(self.config, self._host, self._port)
            await server.start()
            return server

        try:
            self._server = self._call(start())
        except BaseException:
            self.stop()  # do not leave the loop thread behind
            raise
        return self

    def set_faults(self, spec: str) -> None:
        self._call(self.server.set_faults(spec))

    def stop(self) -> None:
        if self._server is not None:
            self._call(self._server.stop())
            self._server = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()

    def __enter__(self) -> SimThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
