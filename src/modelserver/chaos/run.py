"""A chaos run on a fleet that is already up: traffic through the client and the gateway,
actions from the controller, the launcher's state file watched, figures at the end."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import aiohttp

from modelserver.chaos.controller import ChaosController
from modelserver.chaos.figures import ChaosFigures, compute_figures
from modelserver.chaos.load import ClientSender, GatewaySender, LoadSettings, run_load
from modelserver.chaos.schedule import Chaos, ChaosSettings
from modelserver.chaos.timeline import AttemptRecorder, StateWatcher, Timeline
from modelserver.client import AsyncModelServer
from modelserver.config import Fleet
from modelserver.errors import ModelServerError
from modelserver.gateway.server import GatewayServer
from modelserver.launcher.state import state_path
from modelserver.routing.router import Router


@dataclass(frozen=True)
class ChaosOptions:
    duration_s: float = 30.0
    """Traffic runs this long."""
    quiet_tail_s: float = 5.0
    """No new action in the last seconds of the run, so restarts finish under traffic."""
    seed: int = 8
    model: str | None = None
    """The chat model to load (default: the fleet's first chat model)."""
    host: str | None = None
    """The fleet host whose workers are broken (default: the only one)."""
    load: LoadSettings = field(default_factory=LoadSettings)
    chaos: ChaosSettings = field(default_factory=ChaosSettings)
    ready_timeout_s: float = 60.0


async def run_chaos(fleet: Fleet, options: ChaosOptions) -> tuple[Timeline, ChaosFigures]:
    host = options.host or fleet.hosts[0].name
    model = options.model or next(m.name for m in fleet.models if m.kind == "chat")
    timeline = Timeline()
    watcher = StateWatcher(state_path(fleet, host), timeline)
    await _wait_all_ready(watcher, fleet, host, options.ready_timeout_s)

    client = AsyncModelServer(fleet)
    client.router.add_observer(AttemptRecorder(timeline, "client"))
    gateway_router = Router.from_fleet(fleet, observers=[AttemptRecorder(timeline, "gateway")])
    gateway = GatewayServer(gateway_router, fleet.gateway, host="127.0.0.1", port=0, environ={})
    watching = asyncio.create_task(watcher.run())
    try:
        async with client, gateway, aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=fleet.router.request_timeout_s + 30)
        ) as session:
            await client.router.start()
            controller = ChaosController(
                fleet, host, Chaos(options.chaos, options.seed), watcher, timeline, session
            )
            timeline.started = time.time()
            until = timeline.started + options.duration_s
            loads = [
                run_load(ClientSender(client, model, timeline, options.load),
                         options.load, until, options.seed),
                run_load(GatewaySender(session, gateway.url, model, timeline, options.load),
                         options.load, until, options.seed + 1),
            ]
            acting = asyncio.create_task(controller.run(until - options.quiet_tail_s))
            try:
                await asyncio.gather(*loads)
            finally:
                acting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await acting
                await controller.clear_all()
            timeline.ended = time.time()
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
    return timeline, compute_figures(timeline)


async def _wait_all_ready(watcher: StateWatcher, fleet: Fleet, host: str, limit_s: float) -> None:
    urls = {w.url for w in fleet.workers(host)}
    deadline = time.monotonic() + limit_s
    while True:
        watcher.read_once()
        if all(watcher.current.get(u, {}).get("status") == "ready" for u in urls):
            return
        if time.monotonic() > deadline:
            raise ModelServerError(
                f"chaos: the workers of {host!r} were not all ready within {limit_s:g} s"
                f" (state file {watcher.path})"
            )
        await asyncio.sleep(0.1)
