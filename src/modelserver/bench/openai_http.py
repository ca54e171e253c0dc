"""One OpenAI-compatible request over aiohttp, timed: the path of the contenders that speak
HTTP to one base URL themselves (the seed's client, SGLang's router, the oracle).

Streams are read as server-sent events (`data: {...}` lines, ending with `data: [DONE]`);
the time to the first chunk carrying content is the TTFT. `stream_options.include_usage`
asks for the usage chunk at the end, where SGLang reports cached tokens.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from modelserver.bench.outcome import Outcome, usage_counts


def client_session() -> aiohttp.ClientSession:
    """A session with no cap on connections (aiohttp's default is 100 at once), so the
    driver never limits a contender's concurrency."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, limit_per_host=0))


def chat_body(
    model: str, messages: list[dict[str, str]], max_tokens: int, stream: bool
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


async def post_chat(
    session: aiohttp.ClientSession,
    base_url: str,
    body: dict[str, Any],
    timeout_s: float,
) -> Outcome:
    """POST /v1/chat/completions; never raises for a failed request (the Outcome says)."""
    start = time.monotonic()
    stream = bool(body.get("stream"))
    try:
        async with session.post(
            f"{base_url}/v1/chat/completions",
            data=orjson.dumps(body),
            headers={"content-type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as resp:
            if resp.status != 200:
                text = (await resp.text())[:300]
                return Outcome(ok=False, e2e_s=time.monotonic() - start, streamed=stream,
                               error=f"HTTP {resp.status}: {text}")
            if not stream:
                data = orjson.loads(await resp.read())
                p, c, o = usage_counts(data.get("usage"))
                content = ((data.get("choices") or [{}])[0].get("message") or {}).get("content")
                return Outcome(ok=True, e2e_s=time.monotonic() - start, prompt_tokens=p,
                               cached_tokens=c, completion_tokens=o, text=content or "")
            return await read_sse(resp.content.iter_any(), start)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return Outcome(ok=False, e2e_s=time.monotonic() - start, streamed=stream,
                       error=f"{type(exc).__name__}: {exc}")


async def read_sse(
    chunks: AsyncIterator[bytes], start: float, worker: str | None = None
) -> Outcome:
    """An OpenAI SSE stream, from raw byte chunks as they arrive, into an Outcome: TTFT at the
    first chunk carrying content, the usage chunk kept, ok only if `data: [DONE]` came.
    Read to the end, so the stream's connection is given back."""
    ttft: float | None = None
    parts: list[str] = []
    usage: dict[str, Any] | None = None
    buffer = b""
    done = False
    async for chunk in chunks:
        buffer += chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            payload = event.strip()
            if not payload.startswith(b"data:"):
                continue
            payload = payload[5:].strip()
            if payload == b"[DONE]":
                done = True
                continue
            data = orjson.loads(payload)
            usage = data.get("usage") or usage
            for choice in data.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    if ttft is None:
                        ttft = time.monotonic() - start
                    parts.append(piece)
    p, c, o = usage_counts(usage)
    return Outcome(ok=done, e2e_s=time.monotonic() - start, ttft_s=ttft, prompt_tokens=p,
                   cached_tokens=c, completion_tokens=o, worker=worker, text="".join(parts),
                   streamed=True, error=None if done else "stream ended before data: [DONE]")


async def post_embedding(
    session: aiohttp.ClientSession, base_url: str, model: str, text: str, timeout_s: float
) -> Outcome:
    start = time.monotonic()
    try:
        async with session.post(
            f"{base_url}/v1/embeddings",
            data=orjson.dumps({"model": model, "input": text}),
            headers={"content-type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as resp:
            if resp.status != 200:
                return Outcome(ok=False, e2e_s=time.monotonic() - start,
                               error=f"HTTP {resp.status}: {(await resp.text())[:300]}")
            data = orjson.loads(await resp.read())
            p, c, _ = usage_counts(data.get("usage"))
            return Outcome(ok=True, e2e_s=time.monotonic() - start, prompt_tokens=p,
                           cached_tokens=c)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return Outcome(ok=False, e2e_s=time.monotonic() - start,
                       error=f"{type(exc).__name__}: {exc}")
