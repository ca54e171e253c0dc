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


async def test_a_worker_the_launcher_reports_ready_again_is_back_before_its_probes_pass(
    tmp_path: Path,
) -> None:
    """`up` replaces a replica (draining, stopped, started anew, ready): the probes that
    failed meanwhile must not keep it out once the launcher saw it ready, or the next
    replica's drain would leave the model with none."""
    down = asyncio.Event()
    down.set()

    async def engines(request: MockRequest) -> MockResponse:
        if request.path == "/health" and request.worker == URLS[0] and down.is_set():
            return MockResponse(status=503, json={})
        return MockResponse(json={}) if request.path == "/health" else chat_answer()

    config = RouterConfig.model_validate({"health": {"failure_threshold": 1,
                                                     "success_threshold": 1000}})
    router = Router([WorkerEntry("m", url) for url in URLS], config=config,
                    transport=MockTransport(engines), state_dir=tmp_path,
                    rng=random.Random(0))
    state = tmp_path / "state-h.json"
    state.write_bytes(orjson.dumps({"workers": [{"url": URLS[0], "status": "starting"}]}))
    await router.probe_once()
    worker = router.worker(URLS[0])
    assert not worker.probe_healthy and worker.launcher_status == "starting"
    down.clear()
    state.write_bytes(orjson.dumps({"workers": [{"url": URLS[0], "status": "ready"}]}))
    router.apply_state_files()
    assert worker.probe_healthy and worker.out_reason(0.0, 30.0) is None
    # A worker the launcher always reported ready keeps the probes' verdict.
    down.set()
    await router.probe_once()
    router.apply_state_files()
    assert not worker.probe_healthy
    await router.close()


async def test_a_replica_up_added_is_routed_to_and_dropped_once_the_launcher_drops_it(
    tmp_path: Path,
) -> None:
    """`up` on a changed file adds a replica to a running fleet: a gateway started before
    routes to it (with its model's engine key) without a restart, and stops once the
    launcher no longer names it; a model the gateway does not serve is not taken up."""
    seen: list[tuple[str, str | None]] = []

    async def engines(request: MockRequest) -> MockResponse:
        if request.path != "/health":
            seen.append((request.worker, request.headers.get("authorization")))
        return MockResponse(json={}) if request.path == "/health" else chat_answer()

    router = Router([WorkerEntry("m", URLS[0], api_key="k")],
                    transport=MockTransport(engines), state_dir=tmp_path,
                    rng=random.Random(0))
    added = {"url": URLS[1], "name": "m-1@h", "model": "m", "kind": "chat", "status": "ready"}
    other = {"url": URLS[2], "name": "x-0@h", "model": "x", "kind": "chat", "status": "ready"}
    state = tmp_path / "state-h.json"
    state.write_bytes(orjson.dumps({"workers": [added, other]}))
    router.apply_state_files()
    assert sorted(w.name for w in router.workers()) == [URLS[0], "m-1@h"]
    assert "x" not in router.models()

    router.worker(URLS[0]).draining = True  # so the next request can only go to the new one
    await router.forward("m", "/v1/chat/completions", {"messages": []})
    assert seen == [(URLS[1], "Bearer k")]

    state.write_bytes(orjson.dumps({"workers": [other]}))
    router.apply_state_files()
    assert [w.url for w in router.workers()] == [URLS[0]]  # the file's own worker stays
    await router.close()
