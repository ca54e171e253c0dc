"""The seed's original client (`model_server.py` + `client_configs.get_fastest_server`),
re-implemented from its README and source as a baseline:

- choose a server by probing every server *in turn* with a full generation of the benchmark
  message (256 tokens); a probe is abandoned after the lowest latency seen so far (starting
  from a bound of 3 s), and the fastest server that answered wins; its latency becomes the
  latency bound;
- send every request to that one server;
- when a reply takes 20x the bound or longer (`LATENCY_GROWING_RATE`), probe again (starting
  from 20x the bound); when a request fails, probe again from `INF` (200 s) and retry, up
  to `MAX_RETRY` (20) attempts; when no server answers a probe, multiply the bound by 20
  and probe again.

The seed ran in one thread per process; here many requests share one client, so a re-probe
is done once (under a lock) for all the requests that saw the same server misbehave.
`time_scale` divides the seed's absolute constants (3 s, 200 s), which were set for real
GPUs, by the simulated engines' speed, so the seed sees the same relative world.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from modelserver.bench import prompts
from modelserver.bench.contenders.base import Contender, Target
from modelserver.bench.openai_http import chat_body, client_session, post_chat, post_embedding
from modelserver.bench.outcome import Outcome

LATENCY_GROWING_RATE = 20
MAX_RETRY = 20
INF = 200.0
INITIAL_LATENCY_BOUND = 3.0
PROBE_MAX_TOKENS = 256

PROBE_MESSAGES = [
    {"role": "user", "content": prompts.AGENT_FEW_SHOT + "You are standing in a bedroom. "
     "Around you are a bed 1, a desk 2, a desk 1, a drawer 3, a drawer 2, a drawer 1 and a "
     "shelf 1.\nYour task is to: put a mug in/on desk.\n>"},
    {"role": "assistant", "content": "think: I must find a mug, then put it on a desk."},
    {"role": "user", "content": "OK."},
]
PROBE_EMBED_TEXT = "A short paragraph about how much protein an adult needs each day."


class SeedContender(Contender):
    family = "seed"
    name = "seed"

    def __init__(self, time_scale: float = 1.0) -> None:
        self.time_scale = time_scale
        self._target: Target | None = None
        self._session: aiohttp.ClientSession | None = None
        self._server: str | None = None
        self._latency_bound = INF
        self._generation = 0
        """Bumped at every re-probe, so concurrent requests re-probe once, not once each."""
        self._lock = asyncio.Lock()
        self.probes = 0

    def _scaled(self, seconds: float) -> float:
        return seconds / self.time_scale

    async def start(self, target: Target) -> None:
        self._target = target
        self._session = client_session()
        await self._manage(self._scaled(INITIAL_LATENCY_BOUND))

    async def _fastest(self, initial_latency: float) -> tuple[str | None, float]:
        """`get_fastest_server`: every server in turn, each bounded by the best so far."""
        assert self._target is not None and self._session is not None
        min_latency, fastest = initial_latency, None
        for url in self._target.urls:
            self.probes += 1
            if self._target.kind == "embedding":  # the seed probed embedders with an embedding
                result = await post_embedding(self._session, url, self._target.model,
                                              PROBE_EMBED_TEXT, timeout_s=min_latency)
            else:
                body = chat_body(self._target.model, PROBE_MESSAGES, PROBE_MAX_TOKENS, False)
                result = await post_chat(self._session, url, body, timeout_s=min_latency)
            if result.ok and result.e2e_s < min_latency:
                min_latency, fastest = result.e2e_s, url
        return (fastest, min_latency) if fastest else (None, self._scaled(INF))

    async def _manage(self, latency_bound: float) -> None:
        """`_manage_model_server`: probe until a server is found, growing the bound."""
        build_latency = latency_bound
        for _ in range(MAX_RETRY + 1):
            server, bound = await self._fastest(build_latency)
            if server is not None:
                self._server, self._latency_bound = server, bound
                self._generation += 1
                return
            build_latency *= LATENCY_GROWING_RATE
        self._server = None
        self._generation += 1

    async def _rebuild(self, seen_generation: int, latency_bound: float) -> None:
        async with self._lock:
            if self._generation == seen_generation:  # nobody re-probed since we looked
                await self._manage(latency_bound)

    async def chat(self, messages: list[dict[str, str]], max_tokens: int, stream: bool) -> Outcome:
        assert self._target is not None and self._session is not None
        start = time.monotonic()
        last = Outcome(ok=False, e2e_s=0.0, error="no server found by probing")
        for _ in range(MAX_RETRY):
            server, bound, generation = self._server, self._latency_bound, self._generation
            if server is None:
                await self._rebuild(generation, self._scaled(INF))
                continue
            body = chat_body(self._target.model, messages, max_tokens, stream)
            attempt_start = time.monotonic()
            last = await post_chat(self._session, server, body, self._target.attempt_timeout_s)
            elapsed = time.monotonic() - attempt_start
            if last.ok:
                if elapsed >= LATENCY_GROWING_RATE * bound:
                    await self._rebuild(generation, LATENCY_GROWING_RATE * bound)
                last.worker = server
                last.e2e_s = time.monotonic() - start
                if last.ttft_s is not None:
                    last.ttft_s += attempt_start - start
                return last
            await self._rebuild(generation, self._scaled(INF))
        last.e2e_s = time.monotonic() - start
        return last

    async def embed(self, text: str) -> Outcome:
        assert self._target is not None and self._session is not None
        start = time.monotonic()
        for _ in range(MAX_RETRY):
            server, generation = self._server, self._generation
            if server is not None:
                result = await post_embedding(self._session, server, self._target.model, text,
                                              self._target.attempt_timeout_s)
                if result.ok:
                    result.worker = server
                    result.e2e_s = time.monotonic() - start
                    return result
            await self._rebuild(generation, self._scaled(INF))
        return Outcome(ok=False, e2e_s=time.monotonic() - start, error="all attempts failed")

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
