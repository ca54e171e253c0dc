"""One OpenAI-compatible request over aiohttp, timed: the path of the contenders that speak
HTTP to one base URL themselves (the seed's client, SGLang's router, the oracle).

Streams are read as server-sent events (`data: {...}` lines, ending with `data: [DONE]`);
the time to the first chunk carrying content is the TTFT. `stream_options.include_usage`
asks for the usage chunk at the end, where SGLang reports cached tokens.
"""

from __future__ import annotations

import time
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
            return await _read_stream(resp, start)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return Outcome(ok=False, e2e_s=time.monotonic() - start, streamed=stream,
                       error=f"{type(exc).__name__}: {exc}")


async def _read_stream(resp: aiohttp.ClientResponse, start: float) -> Outcome:
    ttft: float | None = None
    parts: list[str] = []
    usage: dict[str, Any] | None = None
    done = False
    async for raw in resp.content:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            done = True
            break
        event = orjson.loads(payload)
        if event.get("usage"):
            usage = event["usage"]
        for choice in event.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                if ttft is None:
                    ttft = time.monotonic() - start
                parts.append(piece)
    e2e = time.monotonic() - start
    if not done:
        return Outcome(ok=False, e2e_s=e2e, ttft_s=ttft, streamed=True,
                       error="stream ended before data: [DONE]")
    p, c, o = usage_counts(usage)
    return Outcome(ok=True, e2e_s=e2e, ttft_s=ttft, prompt_tokens=p, cached_tokens=c,
                   completion_tokens=o, text="".join(parts), streamed=True)


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
