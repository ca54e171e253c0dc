"""Our router, in process, through the client library `AsyncModelServer`, one policy each.

Non-streamed requests go through `AsyncModelServer.chat`. Streamed ones go through the same
client's router (`ms.router.forward(..., stream=True)`), the call `AsyncModelServer.stream`
makes, read here chunk by chunk so the final usage chunk (cached tokens) is kept too.
"""

from __future__ import annotations

import sys
import time

from modelserver.bench.contenders.base import Contender, Target
from modelserver.bench.openai_http import chat_body, read_sse
from modelserver.bench.outcome import Outcome
from modelserver.client import CHAT_PATH, AsyncModelServer
from modelserver.config import RouterConfig
from modelserver.errors import ModelServerError


class OursContender(Contender):
    family = "ours"

    def __init__(self, policy: str, config: RouterConfig | None = None) -> None:
        self.policy = policy
        self.name = f"ours:{policy}"
        self._config = config
        self._client: AsyncModelServer | None = None
        self._model = ""

    async def start(self, target: Target) -> None:
        config = (self._config or RouterConfig()).model_copy(
            update={"policy": self.policy, "request_timeout_s": target.request_timeout_s,
                    "attempt_timeout_s": target.attempt_timeout_s}
        )
        fleet = {target.model: {"kind": target.kind, "urls": list(target.urls)}}
        self._client = AsyncModelServer(fleet, config=config)
        self._model = target.model
        await self._client.__aenter__()

    @property
    def client(self) -> AsyncModelServer:
        if self._client is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._client

    async def chat(self, messages: list[dict[str, str]], max_tokens: int, stream: bool) -> Outcome:
        start = time.monotonic()
        try:
            if not stream:
                result = await self.client.chat(
                    self._model, messages, max_tokens=max_tokens, temperature=0.0
                )
                return Outcome(
                    ok=True, e2e_s=time.monotonic() - start, worker=result.worker_url,
                    prompt_tokens=result.usage.prompt_tokens,
                    cached_tokens=result.usage.cached_tokens,
                    completion_tokens=result.usage.completion_tokens, text=result.text,
                )
            return await self._stream(messages, max_tokens, start)
        except ModelServerError as exc:
            return Outcome(ok=False, e2e_s=time.monotonic() - start, streamed=stream,
                           error=f"{type(exc).__name__}: {exc}")

    async def _stream(self, messages: list[dict[str, str]], max_tokens: int,
                      start: float) -> Outcome:
        body = chat_body(self._model, messages, max_tokens, stream=True)
        response = await self.client.router.forward(self._model, CHAT_PATH, body, stream=True)
        assert response.chunks is not None
        async with response:
            outcome = await read_sse(response.chunks, start, worker=response.worker)
        records = getattr(response.chunks, "records", ())
        if records:
            outcome.resume_gaps_s = [r.gap_s for r in records]
            outcome.prefilled_again = max(
                sum(outcome.prompt_tokens + r.delivered_tokens for r in records)
                - outcome.cached_tokens,
                0,
            )
        return outcome

    async def embed(self, text: str) -> Outcome:
        start = time.monotonic()
        try:
            await self.client.embed(self._model, text)
        except ModelServerError as exc:
            return Outcome(ok=False, e2e_s=time.monotonic() - start, error=str(exc))
        return Outcome(ok=True, e2e_s=time.monotonic() - start)

    async def stop(self) -> None:
        hedger = self._client.router.hedger if self._client is not None else None
        if hedger is not None:  # what hedging cost: extra requests sent
            budget = hedger.budget
            print(f"{self.name}: {budget.hedges} hedged of {budget.requests} streams,"
                  f" {hedger.won_by_copy} answered first by the copy", file=sys.stderr)
        if self._client is not None:
            await self._client.close()
            self._client = None
