"""Faults: the grammar, and each fault set at start and changed at run time."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from modelserver.sim import FaultSpecError, SimConfig, SimServer, parse_faults
from modelserver.sim.faults import Faults, FaultState

from .conftest import StartSim

CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}


def test_a_full_spec_parses() -> None:
    faults = parse_faults(
        "crash-after=3, crash-at=2.5,hang,slow-ramp=0.1,error-rate=0.2:503,slow-start=4,refuse"
    )
    assert faults == Faults(
        crash_after=3,
        crash_at=2.5,
        hang=True,
        slow_ramp=0.1,
        error_rate=0.2,
        error_status=503,
        slow_start=4,
        refuse=True,
    )
    assert parse_faults(faults.describe()) == faults
    timed = parse_faults("refuse=2.5")
    assert (timed.refuse, timed.refuse_for, timed.describe()) == (True, 2.5, "refuse=2.5")
    assert parse_faults("") == Faults()
    assert parse_faults("error-rate=0.5").error_status == 500


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("explode", "unknown fault 'explode'"),
        ("crash-after", "needs a value"),
        ("crash-after=x", "is not a whole number"),
        ("crash-at=-1", "must not be negative"),
        ("error-rate=2", "probability"),
        ("error-rate=0.1:404", "500 or 503"),
        ("hang=1", "takes no value"),
        ("refuse=soon", "is not a number"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, complaint: str) -> None:
    with pytest.raises(FaultSpecError, match=complaint):
        parse_faults(spec)


def test_slow_ramp_multiplier_grows_linearly_with_time() -> None:
    state = FaultState(parse_faults("slow-ramp=0.5"), now=100.0, seed=0)
    assert state.latency_multiplier(100.0) == 1.0
    assert state.latency_multiplier(104.0) == 3.0
    state.replace(parse_faults(""), now=104.0)
    assert state.latency_multiplier(200.0) == 1.0


async def chat(http: aiohttp.ClientSession, url: str) -> int:
    async with http.post(url + "/v1/chat/completions", json=CHAT) as response:
        await response.read()
        return response.status


async def refused(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url + "/health") as response:
            await response.read()
            return False
    except aiohttp.ClientConnectionError:
        return True


async def eventually(condition: Any, deadline: float = 10.0) -> None:
    """Poll an async condition until it holds; fail after `deadline` seconds."""
    end = time.monotonic() + deadline
    while not await condition():
        assert time.monotonic() < end, "condition never held"
        await asyncio.sleep(0.02)


async def test_crash_after_n_requests_then_restart(start_sim: StartSim) -> None:
    sim = await start_sim(faults="crash-after=2")
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        assert await chat(http, sim.url) == 200
        assert await chat(http, sim.url) == 200
        with pytest.raises(aiohttp.ClientConnectionError):
            await chat(http, sim.url)
        await eventually(lambda: refused(http, sim.url))
        await sim.set_faults("")  # a restart: listening again, with an empty cache
        assert await chat(http, sim.url) == 200
        assert sim.engine.totals.requests == 1


async def test_crash_at_a_time_set_at_run_time(start_sim: StartSim) -> None:
    sim = await start_sim()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        assert await chat(http, sim.url) == 200
        await sim.set_faults("crash-at=0.05")
        await eventually(lambda: refused(http, sim.url))


async def test_hang_accepts_and_never_answers_until_cleared(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(faults="hang", speed=100.0)
    pending = asyncio.create_task(chat(http, sim.url))

    async def accepted() -> bool:
        return sim.faults.accepted == 1

    await eventually(accepted)
    async with http.get(sim.url + "/health") as response:  # SGLang's timeout, scaled: 0.2 s
        assert response.status == 503
    assert not pending.done()
    async with http.post(sim.url + "/sim/faults", json={"spec": ""}) as response:
        assert response.status == 200
    assert await pending == 200


async def test_error_rate_answers_the_status_in_openai_shape(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(faults="error-rate=1:503")
    async with http.post(sim.url + "/v1/chat/completions", json=CHAT) as response:
        assert response.status == 503
        error = (await response.json())["error"]
    assert error["code"] == 503 and "simulated" in error["message"]
    await sim.set_faults("error-rate=0.5")
    statuses = [await chat(http, sim.url) for _ in range(40)]
    assert set(statuses) == {200, 500}


async def test_error_rate_is_reproducible_with_a_seed(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    runs = []
    for _ in range(2):
        sim = await start_sim(faults="error-rate=0.3", seed=7)
        runs.append([await chat(http, sim.url) for _ in range(20)])
    assert runs[0] == runs[1]


async def test_slow_start_fails_health_until_it_is_over(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(faults="slow-start=3600")
    for path in ("/health", "/health_generate"):
        async with http.get(sim.url + path) as response:
            assert response.status == 503
    async with http.get(sim.url + "/model_info") as response:
        assert response.status == 200
    await sim.set_faults("slow-start=0.05")

    async def healthy() -> bool:
        async with http.get(sim.url + "/health") as response:
            return response.status == 200

    await eventually(healthy)


async def test_refuse_at_start_and_at_run_time(start_sim: StartSim) -> None:
    sim = await start_sim(faults="refuse")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        await eventually(lambda: refused(http, sim.url))
        await sim.set_faults("")
        assert await chat(http, sim.url) == 200
        await sim.set_faults("refuse")
        assert await refused(http, sim.url)


async def test_timed_refuse_set_over_http_reopens_the_port(start_sim: StartSim) -> None:
    sim = await start_sim()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        assert await chat(http, sim.url) == 200
        async with http.post(sim.url + "/sim/faults", json={"spec": "refuse=2"}) as response:
            assert response.status == 200  # answered before the listener closed
            assert (await response.json())["faults"] == "refuse=2"
        await eventually(lambda: refused(http, sim.url))
        await eventually(lambda: listening(http, sim.url))
        assert await chat(http, sim.url) == 200
        async with http.get(sim.url + "/sim/state") as response:
            assert (await response.json())["faults"] == ""  # the refusal is over
        assert sim.engine.totals.requests == 2  # not a restart: the same engine


async def test_timed_refuse_after_a_crash_comes_back_restarted(start_sim: StartSim) -> None:
    sim = await start_sim(faults="crash-after=1")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        assert await chat(http, sim.url) == 200
        with pytest.raises(aiohttp.ClientConnectionError):
            await chat(http, sim.url)
        await sim.set_faults("refuse=0.05")
        await eventually(lambda: listening(http, sim.url))
        assert await chat(http, sim.url) == 200
        assert sim.engine.totals.requests == 1  # a fresh engine


async def listening(http: aiohttp.ClientSession, url: str) -> bool:
    return not await refused(http, url)


async def test_faults_endpoint_rejects_a_bad_spec(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim()
    async with http.post(sim.url + "/sim/faults", json={"spec": "melt"}) as response:
        assert response.status == 400
        assert "unknown fault" in (await response.json())["error"]["message"]
    async with http.post(sim.url + "/sim/faults", json={"spec": "error-rate=1"}) as response:
        assert (await response.json())["faults"] == "error-rate=1:500"
    assert await chat(http, sim.url) == 500


async def test_crash_at_set_at_start(start_sim: StartSim) -> None:
    sim = await start_sim(faults="crash-at=0.05")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        await eventually(lambda: refused(http, sim.url))


async def test_crash_after_set_at_run_time_counts_from_then(start_sim: StartSim) -> None:
    sim = await start_sim()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for _ in range(3):
            assert await chat(http, sim.url) == 200
        async with http.post(sim.url + "/sim/faults", json={"spec": "crash-after=1"}) as reply:
            assert reply.status == 200
        assert await chat(http, sim.url) == 200
        with pytest.raises(aiohttp.ClientConnectionError):
            await chat(http, sim.url)


async def test_hang_set_at_run_time_holds_new_requests(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim()
    assert await chat(http, sim.url) == 200
    await sim.set_faults("hang")
    pending = asyncio.create_task(chat(http, sim.url))

    async def accepted() -> bool:
        return sim.faults.accepted == 1

    await eventually(accepted)
    async with http.get(sim.url + "/sim/state") as response:  # a full round trip later
        assert (await response.json())["faults"] == "hang"
    assert not pending.done()
    await sim.set_faults("")
    assert await pending == 200


async def test_hang_set_at_run_time_stops_requests_already_running(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim()
    request = sim.new_request(list(range(1, 200)), 50, stream=True)
    hang_set: list[asyncio.Task[None]] = []

    def hang_after_first_token() -> None:  # called by the engine loop after each step
        if not hang_set:
            hang_set.append(asyncio.create_task(sim.set_faults("hang")))

    (finished,) = await sim.admit([request], hang_after_first_token)

    async def engine_held() -> bool:
        return sim.engine_held

    await eventually(engine_held)
    steps, generated = sim.engine.steps, request.generated
    assert 1 <= generated < 50
    for _ in range(3):  # the server answers, the GPU does not step
        async with http.get(sim.url + "/sim/state") as response:
            state = await response.json()
        assert state["engine_held"] and state["steps"] == steps and state["running"] == 1
    assert not finished.done() and request.generated == generated
    cleared_at = asyncio.get_running_loop().time()
    await sim.set_faults("")
    await finished
    assert request.generated == 50
    assert request.finished_at is not None and request.finished_at >= cleared_at
    assert not sim.engine_held


class FaultClock:
    """The clock fault times count on, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def generate_latency(http: aiohttp.ClientSession, url: str, seed: int) -> float:
    """e2e_latency (engine clock) of a fixed-size request: 100 fresh prompt tokens, 40 new."""
    body = {
        "input_ids": [seed * 1000 + i for i in range(100)],
        "sampling_params": {"max_new_tokens": 40},
    }
    async with http.post(url + "/generate", json=body) as response:
        assert response.status == 200
        meta = (await response.json())["meta_info"]
    assert meta["cached_tokens"] == 0 and meta["completion_tokens"] == 40
    return float(meta["e2e_latency"])


async def test_slow_ramp_makes_the_same_request_slower_as_it_proceeds(
    http: aiohttp.ClientSession,
) -> None:
    clock = FaultClock()
    sim = SimServer(SimConfig(model="llama", speed=5.0, faults="slow-ramp=1"), fault_clock=clock)
    await sim.start()
    try:
        latencies = []
        for seconds_into_ramp in (0.0, 2.0, 4.0):  # step times x1, x3, x5
            clock.now = sim.faults.since + seconds_into_ramp
            latencies.append(await generate_latency(http, sim.url, len(latencies)))
        assert latencies[0] < latencies[1] < latencies[2]
        assert latencies[2] > 2.5 * latencies[0]
        await sim.set_faults("")  # cleared: back to the first figure's speed
        assert await generate_latency(http, sim.url, 9) < latencies[1]
    finally:
        await sim.stop()
