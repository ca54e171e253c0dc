"""What the launcher's state file says reaches the router on its own beat, even while a
probe round waits on a hung worker (chaos run: a kill the launcher had recorded reached the
gateway's router 1 s late, behind a probe of a hung worker)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import orjson

from modelserver.config import RouterConfig
from modelserver.routing import MockRequest, MockResponse, MockTransport, Router, WorkerEntry
from tests.waiting import wait_until

from .helpers import URLS, chat_answer


async def test_state_file_is_read_while_a_probe_round_hangs(tmp_path: Path) -> None:
    hung = asyncio.Event()
    blocked = asyncio.Event()
    never = asyncio.Event()

    async def engines(request: MockRequest) -> MockResponse:
        if request.path == "/health" and request.worker == URLS[2] and hung.is_set():
            blocked.set()
            await never.wait()  # a hung engine: the probe round waits on it
        if request.path == "/health":
            return MockResponse(json={})
        return chat_answer()

    config = RouterConfig.model_validate({"health": {"interval_s": 0.02}})
    router = Router([WorkerEntry("m", url) for url in URLS], config=config,
                    transport=MockTransport(engines), state_dir=tmp_path,
                    rng=random.Random(0))
    await router.start()
    try:
        hung.set()
        await asyncio.wait_for(blocked.wait(), 5)  # a probe round now waits on the hung one
        record = {"workers": [{"url": URLS[0], "status": "backoff"}]}
        (tmp_path / "state-h.json").write_bytes(orjson.dumps(record))
        await wait_until(
            lambda: router.worker(URLS[0]).launcher_status == "backoff",
            "the router reading the state file", timeout_s=5,
        )
        assert router.workers()[0].status == "launcher reports backoff"
    finally:
        never.set()
        await router.close()
