"""LiteLLM's `Router`, in process: one deployment per engine, each as model `openai/NAME`
with its `api_base` (LiteLLM's OpenAI-compatible provider), and a routing strategy
(`latency-based-routing` or `simple-shuffle`). Retries, cooldowns and timeouts are left at
LiteLLM's defaults, as a user would get them.

`LITELLM_LOCAL_MODEL_COST_MAP=True` is set before LiteLLM is imported, so it reads its
bundled model cost map instead of fetching one over the network.
"""

from __future__ import annotations

import os
import time
from typing import Any

from modelserver.bench.contenders.base import Contender, Target
from modelserver.bench.outcome import Outcome, usage_counts
from modelserver.errors import BenchError

STRATEGIES = ("latency-based-routing", "simple-shuffle", "least-busy", "usage-based-routing")
SHORT_NAMES = {"latency-based-routing": "latency", "simple-shuffle": "shuffle"}


def import_litellm() -> Any:
    """The `litellm` module, offline; raises BenchError when it is not installed."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import litellm
    except ImportError as exc:
        raise BenchError(f"LiteLLM is not installed ({exc}); install the 'bench' extra") from None
    litellm.telemetry = False
    litellm.suppress_debug_info = True
    return litellm


def _usage_dict(usage: Any) -> dict[str, Any] | None:
    if usage is None:
        return None
    if hasattr(usage, "model_dump"):
        dumped: dict[str, Any] = usage.model_dump()
        return dumped
    return dict(usage)


class LitellmRouterContender(Contender):
    family = "litellm"

    def __init__(self, strategy: str) -> None:
        if strategy not in STRATEGIES:
            raise BenchError(f"LiteLLM routing strategy {strategy!r} unknown; "
                             f"valid: {', '.join(STRATEGIES)}")
        self.strategy = strategy
        self.name = f"litellm:{SHORT_NAMES.get(strategy, strategy)}"
        self._router: Any = None
        self._target: Target | None = None

    async def start(self, target: Target) -> None:
        litellm = import_litellm()
        self._target = target
        model_list = [
            {
                "model_name": target.model,
                "litellm_params": {
                    "model": f"openai/{target.model}",
                    "api_base": f"{url}/v1",
                    "api_key": "unused",
                },
            }
            for url in target.urls
        ]
        self._router = litellm.Router(model_list=model_list, routing_strategy=self.strategy)

    async def chat(self, messages: list[dict[str, str]], max_tokens: int, stream: bool) -> Outcome:
        assert self._target is not None
        start = time.monotonic()
        try:
            params: dict[str, Any] = {
                "model": self._target.model, "messages": messages, "max_tokens": max_tokens,
                "temperature": 0.0, "timeout": self._target.attempt_timeout_s,
            }
            if not stream:
                resp = await self._router.acompletion(**params)
                p, c, o = usage_counts(_usage_dict(getattr(resp, "usage", None)))
                return Outcome(ok=True, e2e_s=time.monotonic() - start, prompt_tokens=p,
                               cached_tokens=c, completion_tokens=o,
                               worker=_api_base(resp), text=resp.choices[0].message.content or "")
            resp = await self._router.acompletion(
                **params, stream=True, stream_options={"include_usage": True}
            )
            ttft: float | None = None
            parts: list[str] = []
            usage: dict[str, Any] | None = None
            async for chunk in resp:
                usage = _usage_dict(getattr(chunk, "usage", None)) or usage
                for choice in chunk.choices or []:
                    piece = getattr(choice.delta, "content", None)
                    if piece:
                        if ttft is None:
                            ttft = time.monotonic() - start
                        parts.append(piece)
            p, c, o = usage_counts(usage)
            return Outcome(ok=True, e2e_s=time.monotonic() - start, ttft_s=ttft,
                           prompt_tokens=p, cached_tokens=c, completion_tokens=o,
                           worker=_api_base(resp), text="".join(parts), streamed=True)
        except Exception as exc:  # LiteLLM raises its own (openai-derived) error types
            return Outcome(ok=False, e2e_s=time.monotonic() - start, streamed=stream,
                           error=f"{type(exc).__name__}: {str(exc)[:300]}")

    async def embed(self, text: str) -> Outcome:
        assert self._target is not None
        start = time.monotonic()
        try:
            resp = await self._router.aembedding(model=self._target.model, input=[text],
                                                 timeout=self._target.attempt_timeout_s)
        except Exception as exc:  # LiteLLM raises its own (openai-derived) error types
            return Outcome(ok=False, e2e_s=time.monotonic() - start,
                           error=f"{type(exc).__name__}: {str(exc)[:300]}")
        p, c, _ = usage_counts(_usage_dict(getattr(resp, "usage", None)))
        return Outcome(ok=True, e2e_s=time.monotonic() - start, prompt_tokens=p,
                       cached_tokens=c, worker=_api_base(resp))

    async def stop(self) -> None:
        if self._router is not None:
            reset = getattr(self._router, "reset", None)
            if callable(reset):
                reset()
            self._router = None


def _api_base(resp: Any) -> str | None:
    hidden = getattr(resp, "_hidden_params", None) or {}
    base = hidden.get("api_base") if isinstance(hidden, dict) else None
    if isinstance(base, str):
        return base.removesuffix("/").removesuffix("/v1")
    return None
