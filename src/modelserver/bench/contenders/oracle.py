"""The oracle: routing with the engines' true state, the limit of what a router can do.

For every request it asks each simulated engine what it really holds (`GET /sim/state`: its
running and queued requests, its speed) and what the request would find in its prefix
cache (`POST /sim/match`, no side effects), then sends the request to the engine with the
lowest estimated cost under the engine's own performance model
(`modelserver.sim.perf.PerfModel`): the request's completion time

    prefill of the uncached tokens
    + wait for a batch slot, when the engine is full (a share of one request's decode)
    + max_tokens decode steps at the batch size the request will join,

plus the delay its prefill adds to every request already running there (a prefill step
stalls the whole batch's decoding; without this term the oracle would ignore the cache,
since one prefill is short beside a request's decode, and lose the fleet's throughput).

Load is the larger of what the engine reports and what the oracle itself has in flight
there (requests sent within the last milliseconds may not have reached the engine yet).
An engine that does not answer is skipped; a failed request is retried on the next best.
Its own look-ups cost engine time and client CPU: it is a bound, not a product.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import aiohttp
import orjson

from modelserver.bench.contenders.base import Contender, Target
from modelserver.bench.openai_http import chat_body, client_session, post_chat, post_embedding
from modelserver.bench.outcome import Outcome
from modelserver.sim.perf import DEFAULT_MAX_RUNNING, PerfModel

ATTEMPTS = 3


def estimate_completion_s(
    speed: float,
    load: int,
    max_running: int,
    prompt_tokens: int,
    cached_tokens: int,
    max_tokens: int,
) -> float:
    """Seconds the request would take on an engine in this state."""
    perf = PerfModel(speed)
    batch = min(load + 1, max_running)
    prefill = perf.prefill_time(max(prompt_tokens - cached_tokens, 1), prompt_tokens)
    decode = max_tokens * perf.decode_time(batch, batch * (prompt_tokens + max_tokens // 2))
    over = load + 1 - max_running
    wait = (over / max_running) * decode if over > 0 else 0.0
    return prefill + wait + decode


def routing_cost_s(
    speed: float,
    load: int,
    max_running: int,
    prompt_tokens: int,
    cached_tokens: int,
    max_tokens: int,
) -> float:
    """Completion time plus the stall the request's prefill imposes on the running batch."""
    perf = PerfModel(speed)
    prefill = perf.prefill_time(max(prompt_tokens - cached_tokens, 1), prompt_tokens)
    own = estimate_completion_s(speed, load, max_running, prompt_tokens, cached_tokens,
                                max_tokens)
    return own + prefill * min(load, max_running)


class OracleContender(Contender):
    family = "oracle"
    name = "oracle"

    def __init__(self, max_running: dict[str, int] | None = None) -> None:
        self._max_running = max_running or {}
        self._target: Target | None = None
        self._session: aiohttp.ClientSession | None = None
        self._inflight: Counter[str] = Counter()

    async def start(self, target: Target) -> None:
        self._target = target
        self._session = client_session()

    async def _look(self, url: str, body: bytes) -> tuple[str, dict[str, Any], dict[str, Any]]:
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(total=2.0)
        async with self._session.get(f"{url}/sim/state", timeout=timeout) as resp:
            state = await resp.json() if resp.status == 200 else {}
        if not body:
            return url, state, {}
        async with self._session.post(f"{url}/sim/match", data=body, timeout=timeout,
                                      headers={"content-type": "application/json"}) as resp:
            match = await resp.json() if resp.status == 200 else {}
        return url, state, match

    async def _ranked(self, match_body: dict[str, Any] | None, max_tokens: int) -> list[str]:
        assert self._target is not None
        body = orjson.dumps(match_body) if match_body is not None else b""
        looks = await asyncio.gather(
            *(self._look(url, body) for url in self._target.urls), return_exceptions=True
        )
        scored: list[tuple[float, str]] = []
        for look in looks:
            if isinstance(look, BaseException):
                continue
            url, state, match = look
            if not state:
                continue
            load = max(int(state.get("running", 0)) + int(state.get("queued", 0)),
                       self._inflight[url])
            prompt = int(match.get("prompt_tokens", 0))
            scored.append((
                routing_cost_s(
                    float(state.get("speed", 1.0)), load,
                    self._max_running.get(url, DEFAULT_MAX_RUNNING), prompt,
                    int(match.get("cached_tokens", 0)), max_tokens,
                ),
                url,
            ))
        scored.sort()
        return [url for _, url in scored]

    async def chat(self, messages: list[dict[str, str]], max_tokens: int, stream: bool) -> Outcome:
        assert self._target is not None and self._session is not None
        start = time.monotonic()
        body = chat_body(self._target.model, messages, max_tokens, stream)
        tried: set[str] = set()
        last = Outcome(ok=False, e2e_s=0.0, error="no engine answered the oracle's look-ups")
        for _ in range(ATTEMPTS):
            ranked = [u for u in await self._ranked(
                {"model": self._target.model, "messages": messages}, max_tokens) if u not in tried]
            if not ranked:
                break
            url = ranked[0]
            tried.add(url)
            self._inflight[url] += 1
            sent = time.monotonic()
            try:
                last = await post_chat(self._session, url, body, self._target.attempt_timeout_s)
            finally:
                self._inflight[url] -= 1
            if last.ok:
                last.worker = url
                last.e2e_s = time.monotonic() - start
                if last.ttft_s is not None:
                    last.ttft_s += sent - start
                return last
        last.e2e_s = time.monotonic() - start
        return last

    async def embed(self, text: str) -> Outcome:
        assert self._target is not None and self._session is not None
        start = time.monotonic()
        ranked = await self._ranked(None, 0)
        last = Outcome(ok=False, e2e_s=0.0, error="no engine answered the oracle's look-ups")
        for url in ranked[:ATTEMPTS]:
            self._inflight[url] += 1
            try:
                last = await post_embedding(self._session, url, self._target.model, text,
                                            self._target.attempt_timeout_s)
            finally:
                self._inflight[url] -= 1
            if last.ok:
                last.worker = url
                break
        last.e2e_s = time.monotonic() - start
        return last

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
