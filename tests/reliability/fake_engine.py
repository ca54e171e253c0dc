"""A scripted engine that misbehaves on purpose, on a real socket (aiohttp).

`GET /health` always answers 200, so only traffic can find out what is wrong. Every POST
(`/v1/chat/completions` and friends) answers the way `behaviour` says:

    good             a chat answer; `stream: true` gives SSE events ending in data: [DONE]
    invalid_json     200, application/json, a body cut in the middle of a JSON object
    wrong_type       200, text/html, a proxy's error page (for streams too)
    cut_before_first headers sent, then the connection closed before any byte of the body
    cut_after_first  one SSE event (or half a JSON body), then the connection closed
    ends_early       streams: one SSE event, then a clean end without data: [DONE]
                     (whole answers are good)
    never_ends       headers sent, then nothing more until the test ends
    always_500       500 with an OpenAI-shaped error

`posts` counts the POSTs it got, so a test can tell the bad worker was really tried.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import orjson
from aiohttp import web

Behaviour = Literal[
    "good",
    "invalid_json",
    "wrong_type",
    "cut_before_first",
    "cut_after_first",
    "never_ends",
    "always_500",
    "ends_early",
]
BEHAVIOURS: tuple[Behaviour, ...] = (
    "invalid_json",
    "wrong_type",
    "cut_before_first",
    "cut_after_first",
    "never_ends",
    "always_500",
)
ANSWER = "the good worker answered"


def chat_answer(text: str = ANSWER) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "m",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text},
                 "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        }
    )


def sse_event(text: str) -> bytes:
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk",
             "choices": [{"index": 0, "delta": {"content": text}}]}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


class FakeEngine:
    """`async with FakeEngine("never_ends") as engine: engine.url`."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.posts = 0
        self.url = ""
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> FakeEngine:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_post("/{tail:.*}", self._generate)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()  # handlers that hang return now, so cleanup does not wait on them
        assert self._runner is not None
        await self._runner.cleanup()

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        self.posts += 1
        body = orjson.loads(await request.read())
        stream = bool(body.get("stream"))
        kind = self.behaviour
        if kind == "good" or (kind == "ends_early" and not stream):
            return await self._good(request, stream)
        if kind == "invalid_json":
            return web.Response(body=chat_answer()[:25], content_type="application/json")
        if kind == "wrong_type":
            page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
            return web.Response(body=page, content_type="text/html")
        if kind == "always_500":
            error = {"error": {"message": "engine exploded", "type": "server_error"}}
            return web.json_response(error, status=500)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream" if stream else "application/json"}
        )
        if not stream:
            response.content_length = len(chat_answer())
        await response.prepare(request)
        if kind == "cut_after_first":
            await response.write(sse_event("half") if stream else chat_answer()[:20])
        if kind == "ends_early":
            await response.write(sse_event("half"))
            await response.write_eof()
            return response
        if kind == "never_ends":
            await self._release.wait()
            return response
        # cut: close the socket under a body that promised more (chunked or Content-Length)
        assert request.transport is not None
        request.transport.close()
        return response

    async def _good(self, request: web.Request, stream: bool) -> web.StreamResponse:
        if not stream:
            return web.Response(body=chat_answer(), content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for word in ANSWER.split(" "):
            await response.write(sse_event(word + " "))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
