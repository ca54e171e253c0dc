"""The simulated fleet is real processes: started, faulted, killed, reset, always stopped."""

from __future__ import annotations

import aiohttp
import pytest

from modelserver.bench.fleet import EngineSpec, SimFleet
from modelserver.bench.openai_http import chat_body, post_chat
from tests.processes import pid_exists


async def test_kill_counts_requests_to_the_dead_engine_and_reset_revives_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    fleet = SimFleet(model="m", specs=[EngineSpec(speed=50.0), EngineSpec(speed=50.0)],
                     log_dir=tmp_path)
    pids: list[int] = []
    try:
        await fleet.start()
        pids = [e.process.pid for e in fleet.engines if e.process]
        body = chat_body("m", [{"role": "user", "content": "hello there"}], 4, stream=False)
        async with aiohttp.ClientSession() as http:
            warm = await post_chat(http, fleet.urls[1], body, timeout_s=30)
            assert warm.ok and warm.completion_tokens == 4
            again = await post_chat(http, fleet.urls[1], body, timeout_s=30)
            assert again.cached_tokens > 0

            await fleet.kill(1)
            assert not pid_exists(pids[1])
            dead = await post_chat(http, fleet.urls[1], body, timeout_s=30)
            assert not dead.ok
            assert fleet.requests_to_dead() == 1

            await fleet.set_fault(0, "error-rate=1:503")
            failing = await post_chat(http, fleet.urls[0], body, timeout_s=30)
            assert failing.error is not None and "503" in failing.error

            await fleet.reset()
            assert fleet.requests_to_dead() == 0
            assert all(e.alive for e in fleet.engines)
            revived = await post_chat(http, fleet.urls[1], body, timeout_s=30)
            assert revived.ok and revived.cached_tokens == 0  # a new, cold engine
            healed = await post_chat(http, fleet.urls[0], body, timeout_s=30)
            assert healed.ok and healed.cached_tokens == 0  # fault cleared, cache flushed
            pids += [e.process.pid for e in fleet.engines if e.process]
    finally:
        await fleet.stop()
    assert not any(pid_exists(pid) for pid in pids)


async def test_an_engine_that_cannot_start_is_reported_and_nothing_is_left(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from modelserver.errors import BenchError

    fleet = SimFleet(model="m", specs=[EngineSpec(speed=1.0, max_running=0)], log_dir=tmp_path)
    with pytest.raises(BenchError, match="exited"):
        await fleet.start()
    assert fleet.engines[0].process is None


async def test_reset_brings_back_a_hung_engine(tmp_path) -> None:  # type: ignore[no-untyped-def]
    fleet = SimFleet(model="m", specs=[EngineSpec(speed=50.0)], log_dir=tmp_path,
                     idle_timeout_s=2.0)
    try:
        await fleet.start()
        body = chat_body("m", [{"role": "user", "content": "hello"}], 4, stream=False)
        async with aiohttp.ClientSession() as http:
            await fleet.set_fault(0, "hang")
            hung = await post_chat(http, fleet.urls[0], body, timeout_s=0.5)
            assert not hung.ok
            await fleet.reset()
            state = await fleet.state(0)
            assert state is not None and state["faults"] == "" and not state["running"]
            after = await post_chat(http, fleet.urls[0], body, timeout_s=30)
            assert after.ok
    finally:
        await fleet.stop()
