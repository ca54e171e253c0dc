"""A streamed answer ends exactly once, however the caller leaves it: read to the end, closed
before its first chunk was read (the gateway's caller left during a long time to first
token), closed half-way, closed twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from modelserver.errors import WorkerUnreachable
from modelserver.routing import MockRequest, MockResponse

from .helpers import CHAT, URLS, chat_body, make_router, sse

SSE_HEADERS = {"content-type": "text/event-stream"}


def streaming(request: MockRequest) -> MockResponse:
    return MockResponse(chunks=sse("a", "b", "c"), headers=SSE_HEADERS)


async def test_a_stream_closed_before_its_first_chunk_is_read_frees_the_worker() -> None:
    router, transport, _, _, recorder = make_router(streaming, urls=URLS[:1])
    response = await router.forward("m", CHAT, chat_body(stream=True), stream=True)
    assert router.worker(URLS[0]).in_flight == 1
    await response.aclose()
    worker = router.worker(URLS[0])
    assert worker.in_flight == 0
    assert transport.open_answers == 0  # the engine connection was given back
    # The caller left: nothing against the worker.
    assert worker.errors == 0 and worker.breaker.consecutive_failures == 0
    assert [r.error for r in recorder.results] == ["stream closed by the caller"]


async def test_callers_leaving_during_the_wait_for_the_first_chunk_leave_nothing_in_flight() -> (
    None
):
    router, transport, *_ = make_router(streaming, urls=URLS[:1])
    responses = await asyncio.gather(
        *(router.forward("m", CHAT, chat_body(stream=True), stream=True) for _ in range(3))
    )
    assert router.worker(URLS[0]).in_flight == 3
    for response in responses:
        await response.aclose()
    assert router.worker(URLS[0]).in_flight == 0 and transport.open_answers == 0
    # So draining that worker completes (it never did while the slots leaked).
    router.drain(URLS[0])
    assert await router.wait_drained(URLS[0], timeout_s=60) is True


async def test_closing_a_stream_twice_or_after_its_end_accounts_for_it_once() -> None:
    router, transport, _, _, recorder = make_router(streaming, urls=URLS[:1])
    response = await router.forward("m", CHAT, chat_body(stream=True), stream=True)
    assert response.chunks is not None
    assert len([chunk async for chunk in response.chunks]) == 4
    await response.aclose()
    await response.aclose()
    assert router.worker(URLS[0]).in_flight == 0 and transport.open_answers == 0
    assert [r.ok for r in recorder.results] == [True]

    half = await router.forward("m", CHAT, chat_body(stream=True), stream=True)
    assert half.chunks is not None
    assert await anext(half.chunks)
    await half.aclose()
    await half.aclose()
    with pytest.raises(StopAsyncIteration):
        await anext(half.chunks)
    assert router.worker(URLS[0]).in_flight == 0 and transport.open_answers == 0
    assert len(recorder.results) == 2


async def test_a_stream_closed_after_done_counts_as_a_success() -> None:
    router, _, _, _, recorder = make_router(
        lambda r: MockResponse(chunks=[b"".join(sse("a", "b"))], headers=SSE_HEADERS)
    )
    response = await router.forward("m", CHAT, chat_body(stream=True), stream=True)
    await response.aclose()  # the whole answer, [DONE] included, came in the first chunk
    assert recorder.results[-1].ok and recorder.results[-1].output_tokens == 2


async def test_a_stream_broken_while_waiting_for_a_chunk_is_blamed_and_frees_the_slot() -> None:
    async def breaking() -> AsyncIterator[bytes]:
        yield sse("a")[0]
        raise WorkerUnreachable(URLS[0], "stream broke: reset")

    router, transport, *_ = make_router(
        lambda r: MockResponse(chunks=breaking(), headers=SSE_HEADERS),
        urls=URLS[:1],
        resume={"enabled": False},  # the relay alone (test_stream_resume.py: resumed)
    )
    response = await router.forward("m", CHAT, chat_body(stream=True), stream=True)
    assert response.chunks is not None
    with pytest.raises(WorkerUnreachable):
        async for _ in response.chunks:
            pass
    await response.aclose()
    worker = router.worker(URLS[0])
    assert worker.in_flight == 0 and worker.errors == 1 and transport.open_answers == 0
