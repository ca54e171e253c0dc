"""Shared test doubles for routing tests: a fake clock, recorded sleeps, canned answers."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import orjson

from modelserver.config import RouterConfig
from modelserver.routing import MockRequest, MockResponse, MockTransport, Router, WorkerEntry
from modelserver.routing.events import AttemptResult, RouterObserver


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordedSleep:
    """An `asyncio.sleep` stand-in: records the delay and moves the fake clock on."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.clock.advance(seconds)
        await asyncio.sleep(0)  # still let other tasks run, as a real sleep would


def chat_answer(
    text: str = "hello", completion_tokens: int = 10, cached: int = 0, prompt_tokens: int = 20
) -> MockResponse:
    return MockResponse(
        json={
            "id": "x",
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": cached},
            },
        }
    )


def sse(*pieces: str) -> list[bytes]:
    chunks = [
        b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": {"content": p}}]}) + b"\n\n"
        for p in pieces
    ]
    return [*chunks, b"data: [DONE]\n\n"]


def error_answer(status: int, message: str) -> MockResponse:
    return MockResponse(status=status, json={"error": {"message": message, "code": status}})


class Recorder(RouterObserver):
    def __init__(self) -> None:
        self.attempts: list[tuple[str, int]] = []
        self.results: list[AttemptResult] = []
        self.retries: list[tuple[str, float]] = []
        self.no_healthy: list[dict[str, str]] = []

    def on_attempt(self, model: str, worker: str, attempt: int, path: str) -> None:
        self.attempts.append((worker, attempt))

    def on_result(self, result: AttemptResult) -> None:
        self.results.append(result)

    def on_retry(
        self, model: str, failed_worker: str, error: str, next_attempt: int, backoff_s: float
    ) -> None:
        self.retries.append((failed_worker, backoff_s))

    def on_no_healthy_worker(self, model: str, reasons: dict[str, str]) -> None:
        self.no_healthy.append(reasons)


URLS = ["http://w1:1", "http://w2:2", "http://w3:3"]


def make_router(
    handler: Callable[[MockRequest], Any],
    urls: list[str] | None = None,
    *,
    policy: str = "round_robin",
    clock: FakeClock | None = None,
    extra: list[WorkerEntry] | None = None,
    **config: Any,
) -> tuple[Router, MockTransport, FakeClock, RecordedSleep, Recorder]:
    clock = clock or FakeClock()
    sleep = RecordedSleep(clock)
    transport = MockTransport(handler)
    recorder = Recorder()
    entries = [WorkerEntry("m", url) for url in (urls or URLS)] + list(extra or [])
    router = Router(
        entries,
        config=RouterConfig.model_validate({"policy": policy, **config}),
        transport=transport,
        clock=clock,
        sleep=sleep,
        observers=[recorder],
        rng=random.Random(0),
    )
    return router, transport, clock, sleep, recorder


CHAT = "/v1/chat/completions"


def chat_body(text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], **extra}
