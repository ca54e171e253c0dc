"""A worker's speed before its first answer: one short streamed generation, at start.

The seed probed every server with a 256-token generation before each choice; this is one
short stream per worker when the router starts, for policies that weigh speed
(`Policy.prepare`), so an opening burst does not treat a half-speed engine as an equal.
`/get_server_info` (SGLang) adds `max_running_requests`; an engine without it is fine.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from modelserver.errors import WorkerError
from modelserver.routing.transport import Transport
from modelserver.routing.worker import Worker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpeedSample:
    decode_s_per_token: float
    ttft_s: float
    max_running: int | None = None


async def probe_speed(
    worker: Worker,
    transport: Transport,
    headers: Mapping[str, str],
    clock: Callable[[], float],
    tokens: int = 16,
    timeout_s: float = 30.0,
) -> SpeedSample | None:
    """Stream `tokens` tokens of a prompt no cache holds; None if the worker cannot say."""
    max_running = await _max_running(worker, transport, headers, timeout_s)
    body = orjson.dumps(
        {
            "model": worker.model,
            # Random words: no prefix cache anywhere holds them, so the prefill is real.
            "prompt": " ".join(secrets.token_hex(3) for _ in range(32)),
            "max_tokens": tokens,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
        }
    )
    start = clock()
    first: float | None = None
    events = 0
    try:
        answer = await transport.send(
            "POST",
            worker.url + "/v1/completions",
            body=body,
            headers=headers,
            timeout_s=timeout_s,
            stream=True,
        )
        if answer.status >= 400:
            await answer.read()
            return None
        try:
            async for chunk in answer.chunks():
                count = chunk.count(b"data: ") - chunk.count(b"data: [DONE]")
                if count and first is None:
                    first = clock()
                    count -= 1
                events += count
        finally:
            answer.release()
    except WorkerError as exc:
        log.info("speed probe of %s failed: %s", worker.url, exc.reason)
        return None
    end = clock()
    if first is None or events < 1:
        return None
    return SpeedSample((end - first) / events, first - start, max_running)


async def _max_running(
    worker: Worker, transport: Transport, headers: Mapping[str, str], timeout_s: float
) -> int | None:
    try:
        answer = await transport.send(
            "GET", worker.url + "/get_server_info", headers=headers, timeout_s=timeout_s
        )
        data = await answer.read()
    except WorkerError:
        return None
    if answer.status >= 400:
        return None
    try:
        info: Any = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    value = info.get("max_running_requests") if isinstance(info, dict) else None
    return value if isinstance(value, int) and value > 0 else None
