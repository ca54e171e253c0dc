"""Closing the router while requests and streams are in flight: each caller gets
`ClientClosed`, no worker is blamed for it (no breaker opens, no model is marked down),
and nothing new starts afterwards."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from modelserver.config import RouterConfig
from modelserver.errors import ClientClosed
from modelserver.routing import MockRequest, MockResponse, MockTransport, Router, WorkerEntry
from modelserver.routing.availability import AVAILABILITY_FILE
from modelserver.routing.breaker import BreakerState
from modelserver.routing.resume import ResumingStream
from modelserver.sim import SimConfig, SimThread
from tests.waiting import wait_until

from .helpers import CHAT, URLS, Recorder, chat_answer, chat_body, sse

SSE_HEADERS = {"content-type": "text/event-stream"}


class HeldEngine:
    """Answers nothing until `release` is set; counts the requests that arrived."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.arrived = 0
        self.cancelled = 0
        self.all_arrived = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, request: MockRequest) -> MockResponse:
        self.arrived += 1
        if self.arrived >= self.expected:
            self.all_arrived.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return chat_answer()


def router_on(transport: MockTransport, state_dir: Path | None = None) -> tuple[Router, Recorder]:
    recorder = Recorder()
    router = Router(
        [WorkerEntry("m", url) for url in URLS],
        config=RouterConfig(policy="round_robin"),
        transport=transport,
        observers=[recorder],
        state_dir=state_dir,
        rng=random.Random(0),
    )
    return router, recorder


def assert_nobody_blamed(router: Router, recorder: Recorder) -> None:
    for url in URLS:
        worker = router.worker(url)
        assert worker.in_flight == 0
        assert worker.errors == 0 and worker.breaker.consecutive_failures == 0
        assert worker.breaker.state is BreakerState.CLOSED
    assert recorder.no_healthy == [] and recorder.retries == []


async def test_requests_in_flight_at_close_raise_client_closed_and_blame_no_worker(
    tmp_path: Path,
) -> None:
    engine = HeldEngine(expected=6)
    router, recorder = router_on(MockTransport(engine), state_dir=tmp_path)
    calls = [asyncio.create_task(router.forward("m", CHAT, chat_body())) for _ in range(6)]
    await engine.all_arrived.wait()
    await router.close()
    for call in calls:
        with pytest.raises(ClientClosed, match="closed while this request was in flight"):
            await call
    assert_nobody_blamed(router, recorder)
    assert not (tmp_path / AVAILABILITY_FILE).exists()  # no false "down" record
    assert engine.cancelled == 6  # the engine calls were stopped, not left running


async def test_a_request_after_close_is_refused_with_client_closed() -> None:
    transport = MockTransport(lambda r: chat_answer())
    router, _ = router_on(transport)
    await router.close()
    with pytest.raises(ClientClosed, match="no new request after close"):
        await router.forward("m", CHAT, chat_body())
    with pytest.raises(ClientClosed):
        await router.start()
    assert transport.requests == []
    await router.close()  # a second close is harmless


async def test_a_caller_that_cancels_during_close_still_sees_its_own_cancellation() -> None:
    engine = HeldEngine(expected=1)
    router, _ = router_on(MockTransport(engine))
    call = asyncio.create_task(router.forward("m", CHAT, chat_body()))
    await engine.all_arrived.wait()
    call.cancel()  # the caller's own cancellation, before the router's
    await router.close()
    with pytest.raises(asyncio.CancelledError):
        await call


async def test_streams_open_at_close_end_without_blame() -> None:
    never, waiting = asyncio.Event(), asyncio.Event()

    async def slow_chunks() -> AsyncIterator[bytes]:
        yield sse("a")[0]
        waiting.set()
        await never.wait()  # the next chunk never comes
        yield b""

    transport = MockTransport(lambda r: MockResponse(chunks=slow_chunks(), headers=SSE_HEADERS))
    router, recorder = router_on(transport)
    idle = await router.forward("m", CHAT, chat_body(stream=True), stream=True)
    read = await router.forward("m", CHAT, chat_body(stream=True), stream=True)
    assert idle.chunks is not None and read.chunks is not None
    assert await anext(read.chunks)
    reader = asyncio.create_task(anext(read.chunks))
    await waiting.wait()  # the reader now waits for the chunk that never comes
    await router.close()
    with pytest.raises(ClientClosed):
        await reader
    with pytest.raises(ClientClosed):  # the one nobody was reading at the time
        async for _ in idle.chunks:
            pass
    assert transport.open_answers == 0
    assert_nobody_blamed(router, recorder)


async def test_a_real_stream_waiting_for_its_next_chunk_at_close_gets_client_closed() -> None:
    with SimThread(SimConfig(model="m", speed=0.05)) as sim:  # chunks far apart
        url = sim.url
        router = Router([WorkerEntry("m", url)])
        response = await router.forward(
            "m", CHAT, chat_body(stream=True, max_tokens=200), stream=True
        )
        chunks = response.chunks
        assert isinstance(chunks, ResumingStream)
        while True:  # until the close comes while a read waits, not between chunks
            reader = asyncio.create_task(anext(chunks))
            await wait_until(lambda read=reader: chunks.reading or read.done(), "a read under way")
            if not reader.done():
                break
            assert await reader
        await router.close()
        with pytest.raises(ClientClosed):
            await reader
    worker = router.worker(url)
    assert worker.in_flight == 0 and worker.errors == 0
    assert worker.breaker.state is BreakerState.CLOSED
