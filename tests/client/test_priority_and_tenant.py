"""`priority=` and `tenant=` in the client library: they place the call in the router's
queue (and tell an SGLang engine the priority); they are not engine parameters."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from modelserver import AsyncModelServer
from modelserver.config import RouterConfig
from modelserver.routing import MockRequest, MockResponse, MockTransport
from tests.waiting import wait_until

CAPPED = RouterConfig.model_validate(
    {"admission": {"enabled": True, "max_running": 1, "reserved_slots": 0}}
)


class HeldEngine:
    """Answers only when told to; records what each request asked for, in arrival order."""

    def __init__(self) -> None:
        self.arrived: list[dict[str, Any]] = []
        self.release = asyncio.Event()

    async def __call__(self, request: MockRequest) -> MockResponse:
        self.arrived.append(request.json)
        await self.release.wait()
        return MockResponse(json={"choices": [{"message": {"content": "ok"}}], "usage": {}})


async def test_an_interactive_call_goes_before_a_queued_batch_map() -> None:
    engine = HeldEngine()
    transport = MockTransport(engine)
    async with AsyncModelServer(
        {"m": ["http://w1:1"]}, config=CAPPED, transport=transport, probe=False
    ) as ms:
        batch = asyncio.create_task(
            ms.map(
                "m", [f"b{i}" for i in range(6)], concurrency=6, priority="batch", tenant="eval"
            )
        )
        await wait_until(lambda: ms.router.admission.waiting("m") == 5, "5 batch calls queued")
        chat = asyncio.create_task(ms.chat("m", "urgent", priority="interactive", tenant="me"))
        await wait_until(lambda: ms.router.admission.waiting("m") == 6, "the chat queued")
        engine.release.set()
        await asyncio.gather(batch, chat)
    contents = [body["messages"][-1]["content"] for body in engine.arrived]
    assert contents[:2] == ["b0", "urgent"], contents
    assert all("tenant" not in body for body in engine.arrived)
    assert ms.router.admission.tenants["eval"].dispatched == 6


async def test_the_priority_reaches_an_sglang_engine_as_its_request_field() -> None:
    engine = HeldEngine()
    engine.release.set()
    async with AsyncModelServer(
        {"m": ["http://w1:1"]}, config=CAPPED, transport=MockTransport(engine), probe=False
    ) as ms:
        ms.router.admission.priority_models = {"m"}
        await ms.chat("m", "hi", priority="batch")
        await ms.chat("m", "hi", priority=7)
    assert [body["priority"] for body in engine.arrived] == [0, 7]


async def test_a_priority_that_is_no_class_nor_number_is_refused_before_sending() -> None:
    engine = HeldEngine()
    async with AsyncModelServer(
        {"m": ["http://w1:1"]}, transport=MockTransport(engine), probe=False
    ) as ms:
        with pytest.raises(ValueError, match="interactive, batch or a whole number"):
            await ms.chat("m", "hi", priority="urgent")
        with pytest.raises(TypeError, match="tenant must be"):
            await ms.chat("m", "hi", tenant=3)
    assert engine.arrived == []
