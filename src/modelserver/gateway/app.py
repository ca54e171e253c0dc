"""The OpenAI-compatible front of a fleet: one URL, the client library's router behind it.

Request path: auth middleware -> read the body (size-limited) -> find `model` and `stream`
-> `Router.forward` (the one routing implementation: policy, failover, breaker) -> the
engine's answer, passed through byte for byte; a stream is relayed chunk by chunk as it
arrives. Everything the gateway answers on its own is in OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from modelserver.config import GatewayConfig
from modelserver.errors import (
    ClientClosed,
    DeadlineExceeded,
    EngineRejected,
    NoHealthyWorker,
    UnknownModel,
    WorkerError,
    WrongModelKind,
)
from modelserver.gateway.attempts import overload_status
from modelserver.gateway.auth import KeyRing
from modelserver.gateway.errors import error_body, error_response
from modelserver.gateway.metrics import GatewayMetrics
from modelserver.gateway.openapi import openapi_document
from modelserver.routing.router import RoutedResponse, Router

log = logging.getLogger(__name__)

PROXIED_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
CLIENT_CLOSED = 499
ROUTER_KEY: web.AppKey[Router] = web.AppKey("router", Router)
METRICS_KEY: web.AppKey[GatewayMetrics] = web.AppKey("metrics", GatewayMetrics)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        self.param = param
        self.status = status
        super().__init__(message)


def build_app(router: Router, config: GatewayConfig, keys: KeyRing) -> web.Application:
    """The aiohttp application; the caller owns the router's lifecycle (start/close)."""
    metrics = GatewayMetrics(router)
    router.add_observer(metrics)
    app = web.Application(
        client_max_size=config.max_body_bytes,
        middlewares=[
            _error_middleware(metrics, config.max_body_bytes),
            _auth_middleware(keys),
            _body_limit_middleware(config.max_body_bytes),
        ],
    )
    app[ROUTER_KEY] = router
    app[METRICS_KEY] = metrics
    for path in PROXIED_ROUTES:
        app.router.add_post(path, _proxy_handler(path, config.body_timeout_s))
    app.router.add_get("/v1/models", _list_models)
    app.router.add_get("/health", _health)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/openapi.json", _openapi)
    app.router.add_get("/admin/workers", _admin_list)
    app.router.add_post("/admin/workers", _admin_add)
    app.router.add_delete("/admin/workers", _admin_remove)
    app.router.add_post("/admin/workers/drain", _admin_drain)
    app.router.add_post("/admin/workers/undrain", _admin_undrain)
    return app


# -- middlewares -----------------------------------------------------------------------------


def _auth_middleware(keys: KeyRing) -> Any:
    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        authorization = request.headers.get("Authorization")
        if path.startswith("/admin") and not keys.allows_admin(authorization):
            return error_response(
                401, "an admin key is required: Authorization: Bearer KEY", code="invalid_api_key"
            )
        if path.startswith("/v1") and not keys.allows_api(authorization):
            return error_response(
                401,
                "a valid API key is required: Authorization: Bearer KEY",
                code="invalid_api_key",
            )
        return await handler(request)

    return auth


def _body_limit_middleware(max_body_bytes: int) -> Any:
    """A Content-Length over the limit is refused before waiting for a body that may never
    come (aiohttp would only refuse once that many bytes had arrived)."""

    @web.middleware
    async def body_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        length = request.content_length
        if length is None or length <= max_body_bytes:
            return await handler(request)
        response = _body_too_large(max_body_bytes)
        # The body stays unread, so this connection cannot carry another request.
        response.force_close()
        return response

    return body_limit


def _body_too_large(max_body_bytes: int) -> web.Response:
    return error_response(
        413, f"request body larger than the limit of {max_body_bytes} bytes", code="body_too_large"
    )


def _error_middleware(metrics: GatewayMetrics, max_body_bytes: int) -> Any:
    """Every answer in OpenAI's shape; nothing escapes as a traceback."""

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        try:
            response = await handler(request)
        except web.HTTPRequestEntityTooLarge:  # a chunked body that grew past the limit
            response = _body_too_large(max_body_bytes)
        except web.HTTPException as exc:  # 404 no route, 405 wrong method, ...
            if exc.status < 400:
                raise
            response = error_response(exc.status, exc.reason, headers=_allow_header(exc))
        except ConnectionResetError:
            # The caller went away before its body was all there (Content-Length promised
            # more): nobody to answer and nothing wrong here. Counted as 499, nginx's
            # "client closed request", so it is neither a 500 nor lost from the metrics.
            log.info(
                "caller left during %s %s before sending its whole body",
                request.method,
                request.path,
            )
            response = error_response(CLIENT_CLOSED, "the request body was cut off")
        except Exception:
            log.exception("gateway error on %s %s", request.method, request.path)
            response = error_response(500, "internal gateway error; see the gateway's log")
        metrics.answered(name, response.status)
        return response

    return errors


def _allow_header(exc: web.HTTPException) -> dict[str, str] | None:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else None


# -- the proxied routes ----------------------------------------------------------------------


def _proxy_handler(path: str, body_timeout_s: float) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        router = request.app[ROUTER_KEY]
        try:
            async with asyncio.timeout(body_timeout_s):
                raw = await request.read()
        except TimeoutError:
            response = error_response(
                408,
                f"the request body did not arrive within {body_timeout_s:g} s",
                code="body_timeout",
            )
            # The rest of the body may still come; this connection cannot carry another
            # request, so close it rather than hold it open until the client gives up.
            response.force_close()
            return response
        try:
            body, model, stream = _routing_fields(raw)
            routed = await router.forward(model, path, raw, stream=stream, parsed=body)
        except _BadRequest as exc:
            return error_response(exc.status, str(exc), param=exc.param)
        except UnknownModel as exc:
            return error_response(404, str(exc), code="model_not_found", param="model")
        except WrongModelKind as exc:
            return error_response(400, str(exc), code="wrong_model_kind", param="model")
        except EngineRejected as exc:
            return _engine_rejection(exc)
        except NoHealthyWorker as exc:
            return error_response(
                503, str(exc), code="no_healthy_worker", headers={"Retry-After": "1"}
            )
        except ClientClosed as exc:  # the gateway is shutting down under this request
            return error_response(503, str(exc), code="shutting_down")
        except DeadlineExceeded as exc:
            overloaded = overload_status(exc.statuses)
            if overloaded is not None:
                # The engine's own Retry-After does not reach the gateway (the router reports
                # statuses only); the gateway's hint is the one it gives with no_healthy_worker.
                return error_response(
                    overloaded, str(exc), code="engines_overloaded", headers={"Retry-After": "1"}
                )
            if exc.timed_out:
                return error_response(504, str(exc), code="deadline_exceeded")
            return error_response(502, str(exc), code="all_attempts_failed")
        if routed.chunks is None:
            return _whole_answer(routed)
        return await _relay_stream(request, routed)

    return handle


def _routing_fields(raw: bytes) -> tuple[dict[str, Any], str, bool]:
    """The body decoded, and the two fields the gateway needs from it; the bytes themselves
    go on to the engine untouched."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _BadRequest("the body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("`model` is required and must be a non-empty string", param="model")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _BadRequest("`stream` must be true or false", param="stream")
    return body, model, stream


def _engine_rejection(exc: EngineRejected) -> web.Response:
    status = exc.status or 400
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")
    message = body.get("message") if isinstance(body, dict) else None
    return error_response(status, str(message or exc), code="engine_rejected")


def _whole_answer(routed: RoutedResponse) -> web.Response:
    # The router only returns a whole answer whose body parsed as JSON, so say so even when
    # the engine labelled it otherwise (OpenAI clients read the body by its content type).
    return web.Response(
        status=routed.status,
        body=routed.body,
        headers={"Content-Type": "application/json", "X-ModelServer-Worker": routed.worker},
    )


async def _relay_stream(request: web.Request, routed: RoutedResponse) -> web.StreamResponse:
    """Pass SSE bytes on as they arrive. If the caller goes away, close the engine request."""
    response = web.StreamResponse(
        status=routed.status,
        headers={
            "Content-Type": routed.headers.get("content-type", "text/event-stream"),
            "Cache-Control": "no-cache",
            "X-ModelServer-Worker": routed.worker,
        },
    )
    chunks = routed.chunks
    assert chunks is not None
    try:
        await response.prepare(request)
        async for chunk in chunks:
            await response.write(chunk)
    except (ConnectionResetError, ConnectionError):
        log.info("caller left a stream from %s; engine request closed", routed.worker)
        return response
    except WorkerError as exc:
        # The router resumes a broken stream on another worker (routing/resume.py); what
        # reaches here could not be resumed (StreamBroken says why) or resume is off. The
        # first chunk is already out, so the caller is told in the stream.
        with contextlib.suppress(ConnectionError):
            await response.write(b"data: " + error_body(502, str(exc), "worker_failed") + b"\n\n")
        return response
    finally:
        await routed.aclose()
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response


# -- fleet views -----------------------------------------------------------------------------


async def _list_models(request: web.Request) -> web.Response:
    router = request.app[ROUTER_KEY]
    counts = _health_counts(router)
    data = [
        {
            "id": model,
            "object": "model",
            "created": 0,
            "owned_by": "modelserver",
            "kind": kind,
            "workers": counts[model][0],
            "healthy_workers": counts[model][1],
        }
        for model, kind in sorted(router.models().items())
    ]
    return web.json_response({"object": "list", "data": data}, dumps=_dumps)


async def _health(request: web.Request) -> web.Response:
    counts = _health_counts(request.app[ROUTER_KEY])
    down = sorted(model for model, (_, healthy) in counts.items() if healthy == 0)
    body: dict[str, Any] = {
        "status": "ok" if not down else "unavailable",
        "models": {model: {"workers": t, "healthy": h} for model, (t, h) in counts.items()},
    }
    if down:
        body["reason"] = "no healthy worker for: " + ", ".join(down)
    return web.json_response(body, status=200 if not down else 503, dumps=_dumps)


def _health_counts(router: Router) -> dict[str, tuple[int, int]]:
    counts = {model: [0, 0] for model in router.models()}
    for stats in router.workers():
        pair = counts.setdefault(stats.model, [0, 0])
        pair[0] += 1
        pair[1] += stats.status == "up"
    return {model: (total, up) for model, (total, up) in counts.items()}


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS_KEY].exposition()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(), dumps=_dumps)


# -- admin -----------------------------------------------------------------------------------


async def _admin_list(request: web.Request) -> web.Response:
    stats = [dataclasses.asdict(s) for s in request.app[ROUTER_KEY].workers()]
    return web.json_response({"workers": stats}, dumps=_dumps)


async def _admin_add(request: web.Request) -> web.Response:
    """Body: `model`, `url`, optional `kind` and `api_key` (the engine's own key; without
    one the worker gets the key the model's other workers use)."""
    body = await _admin_body(request, ("model", "url"))
    kind = body.get("kind", "chat")
    api_key = body.get("api_key")
    if api_key is not None and not _is_bearer_token(api_key):
        return error_response(
            400,
            "`api_key` must be a non-empty string of visible ASCII characters"
            " (it is sent to the engine as Authorization: Bearer KEY)",
            param="api_key",
        )
    router = request.app[ROUTER_KEY]
    try:
        worker = router.add_worker(str(body["model"]), str(body["url"]), str(kind), api_key=api_key)
    except (ValueError, WrongModelKind) as exc:
        return error_response(400, str(exc))
    return web.json_response({"added": worker.url, "model": worker.model}, dumps=_dumps)


def _is_bearer_token(value: Any) -> bool:
    # Visible ASCII only: a space, CR or LF in a header would end or split it.
    return isinstance(value, str) and bool(value) and all("!" <= c <= "~" for c in value)


async def _admin_remove(request: web.Request) -> web.Response:
    url = await _admin_url(request)
    try:
        request.app[ROUTER_KEY].remove_worker(url)
    except KeyError as exc:
        return error_response(404, str(exc.args[0]))
    return web.json_response({"removed": url}, dumps=_dumps)


async def _admin_drain(request: web.Request) -> web.Response:
    return await _admin_toggle(request, drain=True)


async def _admin_undrain(request: web.Request) -> web.Response:
    return await _admin_toggle(request, drain=False)


async def _admin_toggle(request: web.Request, drain: bool) -> web.Response:
    url = await _admin_url(request)
    router = request.app[ROUTER_KEY]
    try:
        (router.drain if drain else router.undrain)(url)
        in_flight = router.worker(url).in_flight
    except KeyError as exc:
        return error_response(404, str(exc.args[0]))
    return web.json_response({"url": url, "draining": drain, "in_flight": in_flight}, dumps=_dumps)


async def _admin_url(request: web.Request) -> str:
    if "url" in request.query:
        return request.query["url"]
    return str((await _admin_body(request, ("url",)))["url"])


async def _admin_body(request: web.Request, required: tuple[str, ...]) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise web.HTTPBadRequest(reason=f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(reason="the body must be a JSON object")
    for key in required:
        if not isinstance(body.get(key), str) or not body[key]:
            raise web.HTTPBadRequest(reason=f"`{key}` is required and must be a string")
    return body


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
