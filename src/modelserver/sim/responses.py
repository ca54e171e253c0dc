"""Response bodies in the shapes SGLang answers with.

OpenAI-compatible bodies follow python/sglang/srt/entrypoints/openai/protocol.py
(ChatCompletionResponse, ChatCompletionStreamResponse, CompletionResponse,
CompletionStreamResponse, EmbeddingResponse, UsageInfo with prompt_tokens_details); the
native /generate body follows python/sglang/srt/managers/tokenizer_manager.py (`text`,
`output_ids`, `meta_info` with id, finish_reason, prompt_tokens, completion_tokens,
cached_tokens, e2e_latency). SGLang fills `prompt_tokens_details` only when started with
`--enable-cache-report`; the simulator always does, because routing is measured with it.
"""

from __future__ import annotations

from typing import Any

import orjson

from modelserver.sim.engine import Request
from modelserver.sim.tokenizer import output_ids, output_text


def sse(body: Any) -> bytes:
    """One server-sent event carrying `body` as JSON."""
    return b"data: " + orjson.dumps(body) + b"\n\n"


def usage(requests: list[Request]) -> dict[str, Any]:
    prompt = sum(r.prompt_tokens for r in requests)
    completion = sum(r.generated for r in requests)
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
        "prompt_tokens_details": {"cached_tokens": sum(r.cached_tokens for r in requests)},
        "reasoning_tokens": 0,
    }


def finish_reason(request: Request) -> str:
    # EOS is not modelled: every answer runs to its token budget.
    return "length"


def chat_completion(rid: str, model: str, created: int, request: Request) -> dict[str, Any]:
    text = output_text(request.words[: request.generated], request.spaced_first)
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": text,
                    "reasoning_content": None,
                    "tool_calls": None,
                },
                "logprobs": None,
                "finish_reason": finish_reason(request),
                "matched_stop": None,
            }
        ],
        "usage": usage([request]),
    }


def chat_chunk(
    rid: str, model: str, created: int, delta: dict[str, Any], finish: str | None
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def completion(rid: str, model: str, created: int, requests: list[Request]) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": i,
                "text": output_text(r.words[: r.generated], r.spaced_first),
                "logprobs": None,
                "finish_reason": finish_reason(r),
                "matched_stop": None,
            }
            for i, r in enumerate(requests)
        ],
        "usage": usage(requests),
    }


def completion_chunk(
    rid: str, model: str, created: int, text: str, finish: str | None
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
    }


def usage_chunk(rid: str, model: str, created: int, obj: str, request: Request) -> dict[str, Any]:
    return {
        "id": rid,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage([request]),
    }


def generate(rid: str, request: Request, generated: int | None = None) -> dict[str, Any]:
    """A native /generate result; `generated` < done for a streamed partial result."""
    count = request.generated if generated is None else generated
    done = request.done and count == request.generated
    meta_info: dict[str, Any] = {
        "id": rid,
        "finish_reason": {"type": "length", "length": count} if done else None,
        "prompt_tokens": request.prompt_tokens,
        "completion_tokens": count,
        "cached_tokens": request.cached_tokens,
    }
    if done and request.finished_at is not None:
        # SGLang's tokenizer manager adds it only once the request has finished.
        meta_info["e2e_latency"] = request.finished_at - request.arrival
    return {
        "text": output_text(request.words[:count]),
        "output_ids": output_ids(request.words[:count]),
        "meta_info": meta_info,
    }


def embeddings(model: str, vectors: list[list[float]], requests: list[Request]) -> dict[str, Any]:
    prompt = sum(r.prompt_tokens for r in requests)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "embedding": vector, "index": i}
            for i, vector in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }
