"""SGLang's informational routes: health, model and server info, model list, cache flush,
Prometheus metrics.

Names and bodies from python/sglang/srt/entrypoints/http_server.py (current: `/model_info`,
`/server_info`, with `/get_model_info` and `/get_server_info` kept as deprecated aliases) and
python/sglang/srt/server.py (0.2-0.3: `/get_model_info`, `/get_server_args`, a `/health`
that only says the HTTP server is up and a `/health_generate` that runs one token).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from modelserver.sim.perf import CONTEXT_LENGTH
from modelserver.sim.protocol import json_response

if TYPE_CHECKING:
    from modelserver.sim.server import SimServer

VERSION = "0.5.0-sim"  # reported as SGLang's `version`; the suffix says what answered
# SGLang's /health waits this long for its probe generation before answering 503
# (HEALTH_CHECK_TIMEOUT in http_server.py, env SGLANG_HEALTH_CHECK_TIMEOUT, default 20 s).
HEALTH_CHECK_TIMEOUT = 20.0


class InfoRoutes:
    def __init__(self, server: SimServer) -> None:
        self.server = server
        self.served_loads = 0  # how many times a gateway polled /v1/loads (for tests)

    def add_to(self, router: web.UrlDispatcher) -> None:
        router.add_get("/health", self.health)
        router.add_get("/health_generate", self.health_generate)
        for path in ("/model_info", "/get_model_info"):
            router.add_get(path, self.model_info)
        for path in ("/server_info", "/get_server_info"):
            router.add_get(path, self.server_info)
        router.add_get("/get_server_args", self.server_args)
        router.add_get("/v1/models", self.models)
        router.add_get("/v1/models/{model:.+}", self.model_card)
        router.add_route("GET", "/flush_cache", self.flush_cache)
        router.add_route("POST", "/flush_cache", self.flush_cache)
        router.add_get("/metrics", self.prometheus)
        router.add_get("/v1/loads", self.loads)
        router.add_get("/get_load", self.loads)

    async def health(self, request: web.Request) -> web.Response:
        if self.server.faults.starting(self.server.fault_clock()):
            return web.Response(status=503)
        if self.server.faults.faults.hang:
            return await self._hung_health()
        return web.Response(status=200)

    async def health_generate(self, request: web.Request) -> web.Response:
        """SGLang's probe: push a one-token request through the scheduler."""
        if self.server.faults.starting(self.server.fault_clock()):
            return web.Response(status=503)
        if self.server.faults.faults.hang:
            return await self._hung_health()
        max_new = 1 if self.server.config.kind == "chat" else 0
        probe = self.server.new_request([0], max_new)
        probe.log_metrics = False
        await self.server.wait_all([probe], await self.server.admit([probe]))
        return web.Response(status=200)

    async def _hung_health(self) -> web.Response:
        """A hung SGLang answers its health probe 503 after HEALTH_CHECK_TIMEOUT."""
        timeout = HEALTH_CHECK_TIMEOUT / self.server.config.speed
        recovered = await self.server.wait_unhung(timeout)
        return web.Response(status=200 if recovered else 503)

    def _model_info_body(self) -> dict[str, Any]:
        return {
            "model_path": self.server.config.effective_model_path,
            "tokenizer_path": self.server.config.effective_model_path,
            "is_generation": self.server.config.kind == "chat",
            "preferred_sampling_params": None,
            "weight_version": "default",
        }

    async def model_info(self, request: web.Request) -> web.Response:
        return json_response(self._model_info_body())

    def _server_args(self) -> dict[str, Any]:
        """The subset of SGLang's ServerArgs a client or router may read."""
        config = self.server.config
        return {
            "model_path": config.effective_model_path,
            "tokenizer_path": config.effective_model_path,
            "served_model_name": config.model,
            "is_embedding": config.kind == "embedding",
            "host": self.server.host,
            "port": self.server.port,
            "tp_size": 1,
            "dp_size": 1,
            "max_running_requests": self.server.engine.max_running,
            "chunked_prefill_size": self.server.engine.config.chunked_prefill_size,
            "mem_fraction_static": config.effective_mem_fraction_static,
            "context_length": CONTEXT_LENGTH,
            "api_key": None,
            "random_seed": config.seed,
            # SGLang's priority scheduling flags, as its server_info reports them.
            "enable_priority_scheduling": config.priority_scheduling,
            "schedule_low_priority_values_first": config.low_priority_values_first,
            "disable_priority_preemption": not config.priority_preemption,
            "priority_scheduling_preemption_threshold": config.preemption_threshold,
        }

    async def server_info(self, request: web.Request) -> web.Response:
        engine = self.server.engine
        return json_response(
            {
                **self._server_args(),
                "max_total_num_tokens": engine.cache.budget,
                "max_req_input_len": engine.max_req_input_len,
                "internal_states": [
                    {
                        "last_gen_throughput": engine.last_gen_throughput,
                        "num_running_reqs": len(engine.running),
                        "num_queue_reqs": len(engine.queue),
                        # SchedulerStats names (python/sglang/srt/metrics/collector.py)
                        "num_used_tokens": engine.used_tokens(),
                        "token_usage": engine.token_usage(),
                        "new_token_ratio": engine.new_token_ratio,
                        "num_retracted_reqs": engine.last_retracted,
                        "num_retracted_requests_total": engine.totals.retracted_requests,
                        "evicted_tokens_total": engine.cache.evicted_total,
                    }
                ],
                "version": VERSION,
                "sim": {
                    "gpu": self.server.config.gpu_spec.name,
                    "model_size": self.server.config.model_size,
                    "speed": self.server.config.speed,
                    "faults": self.server.faults.faults.describe(),
                },
            }
        )

    async def loads(self, request: web.Request) -> web.Response:
        """SGLang's `/v1/loads` (`/get_load` before it): one entry per data-parallel rank with
        its running and waiting requests and KV use, what SGLang's gateway (smg) polls for
        its load-aware policies (`/v1/loads?include=core,...` in smg 1.13). `include` is
        accepted and the core figures are always given."""
        engine = self.server.engine
        self.served_loads += 1
        return json_response({
            "loads": [{
                "dp_rank": 0,
                "num_running_reqs": len(engine.running),
                "num_waiting_reqs": len(engine.queue),
                "num_reqs": len(engine.running) + len(engine.queue),
                "num_used_tokens": engine.used_tokens(),
                "num_tokens": engine.used_tokens(),
                "max_total_num_tokens": engine.cache.budget,
                "token_usage": engine.token_usage(),
                "gen_throughput": engine.last_gen_throughput,
                "cache_hit_rate": engine.last_hit_rate,
            }],
        })

    async def server_args(self, request: web.Request) -> web.Response:
        """SGLang 0.2.x-0.3.x `/get_server_args`: the server arguments alone."""
        return json_response(self._server_args())

    def _model_card(self) -> dict[str, Any]:
        return {
            "id": self.server.config.model,
            "object": "model",
            "created": int(self.server.started_at),
            "owned_by": "sglang",
            "root": self.server.config.model,
            "parent": None,
            "max_model_len": CONTEXT_LENGTH,
        }

    async def models(self, request: web.Request) -> web.Response:
        return json_response({"object": "list", "data": [self._model_card()]})

    async def model_card(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        if name != self.server.config.model:
            return json_response(
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
        return json_response(self._model_card())

    async def flush_cache(self, request: web.Request) -> web.Response:
        flushed = self.server.engine.flush_cache()
        if self.server.kv_events is not None:
            self.server.kv_events.flush()
        return web.Response(
            text="Cache flushed.\nPlease check backend logs for more details. (When there are "
            "running or waiting requests, the operation will not be performed.)\n",
            status=200 if flushed else 400,
        )

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.server.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"}
        )
