"""Traffic for a chaos run: chat requests through the client library and through the
gateway, each recorded with its send time, the worker that served it and its outcome."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import orjson

from modelserver.chaos.timeline import RequestRecord, Timeline
from modelserver.client import AsyncModelServer
from modelserver.errors import RequestError

WORKER_HEADER = "X-ModelServer-Worker"
FAILURE_PAUSE_S = 0.05
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
         "juliet", "kilo", "lima")


@dataclass(frozen=True)
class LoadSettings:
    concurrency: int = 8
    """Requests in flight at once, per path."""
    rate_per_s: float | None = None
    """Requests started per second, per path (None: as fast as `concurrency` allows)."""
    max_tokens: int = 8
    stream_every: int = 0
    """Every n-th client request is streamed (0: none). Streams are counted apart (path
    `client-stream`): one cut after its first piece cannot fail over, by design."""


class Sender(Protocol):
    """Sends one request and records it in the timeline."""

    async def __call__(self, prompt: str) -> bool:
        """Send one request; True if it succeeded."""
        ...


def _prompt(rng: random.Random, index: int) -> str:
    return f"request {index}: " + " ".join(rng.choice(WORDS) for _ in range(24))


async def _paced(send: Sender, settings: LoadSettings, until: float, seed: int) -> None:
    rng = random.Random(seed)
    counter = iter(range(10**9))
    gap = settings.concurrency / settings.rate_per_s if settings.rate_per_s else 0.0

    async def lane(offset: float) -> None:
        next_at = time.monotonic() + offset
        while time.time() < until:
            if gap:
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                next_at += gap
            if not await send(_prompt(rng, next(counter))):
                # As a caller would pause before trying again; also keeps a run of instant
                # failures from flooding the record.
                await asyncio.sleep(FAILURE_PAUSE_S)

    lanes = settings.concurrency
    await asyncio.gather(*(lane(i * gap / lanes) for i in range(lanes)))


class ClientSender:
    def __init__(
        self, server: AsyncModelServer, model: str, timeline: Timeline, settings: LoadSettings
    ) -> None:
        self._server, self._model, self._timeline, self._settings = (
            server, model, timeline, settings
        )
        self._count = 0

    async def __call__(self, prompt: str) -> bool:
        self._count += 1
        every = self._settings.stream_every
        if every and self._count % every == 0:
            return await self._stream(prompt)
        sent = time.time()
        try:
            done = await self._server.chat(
                self._model, prompt, max_tokens=self._settings.max_tokens
            )
        except RequestError as exc:
            self._timeline.requests.append(
                RequestRecord(sent, "client", None, False, str(exc)[:300], time.time() - sent)
            )
            return False
        self._timeline.requests.append(
            RequestRecord(sent, "client", done.worker_url, True, None, time.time() - sent)
        )
        return True

    async def _stream(self, prompt: str) -> bool:
        sent = time.time()
        error: str | None = None
        try:
            pieces = [p async for p in self._server.stream(
                self._model, prompt, max_tokens=self._settings.max_tokens
            )]
            if not pieces:
                error = "an empty stream"
        except RequestError as exc:
            error = str(exc)[:300]
        self._timeline.requests.append(
            RequestRecord(sent, "client-stream", None, error is None, error, time.time() - sent)
        )
        return error is None


class GatewaySender:
    def __init__(
        self, session: aiohttp.ClientSession, url: str, model: str, timeline: Timeline,
        settings: LoadSettings,
    ) -> None:
        self._session, self._url, self._model, self._timeline, self._settings = (
            session, url, model, timeline, settings
        )

    async def __call__(self, prompt: str) -> bool:
        body = {
            "model": self._model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": self._settings.max_tokens,
        }
        sent = time.time()
        worker: str | None = None
        error: str | None = None
        try:
            async with self._session.post(
                self._url + "/v1/chat/completions", data=orjson.dumps(body),
                headers={"Content-Type": "application/json"},
            ) as response:
                data = await response.read()
                worker = response.headers.get(WORKER_HEADER)
                if response.status != 200:
                    error = f"HTTP {response.status}: {data[:300].decode(errors='replace')}"
                elif not orjson.loads(data).get("choices"):
                    error = f"no choices in {data[:200]!r}"
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        self._timeline.requests.append(
            RequestRecord(sent, "gateway", worker, error is None, error, time.time() - sent)
        )
        return error is None


async def run_load(sender: Sender, settings: LoadSettings, until: float, seed: int) -> None:
    """Send requests through `sender` until the wall clock reaches `until`."""
    await _paced(sender, settings, until, seed)
