"""Real processes for the resume tests: simulated engines started as `modelserver sim`
processes, a TCP proxy that can reset its connections, and the faults the tests inject
after a stream's 5th chunk (SIGKILL, `hang`, connection reset).

Every process and socket a helper starts is stopped by the context manager that started
it, whatever the test does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai

from modelserver.gateway import GatewayServer
from modelserver.netinfo import free_port_range
from modelserver.routing import Router
from modelserver.routing.events import ResumeRecord, RouterObserver

MODEL = "llama"
SLOW = 0.05  # about 140 ms a token
FAST = 100.0
MAX_TOKENS = 60
MESSAGES = [
    {"role": "system", "content": "You are a storyteller."},
    {"role": "user", "content": "Tell me a long story about the sea and a lighthouse."},
]
FAULTS = ("kill", "hang", "reset")


@dataclass
class SimProcess:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _spawn(log: Path, port: int, speed: float) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "modelserver", "sim", "--port", str(port),
             "--model", MODEL, "--speed", str(speed)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


async def start_sim(log_dir: Path, name: str, speed: float) -> SimProcess:
    port = free_port_range()
    log = log_dir / f"{name}.log"
    process = _spawn(log, port, speed)
    sim = SimProcess(process, f"http://127.0.0.1:{port}", log)
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(600):  # the process answers /health once it listens
                assert process.poll() is None, log.read_text(errors="replace")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(sim.url + "/health") as response:
                        if response.status == 200:
                            return sim
                await asyncio.sleep(0.05)
        raise AssertionError(f"{name} never answered /health: {log.read_text()}")
    except BaseException:
        sim.stop()
        raise


@contextlib.asynccontextmanager
async def slow_and_fast_sims(log_dir: Path) -> AsyncIterator[tuple[SimProcess, SimProcess]]:
    """Two replicas of one model: a slow one a stream starts on, a fast one to resume on."""
    started: list[SimProcess] = []
    try:
        started.append(await start_sim(log_dir, "slow", SLOW))
        started.append(await start_sim(log_dir, "fast", FAST))
        yield started[0], started[1]
    finally:
        for sim in started:
            sim.stop()


@contextlib.asynccontextmanager
async def sdk_through_gateway(
    router: Router,
) -> AsyncIterator[tuple[GatewayServer, openai.AsyncOpenAI]]:
    """An open gateway on a real socket in front of `router`, and the `openai` SDK pointed at
    it (no retries of its own: a failure the gateway passes on reaches the test)."""
    async with (
        GatewayServer(router, port=0, environ={}) as gateway,
        openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0) as sdk,
    ):
        yield gateway, sdk


class ResettingProxy:
    """A TCP proxy on 127.0.0.1 in front of one engine; `reset()` ends every connection
    with a TCP reset (SO_LINGER 0), as a crashed host or a middlebox would.

    `hold_after`: pass on only the first that many SSE events of each answer and hold the
    rest back, so that a fault injected after them lands mid-stream however fast the
    engine is (a tiny model on llama.cpp may have sent its whole answer by then)."""

    def __init__(self, target_port: int, hold_after: int | None = None) -> None:
        self._target_port = target_port
        self._hold_after = hold_after
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.url = ""

    async def __aenter__(self) -> ResettingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.reset()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def reset(self) -> None:
        for writer in self._writers:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        self._writers += [writer, up_writer]
        pipes = [
            asyncio.ensure_future(_pipe(reader, up_writer)),
            asyncio.ensure_future(_pipe(up_reader, writer, self._hold_after)),
        ]
        self._tasks.update(pipes)
        try:
            await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            self._tasks.difference_update(pipes)


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, events: int | None = None
) -> None:
    """Copy until the end; with `events`, stop passing bytes on after that many blank-line
    event ends (the rest is read and dropped)."""
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            if events is not None:
                cut = 0
                while events > 0 and (end := data.find(b"\n\n", cut)) >= 0:
                    cut, events = end + 2, events - 1
                data = data if events > 0 else data[:cut]
                if events == 0:
                    events = -1  # from now on nothing passes
                elif events < 0:
                    data = b""
            if data:
                writer.write(data)
                await writer.drain()
    writer.close()


async def set_faults(url: str, spec: str) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(url + "/sim/faults", json={"spec": spec}) as response,
    ):
        assert response.status == 200, await response.text()


async def inject(fault: str, slow: SimProcess, proxy: ResettingProxy) -> None:
    """The fault, on the engine serving the stream."""
    if fault == "kill":
        slow.kill()
    elif fault == "hang":
        await set_faults(slow.url, "hang")
    else:
        proxy.reset()


async def unbroken_answer(url: str, **extra: Any) -> dict[str, Any]:
    """The answer to the same request with no fault, from a replica of the model."""
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": MAX_TOKENS, **extra}
    async with (
        aiohttp.ClientSession() as http,
        http.post(url + "/v1/chat/completions", json=body) as response,
    ):
        assert response.status == 200, await response.text()
        answer: dict[str, Any] = await response.json()
        return answer


class Resumes(RouterObserver):
    def __init__(self) -> None:
        self.records: list[ResumeRecord] = []

    def on_resume(self, record: ResumeRecord) -> None:
        self.records.append(record)
