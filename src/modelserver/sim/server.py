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

`SimServer` runs it in the caller's event loop (`async with SimServer(cfg) as sim`); the
routes live in info_routes.py, generation_routes.py and oracle_routes.py; thread.py has
`SimThread` for synchronous code. This module holds the server's life: listening, faults,
and the loop that drives the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from modelserver.sim.config import SimConfig
from modelserver.sim.engine import Engine, Request, RequestTooLarge
from modelserver.sim.faults import FaultState, parse_faults
from modelserver.sim.generation_routes import GenerationRoutes
from modelserver.sim.info_routes import InfoRoutes
from modelserver.sim.kv_events import KvEventPublisher
from modelserver.sim.language_model import next_words, weights_seed
from modelserver.sim.metrics import SimMetrics
from modelserver.sim.oracle_routes import OracleRoutes
from modelserver.sim.priority import scheduling_of
from modelserver.sim.protocol import BadRequest, EngineDied, error_response, json_response

_UNAUTHENTICATED_PREFIXES = ("/health", "/metrics", "/sim/")
# How far behind its planned timeline the engine may fall and still catch up.
CATCH_UP_SECONDS = 0.05
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class SimServer:
    """One simulated SGLang engine listening on `host:port` (port 0: any free port)."""

    def __init__(
        self,
        config: SimConfig,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        on_crash: Callable[[], None] | None = None,
        fault_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`fault_clock` is the clock fault times count on (tests move their own)."""
        self.config = config
        self._weights = weights_seed(config.model)
        self.host = host
        self.port = port
        self._on_crash = on_crash
        self.fault_clock = fault_clock
        events = config.kv_events
        self.kv_events = KvEventPublisher(events, config.page_size) if events.enabled else None
        self.aborted = 0
        """Requests dropped because their client went away (a hedge's loser, ...)."""
        self.engine = self._new_engine()
        self.metrics = SimMetrics(self.engine, config.model)
        self.faults = FaultState(parse_faults(config.faults), fault_clock(), config.seed)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._driver: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._unhang = asyncio.Event()
        self._crash_timer: asyncio.TimerHandle | None = None
        self._refusal_timer: asyncio.TimerHandle | None = None
        self._refusal_end: asyncio.Task[None] | None = None
        self._in_flight: dict[asyncio.Future[None], Callable[[], None] | None] = {}
        self._crashed = False
        self._stopping = False
        self.engine_held = False  # the engine loop is parked by `hang`
        self.started_at = time.time()

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
            if self.kv_events is not None:
                await self.kv_events.start()
            await self._listen()
        except OSError:
            await self.stop()  # nothing half-started: the port was taken
            raise
        self._driver = asyncio.create_task(self._drive(), name=f"sim-engine-{self.port}")
        self._apply_faults_at_start()

    async def stop(self) -> None:
        self._stopping = True
        self._cancel_timers()
        if self._driver is not None:
            self._driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._driver
            self._driver = None
        self._fail_in_flight()
        self._unhang.set()
        if self.kv_events is not None:
            await self.kv_events.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._site = None

    async def set_faults(self, spec: str) -> None:
        """Replace the faults in force (raises FaultSpecError for a bad spec)."""
        faults = parse_faults(spec)
        self.faults.replace(faults, self.fault_clock())
        self._cancel_timers()
        if self._crashed and not faults.refuse:
            self._restart()
        if faults.refuse or self._crashed:
            await self._stop_listening()
        else:
            await self._listen()
        if faults.hang:
            self._unhang.clear()
        else:
            self._unhang.set()
        self._schedule_timers()

    def _apply_faults_at_start(self) -> None:
        faults = self.faults.faults
        if faults.hang:
            self._unhang.clear()
        else:
            self._unhang.set()
        if faults.refuse:
            asyncio.get_running_loop().create_task(self._stop_listening())
        self._schedule_timers()

    def _restart(self) -> None:
        """The engine comes back after a crash: empty cache, nothing running."""
        self._crashed = False
        self.engine = self._new_engine()
        self.metrics = SimMetrics(self.engine, self.config.model)
        if self.kv_events is not None:
            self.kv_events.cleared()  # as a restarted SGLang's empty cache: all blocks gone
            self.kv_events.flush()

    def _new_engine(self) -> Engine:
        engine = Engine(
            self.config.perf,
            self.config.effective_max_running,
            self.config.effective_cache_tokens,
            self.config.scheduler,
        )
        engine.scheduling = scheduling_of(self.config)
        engine.cache.listener = self.kv_events
        return engine

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

    def _schedule_timers(self) -> None:
        loop = asyncio.get_running_loop()
        due = self.faults.crash_due_at()
        if due is not None:
            self._crash_timer = loop.call_later(max(0.0, due - self.fault_clock()), self._crash)
        ends = self.faults.refusal_ends_at()
        if ends is not None:
            self._refusal_timer = loop.call_later(
                max(0.0, ends - self.fault_clock()), self._on_refusal_over
            )

    def _cancel_timers(self) -> None:
        for timer in (self._crash_timer, self._refusal_timer):
            if timer is not None:
                timer.cancel()
        self._crash_timer = self._refusal_timer = None

    def _on_refusal_over(self) -> None:
        self._refusal_timer = None
        self._refusal_end = asyncio.get_running_loop().create_task(self._end_refusal())

    async def _end_refusal(self) -> None:
        """`refuse=T` is over: listen again (a crashed engine comes back restarted)."""
        if self._stopping:
            return
        self.faults.lift_refusal()
        if self._crashed:
            self._restart()
        await self._listen()

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
                future.set_exception(EngineDied())
                future.exception()  # retrieved here: a waiter may never come back for it
            if on_progress is not None:
                on_progress()

    async def _drive(self) -> None:
        """Run engine steps on the asyncio clock, sleeping for each step's GPU time.

        Steps are laid end to end on a planned timeline: a sleep that overshoots (a busy
        machine) is made up by the next steps instead of slowing the simulated GPU down, as
        long as the lag stays under CATCH_UP_SECONDS. Engine times are the planned ones, so
        `meta_info` latencies and the metrics follow the model, not the host's load.
        """
        loop = asyncio.get_running_loop()
        planned_end = loop.time()
        while True:
            if not self._unhang.is_set():
                planned_end = await self._wait_out_hang(planned_end)
            engine = self.engine
            now = loop.time()
            start = planned_end if now - planned_end < CATCH_UP_SECONDS else now
            if engine.queue:  # never start a step before the newest waiting request arrived
                start = max(start, engine.queue[-1].arrival)
            step = engine.begin_step(start)
            if step is None:
                self._wake.clear()
                await self._wake.wait()
                planned_end = loop.time()
                continue
            planned_end = start + step.duration * self.faults.latency_multiplier(self.fault_clock())
            await asyncio.sleep(max(0.0, planned_end - loop.time()))
            if not self._unhang.is_set():  # the step under way never ends on a hung GPU
                planned_end = await self._wait_out_hang(planned_end)
            engine.complete_step(step, planned_end)
            if self.kv_events is not None:
                self.kv_events.flush()

    async def _wait_out_hang(self, planned_end: float) -> float:
        """Hold the engine loop while `hang` is in force: a hung GPU runs no step at all.

        Returns the time the timeline resumes from: the end of the hang, so latencies on
        the engine's clock include it, as a client of a hung engine would see.
        """
        self.engine_held = True
        try:
            await self._unhang.wait()
        finally:
            self.engine_held = False
        return max(planned_end, asyncio.get_running_loop().time())

    # --- requests through the engine -----------------------------------------------------

    def new_request(
        self,
        tokens: list[int],
        max_new: int,
        *,
        stream: bool = False,
        spaced_first: bool = False,
        priority: int | None = None,
    ) -> Request:
        """A request for `max_new` words after `tokens`, chosen by the model's weights (the
        same in every replica of the model; see language_model.py)."""
        words = next_words(tokens, max_new, self._weights, spaced_first=spaced_first)
        loop = asyncio.get_running_loop()
        return Request(
            tokens, max_new, loop.time(), words=words, stream=stream, spaced_first=spaced_first,
            priority=priority or 0,
        )

    async def admit(
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

    async def wait_all(self, requests: list[Request], futures: list[asyncio.Future[None]]) -> None:
        try:
            await asyncio.gather(*futures)
        finally:
            for request in requests:
                self.abort(request)

    def abort(self, request: Request) -> None:
        """Drop a request whose client went away; counted in `aborted` (/sim/state)."""
        if not request.done:
            self.aborted += 1
            self.engine.abort(request)

    async def gate(self, http: web.Request) -> web.StreamResponse | None:
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
                raise EngineDied()
        return None

    async def wait_unhung(self, within: float) -> bool:
        """Wait up to `within` seconds for a hang to be lifted; True if it was."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._unhang.wait(), within)
            return True
        return False

    def require_kind(self, kind: str) -> None:
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

    # --- HTTP plumbing -------------------------------------------------------------------

    def _middlewares(self) -> list[Any]:
        api_key = self.config.api_key

        @web.middleware
        async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
            try:
                return await handler(request)
            except BadRequest as exc:
                return error_response(exc.message, exc.status, exc.param)
            except EngineDied:
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
                return json_response({"error": "Unauthorized"}, status=401)
            return await handler(request)

        return [auth, errors]

    def _add_routes(self, app: web.Application) -> None:
        for routes in (InfoRoutes(self), GenerationRoutes(self), OracleRoutes(self)):
            routes.add_to(app.router)
