"""Health probing and the launcher's state files, and the HTTP transport the probes and the
requests share (split from router.py; `Router` inherits them, so the names are `Router`'s)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, cast

from modelserver.errors import ClientClosed
from modelserver.routing.discovery import Discovery
from modelserver.routing.health import LaunchedWorker, probe_round, read_launched_workers
from modelserver.routing.speed_probe import SpeedSample, probe_speed
from modelserver.routing.transport import AiohttpTransport, Transport
from modelserver.routing.verdicts import Verdicts
from modelserver.routing.worker import Worker

if TYPE_CHECKING:
    from modelserver.routing.router import Router

log = logging.getLogger("modelserver.routing.router")


class Probing(Verdicts):
    """Probes every worker's health endpoint and reads the launcher's state files, each on
    its own beat, once `start()` is called."""

    _transport: Transport | None
    _sleep: Callable[[float], Awaitable[None]]
    _probe_task: asyncio.Task[None] | None
    _state_task: asyncio.Task[None] | None
    _discovery: Discovery | None
    _discovery_task: asyncio.Task[None] | None
    _added_by_launcher: set[str]
    _closing: asyncio.Future[None] | None

    @property
    def state_dir(self) -> Path | None:
        """Where the launcher's state files are read and `availability.json` is written."""
        return self._availability.state_dir

    @state_dir.setter
    def state_dir(self, value: Path | None) -> None:
        self._availability.state_dir = value

    @property
    def transport(self) -> Transport:
        if self._closing is not None:
            raise ClientClosed("the router is closed")
        if self._transport is None:
            # Created lazily: aiohttp binds its session to the running event loop.
            self._transport = AiohttpTransport(self.config.connect_timeout_s)
        return self._transport

    async def start(self) -> None:
        """Probe every worker now, then every `[router.health] interval_s` in the background."""
        if self._closing is not None:
            raise ClientClosed("the router is closed; it cannot start again")
        if self._probe_task is None:
            if self._discovery is not None:
                router = cast("Router", self)  # Probing is only ever a Router's base
                await self._discovery.refresh(router)
                self._discovery_task = asyncio.create_task(
                    self._discovery.run(router), name="router-discovery"
                )
            await self.probe_once()
            await self.policy.prepare(list(self._by_url.values()), self._probe_speed)
            self._probe_task = asyncio.create_task(self._probe_loop(), name="router-probes")
            if self.state_dir is not None:
                self._state_task = asyncio.create_task(
                    self._state_loop(), name="router-state-files"
                )

    async def _probe_speed(self, worker: Worker) -> SpeedSample | None:
        """One short streamed generation on `worker` (`Policy.prepare` asks for it)."""
        tokens = self.config.expected_completion.speed_probe_tokens
        return await probe_speed(
            worker, self.transport, self._headers[worker.url], self._clock, tokens
        )

    async def _state_loop(self) -> None:
        """The launcher's state files on their own beat, not after each probe round: a round
        lasts up to the probe timeout when a worker hangs, and what the launcher already
        knows (a worker it saw die) must not wait for that."""
        while True:
            await self._sleep(self.config.health.interval_s)
            try:
                self.apply_state_files()
            except Exception:  # must never kill the loop
                log.exception("reading the launcher's state files failed")

    async def _probe_loop(self) -> None:
        while True:
            await self._sleep(self.config.health.interval_s)
            try:
                await self.probe_once()
            except Exception:  # a probe round must never kill the loop
                log.exception("health probe round failed")

    async def probe_once(self) -> None:
        """One round: read the launcher's state files, GET the health endpoint of every
        worker concurrently (short timeout), update each worker's probe health."""
        self.apply_state_files()
        await probe_round(
            list(self._by_url.values()), self.transport, self.config.health, self._headers
        )
        await self.admission.learn_caps(list(self._by_url.values()), self.transport, self._headers)

    def apply_state_files(self) -> None:
        """Take workers the launcher reports not ready (failed, stopped, draining, ...) out of
        rotation, and back when it reports them ready again; route to the replicas `up` added
        to a model this router serves, and stop routing to those it added once they are gone
        from the state files (reads `{state_dir}/state-*.json`; absent files change
        nothing)."""
        if self.state_dir is None:
            return
        launched = read_launched_workers(self.state_dir)
        self._follow_added_replicas(launched)
        for url, worker in self._by_url.items():
            record = launched.get(url)
            status = record.status if record is not None else None
            if status == "ready" and worker.launcher_status not in (None, "ready"):
                # The launcher just saw it pass its readiness probe (restarted, or replaced
                # by `up`): back now, not after `success_threshold` probes of our own, which
                # failed while it was down (`up` drains the next replica once it is back).
                worker.probe_healthy = True
                worker.probe_failures = 0
            worker.launcher_status = status

    def _follow_added_replicas(self, launched: Mapping[str, LaunchedWorker]) -> None:
        """A replica `up` added to a running fleet is routed to without restarting the
        gateway: it is in the state file, of a model this router serves with the same kind
        (its engine key and backend are its siblings'). A model new to the file is not: its
        key is not in any state file, so serving it takes the gateway started anew."""
        for url, record in launched.items():
            siblings = self._models.get(record.model)
            if url in self._by_url or not siblings or self._kinds[record.model] != record.kind:
                continue
            self.add_worker(record.model, url, record.kind, name=record.name,
                            backend=siblings[0].backend)
            self._added_by_launcher.add(url)
        for url in [u for u in self._added_by_launcher if u not in launched]:
            self._added_by_launcher.discard(url)
            if url in self._by_url:
                self.remove_worker(url)  # requests in flight there finish normally
