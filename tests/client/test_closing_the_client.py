"""Closing the client while calls are in flight, from asyncio code and from threads: every
call ends with `ClientClosed` (none hangs, none gets a raw aiohttp error), and the shutdown
is held against no worker: no breaker opens, no false "down" goes to availability.json."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from modelserver import AsyncModelServer, ModelServer
from modelserver.errors import ClientClosed
from modelserver.routing import MockRequest, MockResponse, MockTransport
from modelserver.routing.availability import AVAILABILITY_FILE
from modelserver.sim import SimConfig, SimThread
from tests.waiting import wait_until, wait_until_sync

URLS = ["http://c1:1", "http://c2:2"]


class HeldEngine:
    """Never answers; tells a thread or a task when `expected` requests have arrived."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.arrived = 0
        self.all_arrived = threading.Event()

    async def __call__(self, request: MockRequest) -> MockResponse:
        self.arrived += 1
        if self.arrived >= self.expected:
            self.all_arrived.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def assert_no_worker_blamed(stats: list[Any]) -> None:
    for worker in stats:
        assert worker.in_flight == 0 and worker.errors == 0
        assert worker.breaker == "closed" and worker.status == "up"


def run_in_threads(count: int, call: Any) -> tuple[list[threading.Thread], list[BaseException]]:
    errors: list[BaseException] = []

    def target() -> None:
        try:
            call()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=target, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads, errors


def join_all(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a call still waits after close()"


def assert_closed_with_no_verdict(
    errors: list[BaseException], router: Any, state_dir: Path
) -> None:
    """Each of the 8 calls got ClientClosed, no worker was blamed, no model recorded down."""
    assert len(errors) == 8 and all(isinstance(e, ClientClosed) for e in errors), errors
    assert_no_worker_blamed(router.workers())
    assert not (state_dir / AVAILABILITY_FILE).exists()


def test_sync_close_ends_every_waiting_thread_with_client_closed(tmp_path: Path) -> None:
    engine = HeldEngine(expected=8)
    ms = ModelServer({"m": URLS}, transport=MockTransport(engine), probe=False, state_dir=tmp_path)
    threads, errors = run_in_threads(8, lambda: ms.chat("m", "hello"))
    assert engine.all_arrived.wait(timeout=60)
    router = ms.router
    ms.close()
    join_all(threads)
    assert_closed_with_no_verdict(errors, router, tmp_path)
    with pytest.raises(ClientClosed, match="closed"):
        ms.chat("m", "after")


def test_sync_close_against_a_real_engine_that_never_answers(tmp_path: Path) -> None:
    with SimThread(SimConfig(model="m", faults="hang")) as sim:
        ms = ModelServer({"m": [sim.url]}, probe=False, state_dir=tmp_path)
        threads, errors = run_in_threads(8, lambda: ms.chat("m", "hello", max_tokens=8))
        wait_until_sync(
            lambda: ms.workers()[0].in_flight == 8, "8 requests in flight at the engine"
        )
        router = ms.router
        ms.close()
        join_all(threads)
    assert_closed_with_no_verdict(errors, router, tmp_path)


def test_sync_stream_open_at_close_raises_client_closed() -> None:
    never = threading.Event()

    def engine(request: MockRequest) -> MockResponse:
        async def chunks() -> Any:
            yield b'data: {"choices": [{"delta": {"content": "He"}}]}\n\n'
            await asyncio.Event().wait()
            never.set()

        return MockResponse(chunks=chunks(), headers={"content-type": "text/event-stream"})

    ms = ModelServer({"m": URLS}, transport=MockTransport(engine), probe=False)
    pieces = ms.stream("m", "hello")
    assert next(pieces) == "He"
    router = ms.router
    ms.close()
    with pytest.raises(ClientClosed):
        next(pieces)
    assert_no_worker_blamed(router.workers())
    assert not never.is_set()


async def test_async_close_during_chats_gives_client_closed_to_each() -> None:
    engine = HeldEngine(expected=6)
    ms = AsyncModelServer({"m": URLS}, transport=MockTransport(engine), probe=False)
    chats = [asyncio.create_task(ms.chat("m", f"question {i}")) for i in range(6)]
    await wait_until(engine.all_arrived.is_set, "6 chats at the engine")
    await ms.close()
    results = await asyncio.gather(*chats, return_exceptions=True)
    assert all(isinstance(r, ClientClosed) for r in results), results
    assert_no_worker_blamed(ms.workers())
    with pytest.raises(ClientClosed):
        await ms.chat("m", "after")


async def test_async_close_against_real_engines_gives_no_raw_aiohttp_error() -> None:
    with (
        SimThread(SimConfig(model="m", faults="hang")) as first,
        SimThread(SimConfig(model="m", faults="hang")) as second,
    ):
        ms = AsyncModelServer({"m": [first.url, second.url]}, probe=False)
        chats = [asyncio.create_task(ms.chat("m", f"q {i}", max_tokens=8)) for i in range(6)]
        await wait_until(lambda: sum(w.in_flight for w in ms.workers()) == 6, "6 chats in flight")
        await ms.close()
        results = await asyncio.gather(*chats, return_exceptions=True)
    assert all(isinstance(r, ClientClosed) for r in results), results
    assert_no_worker_blamed(ms.workers())
