"""The router's pick -> send -> observe -> retry loop, on a mock transport and fake clock."""

import asyncio
import itertools
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from modelserver.config import RouterConfig
from modelserver.errors import (
    DeadlineExceeded,
    EngineRejected,
    NoHealthyWorker,
    UnknownModel,
    WorkerTimeout,
    WorkerUnreachable,
    WrongModelKind,
)
from modelserver.routing import MockRequest, MockResponse, RequestInfo, Router, Worker, WorkerEntry
from modelserver.routing.breaker import BreakerState
from modelserver.routing.policies.base import Policy

from .helpers import CHAT, URLS, chat_answer, chat_body, error_answer, make_router, sse


async def test_a_503_is_retried_on_a_different_worker() -> None:
    def handler(request: MockRequest) -> MockResponse:
        if request.worker == URLS[0]:
            return error_answer(503, "overloaded")
        return chat_answer("fine")

    router, transport, _, sleep, recorder = make_router(handler)
    response = await router.forward("m", CHAT, chat_body())
    assert response.json()["choices"][0]["message"]["content"] == "fine"
    assert response.worker != URLS[0] and response.attempts == 2
    assert [r.worker for r in transport.requests] == [URLS[0], response.worker]
    assert sleep.delays == []  # another worker was there: no backoff
    assert recorder.retries == [(URLS[0], 0.0)]


@pytest.mark.parametrize(
    "failure",
    [
        ConnectionRefusedError("refused"),
        WorkerTimeout("http://w1:1", "no answer within 1 s"),
        error_answer(429, "slow down"),
        error_answer(408, "timeout"),
        error_answer(500, "boom"),
    ],
    ids=["refused", "timeout", "429", "408", "500"],
)
async def test_retryable_failures_go_elsewhere(failure: Any) -> None:
    def handler(request: MockRequest) -> MockResponse:
        if request.worker == URLS[0]:
            if isinstance(failure, BaseException):
                raise failure
            return failure
        return chat_answer()

    router, transport, *_ = make_router(handler)
    response = await router.forward("m", CHAT, chat_body())
    assert response.worker != URLS[0]
    assert len(transport.requests) == 2


async def test_a_400_reaches_the_caller_untouched_and_is_not_retried() -> None:
    router, transport, *_ = make_router(lambda r: error_answer(400, "max_tokens too large"))
    with pytest.raises(EngineRejected) as caught:
        await router.forward("m", CHAT, chat_body())
    assert caught.value.status == 400
    assert "max_tokens too large" in str(caught.value)
    assert caught.value.body == {"error": {"message": "max_tokens too large", "code": 400}}
    assert len(transport.requests) == 1
    worker = router.worker(transport.requests[0].worker)
    assert worker.breaker.consecutive_failures == 0 and worker.in_flight == 0


async def test_attempt_budget_ends_in_deadline_exceeded_listing_each_attempt() -> None:
    router, transport, *_ = make_router(lambda r: error_answer(502, "bad gateway"), max_attempts=3)
    with pytest.raises(DeadlineExceeded) as caught:
        await router.forward("m", CHAT, chat_body())
    assert len(transport.requests) == 3
    assert {r.worker for r in transport.requests} == set(URLS)  # never the same one twice
    assert len(caught.value.attempts) == 3 and "502" in str(caught.value)


async def test_backoff_only_when_the_failed_worker_is_the_only_one_left() -> None:
    calls = []

    def handler(request: MockRequest) -> MockResponse:
        calls.append(request.worker)
        return error_answer(503, "busy") if len(calls) < 3 else chat_answer()

    router, _, _, sleep, _ = make_router(handler, urls=[URLS[0]], max_attempts=5)
    response = await router.forward("m", CHAT, chat_body())
    assert response.attempts == 3
    assert len(sleep.delays) == 2
    # 50 ms, then 75 ms (×1.5), each ±20 % jitter: SGLang's RetryConfig defaults.
    assert 0.04 <= sleep.delays[0] <= 0.06 and 0.06 <= sleep.delays[1] <= 0.09


async def test_request_deadline_bounds_the_whole_request() -> None:
    router, transport, _clock, sleep, _ = make_router(
        lambda r: error_answer(503, "busy"),
        urls=[URLS[0]],
        max_attempts=32,
        request_timeout_s=1.0,
        backoff={"initial_s": 0.3, "multiplier": 1.0, "jitter": 0.0},
    )
    with pytest.raises(DeadlineExceeded) as caught:
        await router.forward("m", CHAT, chat_body())
    assert "deadline" in str(caught.value)
    assert sum(sleep.delays) <= 1.0 + 1e-9
    assert len(transport.requests) == 4


async def test_breaker_opens_on_a_failing_worker_and_traffic_avoids_it() -> None:
    def handler(request: MockRequest) -> MockResponse:
        return error_answer(503, "down") if request.worker == URLS[0] else chat_answer()

    router, transport, clock, *_ = make_router(
        handler, breaker={"failure_threshold": 2, "cooldown_s": 5, "success_threshold": 1}
    )
    for _ in range(12):
        await router.forward("m", CHAT, chat_body())
    bad = router.worker(URLS[0])
    assert bad.breaker.state is BreakerState.OPEN
    assert sum(r.worker == URLS[0] for r in transport.requests) == 2
    # After the cool-down the worker gets one trial; when it answers again it is closed.
    router.transport.handler = lambda r: chat_answer()  # type: ignore[attr-defined]
    clock.advance(5)
    for _ in range(6):
        await router.forward("m", CHAT, chat_body())
    assert bad.breaker.state is BreakerState.CLOSED
    assert router.workers()[0].status == "up"


async def test_every_worker_down_names_each_and_records_availability(tmp_path: Path) -> None:
    router, *_ = make_router(
        lambda r: error_answer(503, "down"), breaker={"failure_threshold": 1}, max_attempts=5
    )
    router.state_dir = tmp_path
    router.drain(URLS[2])
    with pytest.raises(NoHealthyWorker) as caught:
        await router.forward("m", CHAT, chat_body())
    reasons = caught.value.reasons
    assert set(reasons) == set(URLS)
    assert reasons[URLS[2]] == "draining"
    assert "circuit open" in reasons[URLS[0]] and "HTTP 503" in reasons[URLS[0]]
    record = orjson.loads((tmp_path / "availability.json").read_bytes())
    assert record["m"]["available"] is False and set(record["m"]["reasons"]) == set(URLS)

    router.undrain(URLS[2])
    router.transport.handler = lambda r: chat_answer()  # type: ignore[attr-defined]
    await router.forward("m", CHAT, chat_body())
    record = orjson.loads((tmp_path / "availability.json").read_bytes())
    assert record["m"] == {"available": True, "since": record["m"]["since"], "reasons": {}}


async def test_chat_to_an_embedding_model_names_its_kind() -> None:
    router, transport, *_ = make_router(
        lambda r: chat_answer(), extra=[WorkerEntry("emb", "http://e1:1", "embedding")]
    )
    with pytest.raises(WrongModelKind, match="'emb' is an embedding model"):
        await router.forward("emb", CHAT, chat_body())
    with pytest.raises(WrongModelKind):
        await router.forward("m", "/v1/embeddings", {"input": ["x"]})
    with pytest.raises(UnknownModel, match="'emb', 'm'"):
        await router.forward("nope", CHAT, chat_body())
    assert transport.requests == []


async def test_a_bytes_body_reaches_the_engine_unchanged() -> None:
    raw = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"x_custom":[1,2]}'
    router, transport, *_ = make_router(lambda r: chat_answer())
    response = await router.forward("m", CHAT, raw, headers={"x-request-id": "abc"})
    assert transport.requests[0].body == raw
    assert transport.requests[0].headers["x-request-id"] == "abc"
    assert response.body == orjson.dumps(chat_answer().json)


async def test_stream_chunks_are_forwarded_as_they_come() -> None:
    chunks = sse("Hel", "lo")
    router, _, _, _, recorder = make_router(
        lambda r: MockResponse(chunks=chunks, headers={"content-type": "text/event-stream"})
    )
    response = await router.forward("m", CHAT, chat_body(stream=True), stream=True)
    assert response.body is None and response.chunks is not None
    got = [chunk async for chunk in response.chunks]
    assert got == chunks
    assert recorder.results[-1].ok and recorder.results[-1].output_tokens == 2
    assert router.worker(response.worker).in_flight == 0


async def test_with_resume_off_a_stream_fails_over_only_before_its_first_chunk() -> None:
    def handler(request: MockRequest) -> MockResponse:
        if request.worker == URLS[0]:
            return MockResponse(chunks=[])  # closed before anything came
        return MockResponse(chunks=[sse("a")[0], WorkerUnreachable(request.worker, "reset")])

    router, transport, *_ = make_router(handler, resume={"enabled": False})
    response = await router.forward("m", CHAT, chat_body(stream=True), stream=True)
    assert response.worker != URLS[0] and response.attempts == 2
    assert response.chunks is not None
    received = []
    with pytest.raises(WorkerUnreachable):
        async for chunk in response.chunks:
            received.append(chunk)
    assert len(received) == 1
    assert [r.worker for r in transport.requests] == [URLS[0], response.worker]  # not 3
    assert router.worker(response.worker).errors == 1


async def test_a_stream_ending_without_done_raises_and_counts_against_the_worker() -> None:
    cut = sse("a", "b")[:-1]  # two events, then a clean end with no `data: [DONE]`
    router, _, _, _, recorder = make_router(
        lambda r: MockResponse(chunks=cut), resume={"enabled": False}
    )
    response = await router.forward("m", CHAT, chat_body(stream=True), stream=True)
    assert response.chunks is not None
    with pytest.raises(WorkerUnreachable, match=r"ended before data: \[DONE\]"):
        async for _ in response.chunks:
            pass
    assert router.worker(response.worker).errors == 1
    assert not recorder.results[-1].ok


async def test_a_done_marker_split_across_two_chunks_still_ends_the_stream_well() -> None:
    whole = b"".join(sse("a"))
    seam = whole.index(b"[DONE]") + 3
    router, _, _, _, recorder = make_router(
        lambda r: MockResponse(chunks=[whole[:seam], whole[seam:]])
    )
    response = await router.forward("m", CHAT, chat_body(stream=True), stream=True)
    assert response.chunks is not None
    assert b"".join([chunk async for chunk in response.chunks]) == whole
    assert recorder.results[-1].ok and router.worker(response.worker).errors == 0


async def test_closing_a_stream_early_frees_the_worker_without_a_mark() -> None:
    router, *_ = make_router(lambda r: MockResponse(chunks=sse("a", "b", "c")))
    response = await router.forward("m", CHAT, chat_body(stream=True), stream=True)
    async with response:
        assert response.chunks is not None
        await response.chunks.__anext__()
    worker = router.worker(response.worker)
    assert worker.in_flight == 0 and worker.errors == 0


async def test_observer_sees_attempts_results_and_latency() -> None:
    router, _, clock, _, recorder = make_router(lambda r: chat_answer(completion_tokens=4))

    async def slow(request: MockRequest) -> MockResponse:
        clock.advance(0.2)
        return chat_answer(completion_tokens=4)

    router.transport.handler = slow  # type: ignore[attr-defined]
    response = await router.forward("m", CHAT, chat_body())
    result = recorder.results[-1]
    assert recorder.attempts == [(response.worker, 1)]
    assert (result.ok, result.status, result.output_tokens) == (True, 200, 4)
    assert result.e2e_s == pytest.approx(0.2)
    assert router.worker(response.worker).ewma_latency == pytest.approx(0.05)  # 0.2 s / 4 tokens


# (`fastest` needs no ejection: it leaves a worker that grew slow by its own rule.)
@pytest.mark.parametrize("policy", ["round_robin", "least_load", "cache_aware"])
async def test_a_worker_growing_slow_is_ejected_then_readmitted_after_a_good_trial(
    policy: str,
) -> None:
    latency = {URLS[0]: 0.1, URLS[1]: 0.1, URLS[2]: 0.1}
    router, _, clock, *_ = make_router(
        lambda r: chat_answer(),
        policy=policy,
        latency={"min_samples": 2, "readmit_after_s": 10},
    )

    async def handler(request: MockRequest) -> MockResponse:
        clock.advance(latency[request.worker])
        return chat_answer(completion_tokens=1)

    router.transport.handler = handler  # type: ignore[attr-defined]
    for i in range(30):
        await router.forward("m", CHAT, chat_body(f"warm-up {i}"))
    assert all(router.worker(url).latency_samples >= 2 for url in URLS)  # all measured
    # The worker the policy favours now (fastest sticks to one) is the one that grows slow.
    slow_url = (await router.forward("m", CHAT, chat_body("which one"))).worker
    slow = router.worker(slow_url)
    latency[slow_url] = 2.0  # 20x the others
    for i in range(30):
        await router.forward("m", CHAT, chat_body(f"slow phase {i}"))
        if slow.ejected_at is not None:
            break
    assert slow.ejected_at is not None
    assert "ejected as slow" in (slow.out_reason(clock(), 10) or "")
    served_while_ejected = slow.requests
    for _ in range(6):
        await router.forward("m", CHAT, chat_body())
    assert slow.requests == served_while_ejected  # no traffic during the cool-down
    latency[slow_url] = 0.1  # recovered
    clock.advance(10)
    for i in range(30):
        await router.forward("m", CHAT, chat_body(f"recovered {i}"))
    assert slow.ejected_at is None and slow.requests > served_while_ejected


async def test_admin_add_remove_and_drain() -> None:
    router, _transport, *_ = make_router(lambda r: chat_answer(), urls=[URLS[0]])
    router.add_worker("m", URLS[1])
    router.drain(URLS[0])
    for _ in range(3):
        assert (await router.forward("m", CHAT, chat_body())).worker == URLS[1]
    stats = {s.url: s for s in router.workers()}
    assert stats[URLS[0]].status == "draining" and stats[URLS[1]].requests == 3
    router.remove_worker(URLS[1])
    with pytest.raises(NoHealthyWorker):
        await router.forward("m", CHAT, chat_body())
    with pytest.raises(ValueError, match="already"):
        router.add_worker("m", URLS[0])
    with pytest.raises(WrongModelKind):
        router.add_worker("m", URLS[2], "embedding")


async def test_launcher_state_and_probes_take_workers_out(tmp_path: Path) -> None:
    def handler(request: MockRequest) -> MockResponse:
        if request.path == "/health":
            if request.worker == URLS[1]:
                raise ConnectionRefusedError("refused")
            return MockResponse(body=b"")
        return chat_answer()

    router, transport, *_ = make_router(handler, health={"failure_threshold": 2})
    router.state_dir = tmp_path
    (tmp_path / "state-local.json").write_bytes(
        orjson.dumps(
            {
                "host": "local",
                "workers": [
                    {"url": URLS[0], "status": "failed"},
                    {"url": URLS[2], "status": "ready"},
                ],
            }
        )
    )
    await router.probe_once()
    await router.probe_once()
    assert all(r.method == "GET" for r in transport.requests)  # probes never generate
    stats = {s.url: s.status for s in router.workers()}
    assert stats[URLS[0]] == "launcher reports failed"
    assert stats[URLS[1]].startswith("health probe failed (cannot connect")
    assert stats[URLS[2]] == "up"
    for _ in range(3):
        assert (await router.forward("m", CHAT, chat_body())).worker == URLS[2]

    # The refused worker answers again: back after success_threshold (2) good probes.
    router.transport.handler = lambda r: MockResponse(body=b"")  # type: ignore[attr-defined]
    await router.probe_once()
    assert {s.url: s.status for s in router.workers()}[URLS[1]] != "up"
    await router.probe_once()
    assert {s.url: s.status for s in router.workers()}[URLS[1]] == "up"


async def test_drain_lets_in_flight_requests_finish_and_sends_no_new_ones() -> None:
    release, arrived = asyncio.Event(), asyncio.Event()

    async def handler(request: MockRequest) -> MockResponse:
        if request.worker == URLS[0]:
            arrived.set()
            await release.wait()
        return chat_answer()

    router, *_ = make_router(handler, urls=URLS[:2])
    held = asyncio.create_task(router.forward("m", CHAT, chat_body()))  # round robin: URLS[0]
    await arrived.wait()
    router.drain(URLS[0])
    waiter = asyncio.create_task(router.wait_drained(URLS[0], timeout_s=60))
    for _ in range(3):
        assert (await router.forward("m", CHAT, chat_body())).worker == URLS[1]
    assert not waiter.done()
    release.set()
    assert await waiter is True
    assert (await held).worker == URLS[0]  # the in-flight request finished normally


@pytest.mark.parametrize("policy", ["fastest", "round_robin", "least_load", "cache_aware"])
async def test_no_policy_retries_on_the_worker_that_just_failed(policy: str) -> None:
    failed: list[str] = []

    def handler(request: MockRequest) -> MockResponse:
        if not failed or request.worker == failed[0]:
            failed.append(request.worker)
            return error_answer(503, "busy")
        return chat_answer()

    router, transport, _, sleep, _ = make_router(handler, policy=policy)
    for i in range(5):  # the failing worker stays failing; the others never are
        response = await router.forward("m", CHAT, chat_body(f"same conversation {i}" * 20))
        assert response.worker != failed[0]
    attempts = [r.worker for r in transport.requests]
    # Whenever an attempt went to the failing worker, the next one went elsewhere.
    assert all(b != a for a, b in itertools.pairwise(attempts) if a == failed[0])
    assert sleep.delays == []


async def test_a_body_the_caller_already_decoded_is_not_decoded_again() -> None:
    seen: list[str] = []

    class Recording(Policy):
        name = "recording"
        needs_text = True

        def select(self, workers: Sequence[Worker], request: RequestInfo) -> Worker:
            seen.append(request.text)
            return workers[0]

    _, transport, *_ = make_router(lambda r: chat_answer())
    policy = Recording(RouterConfig(), random.Random(0))
    router = Router([WorkerEntry("m", URLS[0])], policy=policy, transport=transport)
    raw = orjson.dumps(chat_body("what the engine gets"))
    decoded = chat_body("what the caller decoded")
    await router.forward("m", CHAT, raw, parsed=decoded)
    await router.forward("m", CHAT, raw)
    assert "what the caller decoded" in seen[0]  # routed on what the caller handed over
    assert "what the engine gets" in seen[1]  # no `parsed`: the router decodes the bytes
    assert transport.requests[0].body == raw  # and the engine gets the bytes unchanged


async def test_wait_drained_gives_up_at_its_timeout_while_a_request_is_held() -> None:
    release, arrived = asyncio.Event(), asyncio.Event()

    async def handler(request: MockRequest) -> MockResponse:
        arrived.set()
        await release.wait()
        return chat_answer()

    router, *_ = make_router(handler, urls=URLS[:1])
    held = asyncio.create_task(router.forward("m", CHAT, chat_body()))
    await arrived.wait()
    router.drain(URLS[0])
    assert await router.wait_drained(URLS[0], timeout_s=0.01) is False
    waiter = asyncio.create_task(router.wait_drained(URLS[0], timeout_s=60))
    release.set()
    await held
    assert await waiter is True
    assert await router.wait_drained(URLS[0], timeout_s=0) is True  # already idle
