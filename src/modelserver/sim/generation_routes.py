"""Generation routes: OpenAI-compatible chat, completions and embeddings, SGLang's native
/generate, and SSE streams that send each token as the engine makes it.

Bodies as in python/sglang/srt/entrypoints/openai/ (serving_chat.py, serving_completions.py,
serving_embedding.py) and python/sglang/srt/entrypoints/http_server.py (`/generate`, whose
stream carries the whole text so far in every event).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from modelserver.sim import responses
from modelserver.sim.embedding import embed
from modelserver.sim.engine import Request
from modelserver.sim.language_model import continues_text
from modelserver.sim.protocol import (
    BadRequest,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    GenerateRequest,
    check_context,
    json_response,
    parse_body,
    prompts_of,
)
from modelserver.sim.responses import sse
from modelserver.sim.tokenizer import apply_chat_template, message_text, token_text

if TYPE_CHECKING:
    from modelserver.sim.server import SimServer

Events = Callable[[int, bool], list[bytes]]  # (tokens sent, finished) -> SSE events to send


class GenerationRoutes:
    def __init__(self, server: SimServer) -> None:
        self.server = server

    def add_to(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/chat/completions", self.chat)
        router.add_post("/v1/completions", self.completions)
        router.add_post("/v1/embeddings", self.embeddings)
        router.add_route("POST", "/generate", self.generate)
        router.add_route("PUT", "/generate", self.generate)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await parse_body(request, ChatCompletionRequest)
        self.server.require_kind("chat")
        messages = [{"role": m.role, "content": m.content} for m in body.messages]
        continued = body.continue_final_message and messages[-1]["role"] == "assistant"
        tokens = apply_chat_template(messages, continue_final_message=continued)
        spaced = continued and continues_text(message_text(messages[-1]["content"]))
        max_new = body.output_budget()
        check_context(len(tokens), max_new)
        early = await self.server.gate(request)
        if early is not None:
            return early
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        req = self.server.new_request(
            tokens, max_new, stream=body.stream, spaced_first=spaced, priority=body.priority
        )
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return await self._stream(
                request, req, self._chat_events(rid, body.model, created, req, include_usage)
            )
        await self.server.wait_all([req], await self.server.admit([req]))
        return json_response(responses.chat_completion(rid, body.model, created, req))

    def _chat_events(
        self, rid: str, model: str, created: int, req: Request, include_usage: bool
    ) -> Callable[[int, bool], list[bytes]]:
        def events(sent: int, finished: bool) -> list[bytes]:
            out: list[bytes] = []
            if sent == 0 and req.generated:
                role = {"role": "assistant", "content": ""}
                out.append(sse(responses.chat_chunk(rid, model, created, role, None)))
            for i in range(sent, req.generated):
                last = finished and i == req.generated - 1
                delta = {"content": token_text(req.words, i, req.spaced_first)}
                finish = responses.finish_reason(req) if last else None
                out.append(sse(responses.chat_chunk(rid, model, created, delta, finish)))
            if finished and include_usage:
                out.append(
                    sse(responses.usage_chunk(rid, model, created, "chat.completion.chunk", req))
                )
            return out

        return events

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await parse_body(request, CompletionRequest)
        self.server.require_kind("chat")
        prompts = prompts_of(body.prompt)
        max_new = body.output_budget()
        for tokens in prompts:
            check_context(len(tokens), max_new)
        if body.stream and len(prompts) != 1:
            raise BadRequest("the simulator streams one prompt at a time", param="prompt")
        early = await self.server.gate(request)
        if early is not None:
            return early
        rid = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        # A prompt that ends in a word is continued as a model would: " word", not "word".
        spaced = not isinstance(body.prompt, str) or continues_text(body.prompt)
        reqs = [
            self.server.new_request(
                t, max_new, stream=body.stream, spaced_first=spaced, priority=body.priority
            )
            for t in prompts
        ]
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            req = reqs[0]

            def events(sent: int, finished: bool) -> list[bytes]:
                out: list[bytes] = []
                for i in range(sent, req.generated):
                    last = finished and i == req.generated - 1
                    text = token_text(req.words, i, req.spaced_first)
                    finish = responses.finish_reason(req) if last else None
                    out.append(
                        sse(responses.completion_chunk(rid, body.model, created, text, finish))
                    )
                if finished and include_usage:
                    out.append(
                        sse(responses.usage_chunk(rid, body.model, created, "text_completion", req))
                    )
                return out

            return await self._stream(request, req, events)
        await self.server.wait_all(reqs, await self.server.admit(reqs))
        return json_response(responses.completion(rid, body.model, created, reqs))

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await parse_body(request, EmbeddingRequest)
        self.server.require_kind("embedding")
        prompts = prompts_of(body.input)
        for tokens in prompts:
            check_context(len(tokens), 0)
        early = await self.server.gate(request)
        if early is not None:
            return early
        reqs = [self.server.new_request(t, 0) for t in prompts]
        await self.server.wait_all(reqs, await self.server.admit(reqs))
        vectors = [embed(r.tokens) for r in reqs]
        return json_response(responses.embeddings(body.model, vectors, reqs))

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await parse_body(request, GenerateRequest)
        self.server.require_kind("chat")
        if body.input_ids is not None:
            prompts = prompts_of(body.input_ids, "input_ids")
        elif body.text is not None:
            prompts = prompts_of(body.text, "text")
        else:
            raise BadRequest("Either text, input_ids or input_embeds should be provided.")
        max_new = body.output_budget()
        for tokens in prompts:
            check_context(len(tokens), max_new)
        batch = not isinstance(body.text, str) and not (
            body.input_ids and isinstance(body.input_ids[0], int)
        )
        if body.stream and len(prompts) != 1:
            raise BadRequest("the simulator streams one prompt at a time", param="stream")
        early = await self.server.gate(request)
        if early is not None:
            return early
        rid = uuid.uuid4().hex
        if body.stream and max_new > 0:
            req = self.server.new_request(prompts[0], max_new, stream=True, priority=body.priority)

            def events(sent: int, finished: bool) -> list[bytes]:
                # SGLang's native stream sends the whole text so far in every event.
                return [
                    sse(responses.generate(rid, req, generated=i + 1))
                    for i in range(sent, req.generated)
                ]

            return await self._stream(request, req, events)
        reqs = [self.server.new_request(t, max_new, priority=body.priority) for t in prompts]
        await self.server.wait_all(reqs, await self.server.admit(reqs))
        results = [
            responses.generate(rid if len(reqs) == 1 else f"{rid}-{i}", r)
            for i, r in enumerate(reqs)
        ]
        return json_response(results if batch else results[0])

    async def _stream(
        self,
        http: web.Request,
        req: Request,
        events: Callable[[int, bool], list[bytes]],
    ) -> web.StreamResponse:
        """Send a request's tokens as SSE events as the engine makes them, then [DONE]."""
        progress = asyncio.Event()
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        try:
            (future,) = await self.server.admit([req], progress.set)
            await response.prepare(http)
            sent = 0
            while True:
                await progress.wait()
                progress.clear()
                finished = future.done()
                if finished:
                    future.result()  # raises EngineDied if the engine died under the stream
                chunks = events(sent, finished)
                sent = req.generated
                if chunks:
                    await response.write(b"".join(chunks))
                if finished:
                    break
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        finally:
            self.server.abort(req)
