"""The simulated engine's HTTP server: SGLang's surface on aiohttp, timed by `Engine`.

Routes (SGLang's names from python/sglang/srt/entrypoints/http_server.py; the 0.2.15 names
from python/sglang/srt/server.py are the `get_` aliases):

    GET  /health, /health_generate                 200 when up, 503 while starting
    GET  /model_info, /get_model_info              model_path, tokenizer_path, is_generation
    GET  /server_info, /get_server_info            server args, internal_states, version
    GET  /get_server_args                          server args alone (SGLang 0.2-0.3)
    GET  /v1/models, /v1/models/{model}            OpenAI model list / card
    POST /v1/chat/completions, /v1/completions     OpenAI-compatible, `stream` as SSE
    POST /v1/embeddings                            embedding models only
    POST /generate                                 native API with `meta_info`
    GET|POST /flush_cache                          empties the prefix cache when idle
    GET  /metrics                                  Prometheus text, `sglang:*` names
    GET  /sim/state, POST /sim/match, POST /sim/faults   oracle and fault control

`SimServer` runs it in the caller's event loop (`async with SimServer(cfg) as sim`);
`SimThread` runs it on a thread of its own for synchronous code.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
import uuid
import zlib
from array import array
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import ValidationError

from modelserver.sim import responses
from modelserver.sim.config import SimConfig
from modelserver.sim.embedding import embed
from modelserver.sim.engine import Engine, Request, RequestTooLarge
from modelserver.sim.faults import FaultSpecError, FaultState, parse_faults
from modelserver.sim.metrics import SimMetrics
from modelserver.sim.perf import (
    CHUNKED_PREFILL_SIZE,
    CONTEXT_LENGTH,
    MEM_FRACTION_STATIC,
    PerfModel,
)
from modelserver.sim.protocol import (
    BadRequest,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    GenerateRequest,
    error_response,
    parse_body,
)
from modelserver.sim.tokenizer import OUTPUT_WORDS, apply_chat_template, encode, token_text

VERSION = "0.5.0-sim"  # reported as SGLang's `version`; the suffix says what answered
# SGLang's /health waits this long for its probe generation before answering 503
# (HEALTH_CHECK_TIMEOUT in http_server.py, env SGLANG_HEALTH_CHECK_TIMEOUT, default 20 s).
HEALTH_CHECK_TIMEOUT = 20.0
_UNAUTHENTICATED_PREFIXES = ("/health", "/metrics", "/sim/")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")


class _Crashed(Exception):
    """The simulated engine died while this request was in flight."""


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _sse(body: Any) -> bytes:
    return b"data: " + orjson.dumps(body) + b"\n\n"


class SimServer:
    """One simulated SGLang engine listening on `host:port` (port 0: any free port)."""

    def __init__(
        self,
        config: SimConfig,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        on_crash: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.host = host
        self.port = port
        self._on_crash = on_crash
        self.engine = self._new_engine()
        self.metrics = SimMetrics(self.engine, config.model)
        self.faults = FaultState(parse_faults(config.faults), time.monotonic(), config.seed)
        self._random = random.Random(config.seed)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._driver: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._unhang = asyncio.Event()
        self._crash_timer: asyncio.TimerHandle | None = None
        self._in_flight: dict[asyncio.Future[None], Callable[[], None] | None] = {}
        self._crashed = False
        self._stopping = False
        self._started_at = time.time()

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application(middlewares=self._middlewares(), client_max_size=64 * 2**20)
        self._add_routes(app)
        # In-flight requests get half a second to finish on stop, as a killed engine would not
        # wait for keep-alive clients at all.
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=0.5
        )
        await self._runner.setup()
        try:
            await self._listen()
        except OSError:
            await self.stop()  # nothing half-started: the port was taken
            raise
        self._driver = asyncio.create_task(self._drive(), name=f"sim-engine-{self.port}")
        self._apply_faults_at_start()

    async def stop(self) -> None:
        self._stopping = True
        if self._crash_timer is not None:
            self._crash_timer.cancel()
        if self._driver is not None:
            self._driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._driver
            self._driver = None
        self._fail_in_flight()
        self._unhang.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._site = None

    async def set_faults(self, spec: str) -> None:
        """Replace the faults in force (raises FaultSpecError for a bad spec)."""
        faults = parse_faults(spec)
        self.faults.replace(faults, time.monotonic())
        if self._crash_timer is not None:
            self._crash_timer.cancel()
            self._crash_timer = None
        if self._crashed and not faults.refuse:
            # A restarted engine: empty cache, nothing running.
            self._crashed = False
            self.engine = self._new_engine()
            self.metrics = SimMetrics(self.engine, self.config.model)
        if faults.refuse or self._crashed:
            await self._stop_listening()
        else:
            await self._listen()
        if faults.hang:
            self._unhang.clear()
        else:
            self._unhang.set()
        self._schedule_crash_timer()

    def _apply_faults_at_start(self) -> None:
        faults = self.faults.faults
        if faults.hang:
            self._unhang.clear()
        else:
            self._unhang.set()
        if faults.refuse:
            asyncio.get_running_loop().create_task(self._stop_listening())
        self._schedule_crash_timer()

    def _new_engine(self) -> Engine:
        return Engine(
            PerfModel(self.config.speed),
            self.config.effective_max_running,
            self.config.effective_cache_tokens,
        )

    async def _listen(self) -> None:
        if self._site is not None or self._runner is None:
            return
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        server = site._server
        if self.port == 0 and server is not None and isinstance(server, asyncio.Server):
            self.port = server.sockets[0].getsockname()[1]
        self._site = site

    async def _stop_listening(self) -> None:
        site, self._site = self._site, None
        if site is not None:
            await site.stop()
        if self._runner is not None and self._runner.server is not None:
            for connection in list(self._runner.server.connections):
                connection.force_close()
                if connection.transport is not None:
                    connection.transport.close()

    def _schedule_crash_timer(self) -> None:
        due = self.faults.crash_due_at()
        if due is None:
            return
        delay = max(0.0, due - time.monotonic())
        self._crash_timer = asyncio.get_running_loop().call_later(delay, self._crash)

    def _crash(self) -> None:
        """The engine dies: the process exits, or (in-process) stops listening."""
        if self._on_crash is not None:
            self._on_crash()
            return
        self._crashed = True
        self._fail_in_flight()
        asyncio.get_running_loop().create_task(self._stop_listening())

    def _fail_in_flight(self) -> None:
        in_flight, self._in_flight = self._in_flight, {}
        for future, on_progress in in_flight.items():
            if not future.done():
                future.set_exception(_Crashed())
                future.exception()  # retrieved here: a waiter may never come back for it
            if on_progress is not None:
                on_progress()

    async def _drive(self) -> None:
        """Run engine steps on the asyncio clock, sleeping for each step's GPU time."""
        loop = asyncio.get_running_loop()
        while True:
            engine = self.engine
            step = engine.begin_step(loop.time())
            if step is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            delay = step.duration * self.faults.latency_multiplier(time.monotonic())
            await asyncio.sleep(delay)
            engine.complete_step(step, loop.time())

    # --- requests through the engine -----------------------------------------------------

    def _new_request(self, tokens: list[int], max_new: int, *, stream: bool = False) -> Request:
        seed = zlib.crc32(array("l", tokens[-256:]).tobytes(), self.config.seed)
        words = random.Random(seed).choices(range(len(OUTPUT_WORDS)), k=max_new)
        loop = asyncio.get_running_loop()
        return Request(tokens, max_new, loop.time(), words=words, stream=stream)

    async def _admit(
        self, requests: list[Request], on_progress: Callable[[], None] | None = None
    ) -> list[asyncio.Future[None]]:
        """Hand requests to the engine; each future completes when its request finishes.

        `on_progress` (streams) is called after every step that gave a request a token, and
        when the engine dies under it.
        """
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []
        for request in requests:
            future: asyncio.Future[None] = loop.create_future()
            request.notify = self._notifier(future, on_progress)
            try:
                self.engine.submit(request)
            except RequestTooLarge as exc:
                raise BadRequest(str(exc)) from None
            self._in_flight[future] = on_progress
            futures.append(future)
        self._wake.set()
        return futures

    def _notifier(
        self, future: asyncio.Future[None], on_progress: Callable[[], None] | None
    ) -> Callable[[Request], None]:
        metrics = self.metrics
        in_flight = self._in_flight

        def notify(request: Request) -> None:
            if request.done:
                metrics.observe_finished(request)
                if not future.done():
                    future.set_result(None)
                in_flight.pop(future, None)
            if on_progress is not None:
                on_progress()

        return notify

    async def _wait_all(self, requests: list[Request], futures: list[asyncio.Future[None]]) -> None:
        try:
            await asyncio.gather(*futures)
        finally:
            for request in requests:
                if not request.done:
                    self.engine.abort(request)

    async def _gate(self, http: web.Request) -> web.StreamResponse | None:
        """Apply the faults to a generation request: an early answer, or None to serve it."""
        if self.faults.should_crash_before_request():
            self._crash()
            if http.transport is not None:
                http.transport.close()
            return web.Response(status=500)
        self.faults.accepted += 1
        status = self.faults.injected_error()
        if status is not None:
            return error_response(f"simulated fault: injected HTTP {status}", status)
        if self.faults.faults.hang:
            await self._unhang.wait()  # until the faults change or the server stops
            if self._stopping or self._crashed:
                raise _Crashed()
        return None

    def _require_kind(self, kind: str) -> None:
        if self.config.kind == kind:
            return
        if kind == "embedding":
            # SGLang's own message (tokenizer_manager.py, EmbeddingReqInput on a generator).
            raise BadRequest(
                "This model does not appear to be an embedding model by default. "
                "Please add `--is-embedding` when launching the server or try another model."
            )
        raise BadRequest(
            "This model is an embedding model (launched with `--is-embedding`); "
            "it does not serve generation requests."
        )

    @staticmethod
    def _check_context(prompt_tokens: int, max_new: int) -> None:
        if prompt_tokens + max_new > CONTEXT_LENGTH:
            raise BadRequest(
                f"Requested token count exceeds the model's maximum context length of "
                f"{CONTEXT_LENGTH} tokens. You requested a total of {prompt_tokens + max_new} "
                f"tokens: {prompt_tokens} tokens from the input messages and {max_new} tokens "
                f"for the completion. Please reduce the number of tokens in the input "
                f"messages or the completion to fit within the limit."
            )

    # --- HTTP plumbing -------------------------------------------------------------------

    def _middlewares(self) -> list[Any]:
        api_key = self.config.api_key

        @web.middleware
        async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
            try:
                return await handler(request)
            except BadRequest as exc:
                return error_response(exc.message, exc.status, exc.param)
            except _Crashed:
                if request.transport is not None:
                    request.transport.close()
                return web.Response(status=500)

        @web.middleware
        async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
            # SGLang's add_api_key_middleware (python/sglang/srt/utils): health and metrics
            # are open, everything else wants `Authorization: Bearer <key>`.
            if (
                api_key is not None
                and request.method != "OPTIONS"
                and not request.path.startswith(_UNAUTHENTICATED_PREFIXES)
                and request.headers.get("Authorization") != f"Bearer {api_key}"
            ):
                return _json({"error": "Unauthorized"}, status=401)
            return await handler(request)

        return [auth, errors]

    def _add_routes(self, app: web.Application) -> None:
        r = app.router
        for path in ("/health", "/health_generate"):
            r.add_get(path, self.health if path == "/health" else self.health_generate)
        for path in ("/model_info", "/get_model_info"):
            r.add_get(path, self.model_info)
        for path in ("/server_info", "/get_server_info"):
            r.add_get(path, self.server_info)
        r.add_get("/get_server_args", self.server_args)
        r.add_get("/v1/models", self.models)
        r.add_get("/v1/models/{model:.+}", self.model_card)
        r.add_post("/v1/chat/completions", self.chat)
        r.add_post("/v1/completions", self.completions)
        r.add_post("/v1/embeddings", self.embeddings)
        r.add_route("POST", "/generate", self.generate)
        r.add_route("PUT", "/generate", self.generate)
        r.add_route("GET", "/flush_cache", self.flush_cache)
        r.add_route("POST", "/flush_cache", self.flush_cache)
        r.add_get("/metrics", self.prometheus)
        r.add_get("/sim/state", self.sim_state)
        r.add_post("/sim/match", self.sim_match)
        r.add_post("/sim/faults", self.sim_faults)

    # --- informational routes ------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        if self.faults.starting(time.monotonic()):
            return web.Response(status=503)
        if self.faults.faults.hang:
            return await self._hung_health()
        return web.Response(status=200)

    async def health_generate(self, request: web.Request) -> web.Response:
        """SGLang's probe: push a one-token request through the scheduler."""
        if self.faults.starting(time.monotonic()):
            return web.Response(status=503)
        if self.faults.faults.hang:
            return await self._hung_health()
        max_new = 1 if self.config.kind == "chat" else 0
        probe = self._new_request([0], max_new)
        probe.log_metrics = False
        await self._wait_all([probe], await self._admit([probe]))
        return web.Response(status=200)

    async def _hung_health(self) -> web.Response:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._unhang.wait(), HEALTH_CHECK_TIMEOUT / self.config.speed)
            return web.Response(status=200)
        return web.Response(status=503)

    def _model_info_body(self) -> dict[str, Any]:
        return {
            "model_path": self.config.effective_model_path,
            "tokenizer_path": self.config.effective_model_path,
            "is_generation": self.config.kind == "chat",
            "preferred_sampling_params": None,
            "weight_version": "default",
        }

    async def model_info(self, request: web.Request) -> web.Response:
        return _json(self._model_info_body())

    def _server_args(self) -> dict[str, Any]:
        """The subset of SGLang's ServerArgs a client or router may read."""
        config = self.config
        return {
            "model_path": config.effective_model_path,
            "tokenizer_path": config.effective_model_path,
            "served_model_name": config.model,
            "is_embedding": config.kind == "embedding",
            "host": self.host,
            "port": self.port,
            "tp_size": 1,
            "dp_size": 1,
            "max_running_requests": self.engine.max_running,
            "chunked_prefill_size": CHUNKED_PREFILL_SIZE,
            "mem_fraction_static": MEM_FRACTION_STATIC,
            "context_length": CONTEXT_LENGTH,
            "api_key": None,
            "random_seed": config.seed,
        }

    async def server_info(self, request: web.Request) -> web.Response:
        engine = self.engine
        return _json(
            {
                **self._server_args(),
                "max_total_num_tokens": engine.cache.budget,
                "internal_states": [
                    {
                        "last_gen_throughput": 0.0,
                        "num_running_reqs": len(engine.running),
                        "num_queue_reqs": len(engine.queue),
                    }
                ],
                "version": VERSION,
                "sim": {"speed": self.config.speed, "faults": self.faults.faults.describe()},
            }
        )

    async def server_args(self, request: web.Request) -> web.Response:
        """SGLang 0.2.x-0.3.x `/get_server_args`: the server arguments alone."""
        return _json(self._server_args())

    def _model_card(self) -> dict[str, Any]:
        return {
            "id": self.config.model,
            "object": "model",
            "created": int(self._started_at),
            "owned_by": "sglang",
            "root": self.config.model,
            "parent": None,
            "max_model_len": CONTEXT_LENGTH,
        }

    async def models(self, request: web.Request) -> web.Response:
        return _json({"object": "list", "data": [self._model_card()]})

    async def model_card(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        if name != self.config.model:
            return _json(
                {
                    "error": {
                        "message": f"The model '{name}' does not exist",
                        "type": "invalid_request_error",
                        "param": "model",
                        "code": "model_not_found",
                    }
                },
                status=404,
            )
        return _json(self._model_card())

    async def flush_cache(self, request: web.Request) -> web.Response:
        flushed = self.engine.flush_cache()
        return web.Response(
            text="Cache flushed.\nPlease check backend logs for more details. (When there are "
            "running or waiting requests, the operation will not be performed.)\n",
            status=200 if flushed else 400,
        )

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"}
        )

    # --- generation routes ---------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await parse_body(request, ChatCompletionRequest)
        self._require_kind("chat")
        tokens = apply_chat_template({"role": m.role, "content": m.content} for m in body.messages)
        max_new = body.output_budget()
        self._check_context(len(tokens), max_new)
        early = await self._gate(request)
        if early is not None:
            return early
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        req = self._new_request(tokens, max_new, stream=body.stream)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return await self._stream(
                request, req, self._chat_events(rid, body.model, created, req, include_usage)
            )
        await self._wait_all([req], await self._admit([req]))
        return _json(responses.chat_completion(rid, body.model, created, req))

    def _chat_events(
        self, rid: str, model: str, created: int, req: Request, include_usage: bool
    ) -> Callable[[int, bool], list[bytes]]:
        def events(sent: int, finished: bool) -> list[bytes]:
            out: list[bytes] = []
            if sent == 0 and req.generated:
                role = {"role": "assistant", "content": ""}
                out.append(_sse(responses.chat_chunk(rid, model, created, role, None)))
            for i in range(sent, req.generated):
                last = finished and i == req.generated - 1
                delta = {"content": token_text(req.words, i)}
                finish = responses.finish_reason(req) if last else None
                out.append(_sse(responses.chat_chunk(rid, model, created, delta, finish)))
            if finished and include_usage:
                out.append(
                    _sse(responses.usage_chunk(rid, model, created, "chat.completion.chunk", req))
                )
            return out

        return events

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await parse_body(request, CompletionRequest)
        self._require_kind("chat")
        prompts = self._prompt_tokens(body.prompt)
        max_new = body.output_budget()
        for tokens in prompts:
            self._check_context(len(tokens), max_new)
        if body.stream and len(prompts) != 1:
            raise BadRequest("the simulator streams one prompt at a time", param="prompt")
        early = await self._gate(request)
        if early is not None:
            return early
        rid = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        reqs = [self._new_request(t, max_new, stream=body.stream) for t in prompts]
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            req = reqs[0]

            def events(sent: int, finished: bool) -> list[bytes]:
                out: list[bytes] = []
                for i in range(sent, req.generated):
                    last = finished and i == req.generated - 1
                    text = token_text(req.words, i)
                    finish = responses.finish_reason(req) if last else None
                    out.append(
                        _sse(responses.completion_chunk(rid, body.model, created, text, finish))
                    )
                if finished and include_usage:
                    out.append(
                        _sse(
                            responses.usage_chunk(rid, body.model, created, "text_completion", req)
                        )
                    )
                return out

            return await self._stream(request, req, events)
        await self._wait_all(reqs, await self._admit(reqs))
        return _json(responses.completion(rid, body.model, created, reqs))

    @staticmethod
    def _prompt_tokens(prompt: object, param: str = "prompt") -> list[list[int]]:
        """Token ids of each prompt: a string, token ids, or a list of either."""
        prompts: list[list[int]] = []
        if isinstance(prompt, str):
            prompts = [encode(prompt)]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
            prompts = [[int(p) for p in prompt]]
        elif isinstance(prompt, list):
            for item in prompt:
                if isinstance(item, str):
                    prompts.append(encode(item))
                elif isinstance(item, list) and all(isinstance(t, int) for t in item):
                    prompts.append([int(t) for t in item])
                else:
                    raise BadRequest("prompts are strings or lists of token ids", param=param)
        else:
            raise BadRequest("prompts are strings or lists of token ids", param=param)
        if not prompts or any(not p for p in prompts):
            raise BadRequest("the prompt is empty", param=param)
        return prompts

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await parse_body(request, EmbeddingRequest)
        self._require_kind("embedding")
        prompts = self._prompt_tokens(body.input)
        for tokens in prompts:
            self._check_context(len(tokens), 0)
        early = await self._gate(request)
        if early is not None:
            return early  # type: ignore[return-value]
        reqs = [self._new_request(t, 0) for t in prompts]
        await self._wait_all(reqs, await self._admit(reqs))
        vectors = [embed(r.tokens) for r in reqs]
        return _json(responses.embeddings(body.model, vectors, reqs))

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await parse_body(request, GenerateRequest)
        self._require_kind("chat")
        if body.input_ids is not None:
            prompts = self._prompt_tokens(body.input_ids, "input_ids")
        elif body.text is not None:
            prompts = self._prompt_tokens(body.text, "text")
        else:
            raise BadRequest("Either text, input_ids or input_embeds should be provided.")
        max_new = body.output_budget()
        for tokens in prompts:
            self._check_context(len(tokens), max_new)
        batch = not isinstance(body.text, str) and not (
            body.input_ids and isinstance(body.input_ids[0], int)
        )
        if body.stream and len(prompts) != 1:
            raise BadRequest("the simulator streams one prompt at a time", param="stream")
        early = await self._gate(request)
        if early is not None:
            return early
        rid = uuid.uuid4().hex
        if body.stream and max_new > 0:
            req = self._new_request(prompts[0], max_new, stream=True)

            def events(sent: int, finished: bool) -> list[bytes]:
                # SGLang's native stream sends the whole text so far in every event.
                return [
                    _sse(responses.generate(rid, req, generated=i + 1))
                    for i in range(sent, req.generated)
                ]

            return await self._stream(request, req, events)
        reqs = [self._new_request(t, max_new) for t in prompts]
        await self._wait_all(reqs, await self._admit(reqs))
        results = [
            responses.generate(rid if len(reqs) == 1 else f"{rid}-{i}", r)
            for i, r in enumerate(reqs)
        ]
        return _json(results if batch else results[0])

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
            (future,) = await self._admit([req], progress.set)
            await response.prepare(http)
            sent = 0
            while True:
                await progress.wait()
                progress.clear()
                finished = future.done()
                if finished:
                    future.result()  # raises _Crashed if the engine died under the stream
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
            if not req.done:
                self.engine.abort(req)

    # --- oracle and fault control --------------------------------------------------------

    async def sim_state(self, request: web.Request) -> web.Response:
        engine = self.engine
        return _json(
            {
                "model": self.config.model,
                "kind": self.config.kind,
                "running": len(engine.running),
                "queued": len(engine.queue),
                "cache_tokens_used": engine.cache.size,
                "cache_tokens_budget": engine.cache.budget,
                "cache_tokens_evictable": engine.cache.evictable_size,
                "token_usage": engine.token_usage(),
                "requests_served": engine.totals.requests,
                "faults": self.faults.faults.describe(),
                "speed": self.config.speed,
                "steps": engine.steps,
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
            prompts = self._prompt_tokens(data.get("prompt", data.get("input")))
        elif "text" in data or "input_ids" in data:
            try:
                gen = GenerateRequest.model_validate(data)
            except ValidationError as exc:
                raise BadRequest(f"text/input_ids: {exc.errors()[0]['msg']}") from None
            prompts = self._prompt_tokens(gen.input_ids if gen.input_ids is not None else gen.text)
        else:
            raise BadRequest("give `messages`, `prompt`, `input`, `text` or `input_ids`")
        tokens = prompts[0]
        cached = min(self.engine.cache.match(tokens), len(tokens) - 1)
        return _json({"cached_tokens": cached, "prompt_tokens": len(tokens)})

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
            await self.set_faults(spec)
        except FaultSpecError as exc:
            raise BadRequest(str(exc), param="spec") from None
        return _json({"faults": self.faults.faults.describe()})


class SimThread:
    """A `SimServer` on its own event loop thread, for synchronous code and tests."""

    def __init__(self, config: SimConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config
        self._host = host
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: SimServer | None = None

    @property
    def server(self) -> SimServer:
        if self._server is None:
            raise RuntimeError("the simulated engine is not running")
        return self._server

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def engine(self) -> Engine:
        return self.server.engine

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def start(self) -> SimThread:
        self._thread.start()

        async def start() -> SimServer:
            server = SimServer(self.config, self._host, self._port)
            await server.start()
            return server

        try:
            self._server = self._call(start())
        except BaseException:
            self.stop()  # do not leave the loop thread behind
            raise
        return self

    def set_faults(self, spec: str) -> None:
        self._call(self.server.set_faults(spec))

    def stop(self) -> None:
        if self._server is not None:
            self._call(self._server.stop())
            self._server = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()

    def __enter__(self) -> SimThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
