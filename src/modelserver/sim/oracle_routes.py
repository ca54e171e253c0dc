"""The simulator's own routes under /sim/: true engine state for benchmark oracles, a
side-effect-free prefix-cache probe, and fault control at run time."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from aiohttp import web
from pydantic import ValidationError

from modelserver.sim.faults import FaultSpecError, parse_faults
from modelserver.sim.protocol import (
    BadRequest,
    ChatCompletionRequest,
    GenerateRequest,
    json_response,
    prompts_of,
)
from modelserver.sim.tokenizer import apply_chat_template

if TYPE_CHECKING:
    from modelserver.sim.server import SimServer


class OracleRoutes:
    def __init__(self, server: SimServer) -> None:
        self.server = server

    def add_to(self, router: web.UrlDispatcher) -> None:
        router.add_get("/sim/state", self.sim_state)
        router.add_post("/sim/match", self.sim_match)
        router.add_post("/sim/faults", self.sim_faults)

    async def sim_state(self, request: web.Request) -> web.Response:
        engine = self.server.engine
        return json_response(
            {
                "model": self.server.config.model,
                "kind": self.server.config.kind,
                "running": len(engine.running),
                "queued": len(engine.queue),
                "cache_tokens_used": engine.cache.size,
                "cache_tokens_budget": engine.cache.budget,
                "cache_tokens_evictable": engine.cache.evictable_size,
                "token_usage": engine.token_usage(),
                "requests_served": engine.totals.requests,
                "faults": self.server.faults.faults.describe(),
                "speed": self.server.config.speed,
                "steps": engine.steps,
                "engine_held": self.server.engine_held,
                "max_running": engine.max_running,
                "aborted": self.server.aborted,
            }
        )

    async def sim_match(self, request: web.Request) -> web.Response:
        """What `cached_tokens` a request would get if admitted now; changes nothing."""
        raw = await request.read()
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"the body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise BadRequest("the body must be a JSON object")
        if "messages" in data:
            try:
                chat = ChatCompletionRequest.model_validate(data)
            except ValidationError as exc:
                raise BadRequest(f"messages: {exc.errors()[0]['msg']}", param="messages") from None
            prompts = [
                apply_chat_template({"role": m.role, "content": m.content} for m in chat.messages)
            ]
        elif "prompt" in data or "input" in data:
            prompts = prompts_of(data.get("prompt", data.get("input")))
        elif "text" in data or "input_ids" in data:
            try:
                gen = GenerateRequest.model_validate(data)
            except ValidationError as exc:
                raise BadRequest(f"text/input_ids: {exc.errors()[0]['msg']}") from None
            prompts = prompts_of(gen.input_ids if gen.input_ids is not None else gen.text)
        else:
            raise BadRequest("give `messages`, `prompt`, `input`, `text` or `input_ids`")
        tokens = prompts[0]
        cached = min(self.server.engine.cache.match(tokens), len(tokens) - 1)
        return json_response({"cached_tokens": cached, "prompt_tokens": len(tokens)})

    async def sim_faults(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"the body is not valid JSON: {exc}") from None
        spec = data.get("spec") if isinstance(data, dict) else None
        if not isinstance(spec, str):
            raise BadRequest('the body must be {"spec": "<fault spec>"}', param="spec")
        try:
            faults = parse_faults(spec)
        except FaultSpecError as exc:
            raise BadRequest(str(exc), param="spec") from None
        response = json_response({"faults": faults.describe()})
        if faults.refuse:
            # The answer goes out before the listener, and this connection with it, closes.
            await response.prepare(request)
            await response.write_eof()
        await self.server.set_faults(spec)
        return response
