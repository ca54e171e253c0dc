"""A fleet of simulated engines, each a real `modelserver sim` process on a free local port.

Each engine starts in its own session (so stopping it stops everything it started) and is
always stopped: SIGTERM to its process group, a wait, then SIGKILL. A killed engine's port is
taken over by a `Tombstone` that counts the requests still sent to it. Between contenders
`reset()` brings every engine back to a cold, idle, fault-free state: dead ones restarted on
their port, faults cleared, prefix cache flushed, queue drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import orjson

from modelserver.bench.procs import spawn, stop_group
from modelserver.bench.tombstone import Tombstone
from modelserver.config import KvEventsConfig
from modelserver.errors import BenchError
from modelserver.netinfo import free_port_range

HOST = "127.0.0.1"


@dataclass(frozen=True)
class EngineSpec:
    """One simulated engine: how fast (relative to the calibrated GPU) and how big."""

    speed: float
    max_running: int | None = None
    cache_tokens: int | None = None
    gpu: str = "h100"
    """The GPU simulated (`modelserver sim --gpu`): its speed and, with the model, its pool."""
    model_size: str = "llama-3.1-8b"


def kv_events_config(port: int) -> str:
    """SGLang's `--kv-events-config` for an engine on `port`, at `[router.kv_events]`'s
    default port offsets."""
    rule = KvEventsConfig()
    return orjson.dumps(
        {
            "publisher": "zmq",
            "endpoint": f"tcp://*:{port + rule.events_port_offset}",
            "replay_endpoint": f"tcp://*:{port + rule.replay_port_offset}",
        }
    ).decode()


def free_port(host: str = HOST) -> int:
    return free_port_range(host=host)


@dataclass
class Engine:
    index: int
    spec: EngineSpec
    port: int
    process: subprocess.Popen[bytes] | None = None
    tombstone: Tombstone | None = None
    log: IO[bytes] | None = None
    dead_requests: int = 0
    """Generation requests counted by earlier tombstones on this port (this contender)."""

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def requests_to_dead(self) -> int:
        now = self.tombstone.generation_requests if self.tombstone else 0
        return self.dead_requests + now


@dataclass
class SimFleet:
    model: str
    specs: list[EngineSpec]
    kind: str = "chat"
    seed: int = 0
    log_dir: Path | None = None
    model_path: str | None = None
    """What the engines report as their model path (peers read it to find a tokenizer)."""
    ready_timeout_s: float = 60.0
    idle_timeout_s: float = 20.0
    """How long `reset` waits for an engine to drain before restarting it."""
    engines: list[Engine] = field(default_factory=list)
    _session: aiohttp.ClientSession | None = None

    @property
    def urls(self) -> list[str]:
        return [e.url for e in self.engines]

    def command(self, engine: Engine) -> list[str]:
        cmd = [
            sys.executable, "-m", "modelserver", "sim",
            "--host", HOST, "--port", str(engine.port), "--model", self.model,
            "--kind", self.kind, "--speed", f"{engine.spec.speed:g}",
            "--seed", str(self.seed + engine.index),
        ]
        if self.model_path is not None:
            cmd += ["--model-path", self.model_path]
        if engine.spec.max_running is not None:
            cmd += ["--max-running", str(engine.spec.max_running)]
        if engine.spec.cache_tokens is not None:
            cmd += ["--cache-tokens", str(engine.spec.cache_tokens)]
        cmd += ["--gpu", engine.spec.gpu, "--model-size", engine.spec.model_size]
        rule = KvEventsConfig()
        top = engine.port + max(rule.events_port_offset, rule.replay_port_offset)
        if self.kind == "chat" and top <= 65535:  # KV events where the router's rule looks
            cmd += ["--kv-events-config", kv_events_config(engine.port)]
        return cmd

    async def __aenter__(self) -> SimFleet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self.engines = [
            Engine(index=i, spec=spec, port=free_port()) for i, spec in enumerate(self.specs)
        ]
        try:
            for engine in self.engines:
                self._spawn(engine)
            await asyncio.gather(*(self._wait_ready(e) for e in self.engines))
        except BaseException:
            await self.stop()
            raise

    def _spawn(self, engine: Engine) -> None:
        log = self.log_dir / f"sim-{engine.index}.log" if self.log_dir is not None else None
        engine.process, engine.log = spawn(self.command(engine), log)

    async def _wait_ready(self, engine: Engine) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if engine.process is not None and engine.process.poll() is not None:
                raise BenchError(
                    f"simulated engine {engine.index} exited with {engine.process.returncode} "
                    f"before it was ready: {' '.join(self.command(engine))}"
                )
            try:
                async with self.http.get(f"{engine.url}/health") as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.1)
        raise BenchError(f"simulated engine {engine.index} not ready after "
                         f"{self.ready_timeout_s:.0f} s at {engine.url}")

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise BenchError("the simulated fleet is not started")
        return self._session

    async def stop(self) -> None:
        for engine in self.engines:
            await self._terminate(engine)
            if engine.tombstone is not None:
                await engine.tombstone.stop()
                engine.tombstone = None
            if engine.log is not None:
                engine.log.close()
                engine.log = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _terminate(self, engine: Engine, sig: int = signal.SIGTERM) -> None:
        proc = engine.process
        if proc is None:
            return
        await stop_group(proc, sig)
        engine.process = None

    # -- faults ---------------------------------------------------------------------------

    async def kill(self, index: int) -> None:
        """SIGKILL one engine (no goodbye), then count what is still sent to its port."""
        engine = self.engines[index]
        await self._terminate(engine, signal.SIGKILL)
        engine.tombstone = Tombstone(HOST, engine.port)
        for _ in range(50):  # the port may linger a moment after the kill
            try:
                await engine.tombstone.start()
                break
            except OSError:
                await asyncio.sleep(0.05)

    async def set_fault(self, index: int, spec: str) -> None:
        """Inject a fault at run time through the engine's `/sim/faults`."""
        url = f"{self.engines[index].url}/sim/faults"
        async with self.http.post(url, json={"spec": spec}) as resp:
            if resp.status != 200:
                raise BenchError(f"{url} refused fault {spec!r}: HTTP {resp.status} "
                                 f"{(await resp.text())[:200]}")

    # -- between contenders -----------------------------------------------------------------

    async def reset(self) -> None:
        """Every engine alive, fault-free, idle and with an empty prefix cache."""
        for engine in self.engines:
            engine.dead_requests = 0
            if engine.tombstone is not None:
                await engine.tombstone.stop()
                engine.tombstone = None
            if engine.alive:
                # First, so that a hung engine's /health answers again.
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, BenchError):
                    await self.set_fault(engine.index, "")
            else:
                await self._terminate(engine)
                if engine.log is not None:
                    engine.log.close()
                self._spawn(engine)
        await asyncio.gather(*(self._wait_ready(e) for e in self.engines))
        await asyncio.gather(*(self._reset_engine(e) for e in self.engines))

    async def _reset_engine(self, engine: Engine) -> None:
        """Clear faults, wait until idle, flush the cache; an engine that stays busy (a
        hang left requests inside) or refuses the flush is restarted instead: cold too."""
        await self.set_fault(engine.index, "")
        deadline = time.monotonic() + self.idle_timeout_s
        while time.monotonic() < deadline:
            state = await self.state(engine.index)
            if state is not None and not state.get("running") and not state.get("queued"):
                async with self.http.post(f"{engine.url}/flush_cache") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
        await self._terminate(engine)
        if engine.log is not None:
            engine.log.close()
        self._spawn(engine)
        await self._wait_ready(engine)

    async def state(self, index: int) -> dict[str, Any] | None:
        """The engine's own view (`/sim/state`), or None when it does not answer."""
        engine = self.engines[index]
        if not engine.alive:
            return None
        try:
            async with self.http.get(f"{engine.url}/sim/state",
                                     timeout=aiohttp.ClientTimeout(total=2)) as resp:
                if resp.status != 200:
                    return None
                data: dict[str, Any] = await resp.json()
                return data
        except (aiohttp.ClientError, TimeoutError):
            return None

    def requests_to_dead(self) -> int:
        return sum(e.requests_to_dead() for e in self.engines)
