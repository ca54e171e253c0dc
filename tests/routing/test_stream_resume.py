"""Resuming a broken stream on another worker, with a mock transport: what the new worker
is asked, what the caller reads, and when a stream is not resumed (and says why)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from modelserver.errors import StreamBroken, WorkerTimeout, WorkerUnreachable
from modelserver.routing import MockRequest, MockResponse, Router, WorkerEntry
from modelserver.routing.events import ResumeRecord
from modelserver.routing.resume import LOGPROBS, MANY_CHOICES, data_events
from tests.routing.helpers import URLS, Recorder, chat_body, make_router

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
SSE = {"content-type": "text/event-stream"}
WORDS = ["one", " two", " three", " four", " five", " six"]


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def chat_events(
    rid: str, words: list[str], prompt_tokens: int, *, role: bool = True
) -> list[bytes]:
    """An SGLang-shaped chat stream: a role event, one event per word (the last one with
    finish_reason), a usage event, [DONE]."""
    out = []
    if role:
        out.append(
            event(
                {
                    "id": rid,
                    "model": "m",
                    "created": 7,
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}],
                }
            )
        )
    for i, word in enumerate(words):
        finish = "length" if i == len(words) - 1 else None
        out.append(
            event(
                {
                    "id": rid,
                    "model": "m",
                    "created": 7,
                    "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": finish}],
                }
            )
        )
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": len(words),
        "total_tokens": prompt_tokens + len(words),
    }
    out.append(event({"id": rid, "model": "m", "created": 7, "choices": [], "usage": usage}))
    return [*out, b"data: [DONE]\n\n"]


class Resumes(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.resumes: list[ResumeRecord] = []

    def on_resume(self, record: ResumeRecord) -> None:
        self.resumes.append(record)


def breaking_then_continuing(cut: int, prompt_tokens: int = 20) -> Any:
    """The first worker asked sends `cut` words and breaks (half of the next event is
    sent too); any later one continues from what its request says was delivered."""

    def handler(request: MockRequest) -> MockResponse:
        body = request.json
        if body.get("continue_final_message") or body["messages"][-1]["role"] == "assistant":
            done = body["messages"][-1]["content"]
            start = WORDS.index(" " + done.split(" ")[-1]) + 1 if " " in done else 1
            assert "".join(WORDS[:start]) == done
            return MockResponse(
                chunks=chat_events("other-id", WORDS[start:], prompt_tokens + start), headers=SSE
            )
        events = chat_events("first-id", WORDS, prompt_tokens)
        half = events[cut + 1][:20]
        return MockResponse(
            chunks=[*events[: cut + 1], half, WorkerUnreachable(request.worker, "reset")],
            headers=SSE,
        )

    return handler


async def read_all(router: Router, body: dict[str, Any], path: str = CHAT) -> bytes:
    response = await router.forward("m", path, body, stream=True)
    assert response.chunks is not None
    return b"".join([chunk async for chunk in response.chunks])


def text_of(stream: bytes) -> str:
    pieces = []
    for payload in data_events(stream):
        for choice in payload.get("choices", []):
            pieces.append(choice.get("delta", {}).get("content") or choice.get("text") or "")
    return "".join(pieces)


async def test_a_chat_stream_broken_mid_way_continues_on_another_worker_as_one_stream() -> None:
    recorder = Resumes()
    router, transport, *_ = make_router(breaking_then_continuing(cut=2))
    router.add_observer(recorder)
    body = chat_body(stream=True, max_tokens=6, stream_options={"include_usage": True})
    stream = await read_all(router, body)
    assert text_of(stream) == "".join(WORDS)
    payloads = data_events(stream)
    assert {p["id"] for p in payloads} == {"first-id"}
    assert [p["choices"][0]["delta"].get("role") for p in payloads if p["choices"]].count(
        "assistant"
    ) == 1
    (usage,) = [p["usage"] for p in payloads if p.get("usage")]
    assert usage == {"prompt_tokens": 20, "completion_tokens": 6, "total_tokens": 26}
    assert stream.endswith(b"data: [DONE]\n\n") and stream.count(b"[DONE]") == 1
    first, second = transport.requests
    asked = second.json
    assert second.worker != first.worker
    assert asked["messages"][-1] == {"role": "assistant", "content": "one two"}
    assert asked["continue_final_message"] is True and asked["add_generation_prompt"] is False
    assert asked["max_tokens"] == 4
    (record,) = recorder.resumes
    assert record.failed_worker == first.worker and record.worker == second.worker
    assert record.delivered_tokens == 2
    assert router.worker(first.worker).errors == 1


async def test_a_llamacpp_worker_is_asked_without_the_fields_its_server_does_not_need() -> None:
    entries = [WorkerEntry("m", URLS[0]), WorkerEntry("m", URLS[1], backend="llamacpp")]
    router, transport, *_ = make_router(breaking_then_continuing(cut=3), urls=URLS[:1])
    router.remove_worker(URLS[0])
    for entry in entries:
        router.add_worker(entry.model, entry.url, backend=entry.backend)
    assert text_of(await read_all(router, chat_body(stream=True, max_tokens=6))) == "".join(WORDS)
    first, second = transport.requests
    assert (first.worker, second.worker) == (URLS[0], URLS[1])
    asked = second.json
    assert asked["messages"][-1] == {"role": "assistant", "content": "one two three"}
    assert "continue_final_message" not in asked and "add_generation_prompt" not in asked


async def test_a_completion_stream_continues_from_the_prompt_plus_the_text() -> None:
    def handler(request: MockRequest) -> MockResponse:
        prompt = request.json["prompt"]
        if prompt == "Count:":
            return MockResponse(
                chunks=[
                    event({"id": "c1", "model": "m", "choices": [{"index": 0, "text": " 1"}]}),
                    WorkerUnreachable(request.worker, "reset"),
                ],
                headers=SSE,
            )
        assert prompt == "Count: 1" and request.json["max_tokens"] == 1
        last = {
            "id": "c2",
            "model": "m",
            "choices": [{"index": 0, "text": " 2", "finish_reason": "length"}],
        }
        return MockResponse(chunks=[event(last), b"data: [DONE]\n\n"], headers=SSE)

    router, *_ = make_router(handler)
    body = {"model": "m", "prompt": "Count:", "max_tokens": 2, "stream": True}
    stream = await read_all(router, body, COMPLETIONS)
    assert text_of(stream) == " 1 2"
    assert {p["id"] for p in data_events(stream)} == {"c1"}


@pytest.mark.parametrize(
    ("extra", "why"),
    [({"n": 2}, MANY_CHOICES.format(n=2)), ({"logprobs": True}, LOGPROBS)],
)
async def test_a_request_that_cannot_be_continued_exactly_fails_saying_why(
    extra: dict[str, Any], why: str
) -> None:
    router, transport, *_ = make_router(breaking_then_continuing(cut=2))
    with pytest.raises(StreamBroken) as caught:
        await read_all(router, chat_body(stream=True, max_tokens=6, **extra))
    assert why in str(caught.value) and "not resumed" in str(caught.value)
    assert len(transport.requests) == 1


async def test_resumes_are_bounded_and_never_go_back_to_a_worker_that_failed() -> None:
    def always_breaking(request: MockRequest) -> MockResponse:
        delivered = request.json["messages"][-1].get("content", "")
        word = {"hi": "one"}.get(delivered, " more")
        return MockResponse(
            chunks=[
                event({"id": "x", "choices": [{"index": 0, "delta": {"content": word}}]}),
                WorkerUnreachable(request.worker, "reset"),
            ],
            headers=SSE,
        )

    router, transport, *_ = make_router(always_breaking, resume={"max_resumes": 1})
    with pytest.raises(StreamBroken, match=r"resumed 1 times already .*max_resumes = 1"):
        await read_all(router, chat_body(stream=True, max_tokens=9))
    workers = [r.worker for r in transport.requests]
    assert len(workers) == 2 and len(set(workers)) == 2

    router, transport, *_ = make_router(always_breaking, urls=URLS[:2])
    with pytest.raises(StreamBroken, match="failed this request"):
        await read_all(router, chat_body(stream=True, max_tokens=9))
    assert sorted(r.worker for r in transport.requests) == URLS[:2]


async def test_an_answer_cut_just_before_done_is_ended_without_asking_anyone() -> None:
    whole = chat_events("id", WORDS[:2], 20)
    router, transport, *_ = make_router(
        lambda r: MockResponse(chunks=whole[:-1], headers=SSE)  # no [DONE]
    )
    stream = await read_all(router, chat_body(stream=True, max_tokens=2))
    assert stream == b"".join(whole)
    assert len(transport.requests) == 1


async def test_a_stream_attempt_waits_a_learned_bound_and_a_stall_fails_the_worker() -> None:
    stalled = {URLS[0]: False}

    def handler(request: MockRequest) -> MockResponse:
        if stalled.get(request.worker):
            raise WorkerTimeout(request.worker, "stream stalled (no chunk in time)")
        return MockResponse(chunks=chat_events("id", WORDS, 20), headers=SSE)

    router, transport, _, _, recorder = make_router(
        handler, urls=URLS[:2], resume={"min_stall_s": 0.5, "ttft_multiple": 4}
    )
    body = chat_body(stream=True, max_tokens=6)
    await read_all(router, body)  # nothing learned yet: the outer bound
    assert transport.requests[-1].timeout_s == router.config.attempt_timeout_s
    worker = router.worker(transport.requests[-1].worker)
    worker.ewma_ttft, worker.ewma_latency = 0.5, 0.01  # learned: 4 x 0.5 s beats 20 x 10 ms
    await read_all(router, body)  # round robin: the other worker
    await read_all(router, body)
    assert transport.requests[-1].worker == worker.url
    assert transport.requests[-1].timeout_s == pytest.approx(2.0)  # the first chunk's
    # After it, each chunk's: 20 x 10 ms per token, under the floor of 0.5 s.
    assert transport.read_timeouts[-1] == (worker.url, 0.5)
    stalled[worker.url] = True
    failures = worker.errors
    await read_all(router, body)
    await read_all(router, body)  # one of the two went to the stalled worker, then elsewhere
    assert worker.errors == failures + 1
    assert worker.breaker.consecutive_failures == 1
    (stall,) = [r for r in recorder.results if not r.ok]
    assert stall.error is not None
    # The EWMA learned from the success in between: 0.5 s -> 0.4 s.
    assert stall.error.startswith("stalled: no first chunk within 1.60 s (4 x learned TTFT 400")


async def test_a_half_alive_worker_is_out_until_a_real_generation_succeeds_there() -> None:
    broken = {"on": True}

    def handler(request: MockRequest) -> MockResponse:
        if request.method == "GET":
            return MockResponse(body=b"ok")  # /health passes throughout
        if request.worker == URLS[0] and broken["on"]:
            raise WorkerTimeout(request.worker, "stream stalled (no chunk in time)")
        return MockResponse(chunks=chat_events("id", WORDS, 20), headers=SSE)

    router, transport, clock, *_ = make_router(
        handler, urls=URLS[:2], breaker={"failure_threshold": 2, "cooldown_s": 30}
    )
    body = chat_body(stream=True, max_tokens=6)
    for _ in range(4):
        await read_all(router, body)
    half_alive = router.worker(URLS[0])
    assert half_alive.errors == 2 and half_alive.out_reason(clock(), 0) is not None
    for _ in range(3):
        await router.probe_once()  # health answers: not enough to come back
    assert half_alive.out_reason(clock(), 0) is not None
    asked = len([r for r in transport.requests if r.worker == URLS[0] and r.method == "POST"])
    for _ in range(4):
        await read_all(router, body)
    assert len([r for r in transport.requests if r.worker == URLS[0] and r.method == "POST"]) == (
        asked
    )
    broken["on"] = False
    clock.advance(31)  # the cool-down: one real trial request may go there
    for _ in range(6):
        await read_all(router, body)
    assert half_alive.out_reason(clock(), 0) is None


async def test_a_stream_broken_before_any_text_is_sent_again_as_it_was() -> None:
    def handler(request: MockRequest) -> MockResponse:
        events = chat_events("id", WORDS, 20)
        if len(transport.requests) == 1:  # the role event only, then the break
            return MockResponse(chunks=[events[0], WorkerUnreachable(request.worker, "reset")],
                                headers=SSE)  # fmt: skip
        return MockResponse(chunks=events, headers=SSE)

    router, transport, *_ = make_router(handler)
    body = chat_body(stream=True, max_tokens=6)
    stream = await read_all(router, body)
    assert text_of(stream) == "".join(WORDS)
    assert transport.requests[1].json == body


async def test_closing_a_stream_another_task_reads_frees_the_worker_without_a_resume() -> None:
    waiting, never = asyncio.Event(), asyncio.Event()

    async def slow_chunks() -> AsyncIterator[bytes]:
        yield chat_events("id", WORDS, 20)[1]
        waiting.set()
        await never.wait()
        yield b""

    router, transport, *_ = make_router(lambda r: MockResponse(chunks=slow_chunks(), headers=SSE))
    response = await router.forward("m", CHAT, chat_body(stream=True), stream=True)
    assert response.chunks is not None
    assert await anext(response.chunks)
    reader = asyncio.create_task(anext(response.chunks))
    await waiting.wait()
    await response.aclose()
    with pytest.raises(StopAsyncIteration):
        await reader
    assert transport.open_answers == 0 and len(transport.requests) == 1  # no resume
    assert all(w.in_flight == 0 and w.errors == 0 for w in map(router.worker, URLS))
