"""The gateway's own OpenAPI description, served at `/openapi.json`.

It describes what the gateway itself checks (the model, the fields it routes on, auth) and
leaves the rest of each body open, because bodies pass through to the engines unchanged.
Fuzzers (schemathesis) read it to generate requests.
"""

from __future__ import annotations

from typing import Any

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}

_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"type": "string"},
        "content": {"anyOf": [{"type": "string"}, {"type": "array"}, {"type": "null"}]},
    },
}


def _body(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["model", *required],
                    "properties": {
                        "model": {"type": "string"},
                        "stream": {"type": "boolean"},
                        **properties,
                    },
                    "additionalProperties": True,
                }
            }
        },
    }


def _answers(ok: str) -> dict[str, Any]:
    error = {"content": {"application/json": {"schema": _ERROR}}}
    return {
        "200": {"description": ok},
        "400": {"description": "invalid JSON or a field of the wrong type", **error},
        "401": {"description": "missing or wrong API key", **error},
        "404": {"description": "unknown model", **error},
        "413": {"description": "body larger than the limit", **error},
        "422": {"description": "the engine refused the request", **error},
        "429": {"description": "the caller's tenant is over a limit (requests per second,"
                " tokens per minute, requests in flight; see Retry-After), or every attempt was"
                " refused by an engine with 429", **error},
        "502": {"description": "every attempt failed, or the engine's answer was not valid",
                **error},
        "503": {"description": "no healthy worker for the model, or every attempt was"
                " refused with 503 (or 429)", **error},
        "504": {"description": "no worker answered before the deadline", **error},
    }


def _post(summary: str, body: dict[str, Any], ok: str) -> dict[str, Any]:
    return {"post": {"summary": summary, "requestBody": body, "responses": _answers(ok)}}


def openapi_document() -> dict[str, Any]:
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
    admin_answers = {
        "200": {"description": "done"},
        "400": {"description": "bad request", "content": {"application/json": {"schema": _ERROR}}},
        "401": {"description": "missing or wrong admin key"},
        "404": {"description": "no such worker"},
    }
    url_body = {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["url"],
                    "properties": {"url": {"type": "string"}},
                }
            }
        },
    }
    add_body = {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["model", "url"],
                    "properties": {
                        "model": {"type": "string"},
                        "url": {"type": "string"},
                        "kind": {"type": "string", "enum": ["chat", "embedding"]},
                        "api_key": {"type": "string", "pattern": "^[!-~]+$"},
                    },
                }
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "ModelServer gateway", "version": "1"},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": bearer,
        "paths": {
            "/v1/chat/completions": _post(
                "Chat completion, streamed or not",
                _body(["messages"], {"messages": {"type": "array", "items": _MESSAGE}}),
                "the engine's answer (JSON, or an SSE stream ending with data: [DONE])",
            ),
            "/v1/completions": _post(
                "Text completion, streamed or not",
                _body(
                    ["prompt"],
                    {"prompt": {"anyOf": [{"type": "string"}, {"type": "array"}]}},
                ),
                "the engine's answer",
            ),
            "/v1/embeddings": _post(
                "Embeddings",
                _body(["input"], {"input": {"anyOf": [{"type": "string"}, {"type": "array"}]}}),
                "one vector per input",
            ),
            "/v1/models": {
                "get": {
                    "summary": "The fleet's models and their healthy workers",
                    "responses": {"200": {"description": "an OpenAI model list"}},
                }
            },
            "/health": {
                "get": {
                    "summary": "200 while every model has a healthy worker, else 503",
                    "security": [],
                    "responses": {"200": {"description": "healthy"}, "503": {"description": "not"}},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "security": [],
                    "responses": {"200": {"description": "text exposition format"}},
                }
            },
            "/admin/workers": {
                "get": {"summary": "Workers and their stats", "responses": admin_answers},
                "post": {
                    "summary": "Add a worker",
                    "requestBody": add_body,
                    "responses": admin_answers,
                },
                "delete": {
                    "summary": "Remove a worker",
                    "requestBody": url_body,
                    "responses": admin_answers,
                },
            },
            "/admin/workers/drain": {
                "post": {
                    "summary": "Drain a worker: no new requests, in-flight ones finish",
                    "requestBody": url_body,
                    "responses": admin_answers,
                }
            },
            "/admin/workers/undrain": {
                "post": {
                    "summary": "Put a drained worker back in rotation",
                    "requestBody": url_body,
                    "responses": admin_answers,
                }
            },
            "/admin/tenants": {
                "get": {
                    "summary": "Tenants: priority, weight, limits and live usage (no keys)",
                    "responses": admin_answers,
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This description",
                    "security": [],
                    "responses": {"200": {"description": "an OpenAPI 3.1 document"}},
                }
            },
        },
    }
