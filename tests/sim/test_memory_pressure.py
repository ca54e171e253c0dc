"""What a real SGLang engine does when its KV pool runs short, in virtual time: admission on
an estimate of the output still to come (the new-token ratio), KV taken step by step with LRU
eviction of the cache, decode retraction; and the pool sized from the GPU and the model."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from modelserver.sim.config import SimConfig
from modelserver.sim.engine import Engine, Request, RequestTooLarge, SchedulerConfig
from modelserver.sim.perf import (
    A100_SXM_40GB,
    A100_SXM_80GB,
    H100_SXM,
    L4,
    LLAMA_3_1_70B,
    LLAMA_3_2_3B,
    PerfModel,
    kv_pool_tokens,
)

from .conftest import StartSim


def prompt(seed: int, length: int) -> list[int]:
    return [seed * 1_000_003 + i for i in range(length)]


def run(engine: Engine, requests: list[Request], start: float = 0.0) -> dict[str, int]:
    """Drive to completion from `start`; check the pool is never overdrawn after a step and
    return the most requests that ever ran at once."""
    for request in requests:
        engine.submit(request)
    now, most = start, 0
    while (step := engine.begin_step(now)) is not None:
        now += step.duration
        engine.complete_step(step, now)
        most = max(most, len(engine.running))
        assert engine.cache.size + engine.output_tokens_held() <= engine.cache.budget
    return {"most_running": most}


def pressure_engine(estimate: bool) -> Engine:
    return Engine(PerfModel(), max_running=64, cache_tokens=10_000,
                  scheduler=SchedulerConfig(estimate_new_tokens=estimate))


def long_answers() -> list[Request]:
    return [Request(prompt(i, 1000), 2000, arrival=0.0) for i in range(6)]


def test_admission_counts_running_output_at_the_new_token_ratio_and_so_admits_more() -> None:
    reserving, estimating = pressure_engine(False), pressure_engine(True)
    # 1,000-token prompts that may write 2,000 tokens: reserving it all fits three in 10,000.
    assert run(reserving, long_answers())["most_running"] == 3
    assert run(estimating, long_answers())["most_running"] > 3
    assert estimating.new_token_ratio == pytest.approx(0.7)  # idle again: back to the start


def test_decode_out_of_kv_retracts_the_request_with_least_output_and_it_still_finishes() -> None:
    engine = pressure_engine(True)
    requests = long_answers()
    run(engine, requests)  # asserts the pool is never overdrawn
    totals = engine.totals
    assert totals.retracted_requests > 0
    assert totals.retracted_input_tokens >= 1000 * totals.retracted_requests
    assert all(r.done and r.generated == 2000 for r in requests)
    assert sum(r.retractions for r in requests) == totals.retracted_requests
    assert engine.cache.evicted_total > 0  # the retracted prompts' KV went when room ran out
    # Reserving everything up front never runs out, so it never retracts.
    reserving = pressure_engine(False)
    run(reserving, long_answers())
    assert reserving.totals.retracted_requests == 0


def test_kv_is_taken_step_by_step_and_old_prefixes_are_evicted_lru_to_make_room() -> None:
    engine = Engine(PerfModel(), max_running=4, cache_tokens=5_000)
    old, recent = Request(prompt(1, 2000), 10, 0.0), Request(prompt(2, 2000), 10, 0.0)
    run(engine, [old], start=0.0)
    run(engine, [recent], start=10.0)
    assert engine.cache.evicted_total == 0
    newcomer = Request(prompt(3, 2000), 10, 20.0)
    run(engine, [newcomer], start=20.0)
    assert engine.cache.evicted_total > 0
    assert engine.cache.match(prompt(1, 2000)) < 2000  # the least recently used went first
    assert engine.cache.match(prompt(2, 2000)) == 2000


def test_a_prompt_the_pool_cannot_hold_gets_sglangs_message_and_max_new_tokens_is_cut() -> None:
    engine = Engine(PerfModel(), max_running=4, cache_tokens=1000)
    # tp_worker.py: max_req_len = min(context - 1, pool - 1) = 999; input limit 999 - 5.
    assert engine.max_req_input_len == 994
    with pytest.raises(RequestTooLarge) as refused:
        engine.submit(Request(prompt(1, 994), 10, 0.0))
    assert str(refused.value) == (
        "Input length (994 tokens) exceeds the maximum allowed length (994 tokens). "
        "Use a shorter input or enable --allow-auto-truncate.")
    fits = Request(prompt(2, 900), 500, 0.0)
    engine.submit(fits)
    assert fits.max_new_tokens == 999 - 900 - 1


def test_the_kv_pool_follows_the_gpu_the_model_and_mem_fraction_static() -> None:
    assert kv_pool_tokens(H100_SXM) == 451_647  # Llama-3.1-8B on an H100 at 0.88
    assert kv_pool_tokens(A100_SXM_80GB) > kv_pool_tokens(H100_SXM)  # 81,920 MiB vs 81,559
    assert kv_pool_tokens(A100_SXM_40GB) < kv_pool_tokens(H100_SXM) // 2
    assert kv_pool_tokens(H100_SXM, LLAMA_3_2_3B) > kv_pool_tokens(H100_SXM)
    assert kv_pool_tokens(H100_SXM, mem_fraction_static=0.5) < kv_pool_tokens(H100_SXM)
    with pytest.raises(ValueError, match=r"not enough memory: llama-3\.1-70b"):
        kv_pool_tokens(H100_SXM, LLAMA_3_1_70B)
    l4 = SimConfig(model="m", gpu="l4")
    assert l4.effective_cache_tokens == kv_pool_tokens(L4)
    assert l4.scheduler.chunked_prefill_size == 2048  # SGLang v0.4: under 25,000 MB
    assert SimConfig(model="m").scheduler.chunked_prefill_size == 8192
    assert SimConfig(model="m", gpu="l4", cache_tokens=64).effective_cache_tokens == 64
    with pytest.raises(ValueError, match="valid: h100, a100-80gb"):
        SimConfig(model="m", gpu="b300")
    with pytest.raises(ValueError, match="not enough memory"):
        SimConfig(model="m", model_size="llama-3.1-70b")


def test_a_small_gpu_prefills_in_smaller_chunks() -> None:
    engine = Engine(PerfModel(gpu=L4), max_running=4, cache_tokens=30_000,
                    scheduler=SimConfig(model="m", gpu="l4").scheduler)
    engine.submit(Request(prompt(1, 5000), 4, 0.0))
    step = engine.begin_step(0.0)
    assert step is not None and [take for _, take in step.prefill] == [2048]


# --- over HTTP ---------------------------------------------------------------------------


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_metrics_and_server_info_report_evictions_and_retractions(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    # As `long_answers` above: more answers admitted than the pool can finish together.
    sim = await start_sim(cache_tokens=6000, speed=1000.0)

    async def complete(i: int) -> int:
        body = {"prompt": prompt(i, 500), "max_tokens": 2000, "ignore_eos": True}
        async with http.post(sim.url + "/v1/completions", json=body) as response:
            return response.status

    assert await asyncio.gather(*(complete(i) for i in range(4))) == [200] * 4
    async with http.get(sim.url + "/metrics") as response:
        text = await response.text()
    assert metric(text, "sglang:evicted_tokens_total") > 0
    assert metric(text, "sglang:num_retracted_requests_total") > 0
    assert metric(text, "sglang:num_retracted_input_tokens_total") > 0
    assert metric(text, "sglang:max_total_num_tokens") == 6000
    assert 0 < metric(text, "sglang:new_token_ratio") <= 1
    async with http.get(sim.url + "/server_info") as response:
        state = (await response.json())["internal_states"][0]
    assert state["evicted_tokens_total"] == metric(text, "sglang:evicted_tokens_total")
    assert state["num_retracted_requests_total"] > 0


async def test_a_prompt_larger_than_the_pool_is_a_400_with_sglangs_message(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(cache_tokens=500)
    async with http.post(sim.url + "/v1/completions",
                         json={"prompt": prompt(1, 600), "max_tokens": 4}) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["message"] == (
        "Input length (600 tokens) exceeds the maximum allowed length (494 tokens). "
        "Use a shorter input or enable --allow-auto-truncate.")


async def test_loads_endpoint_reports_running_waiting_and_kv_use_as_sglang_does(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(cache_tokens=6000, max_running=1, speed=0.01)
    sim.engine.submit(Request(prompt(1, 500), 100, 0.0))
    sim.engine.submit(Request(prompt(2, 500), 100, 0.0))
    sim.engine.begin_step(0.0)  # admits the first; the second waits (max_running 1)
    async with http.get(sim.url + "/v1/loads?include=core,disagg,queues,memory") as response:
        assert response.status == 200
        [load] = (await response.json())["loads"]
    assert load["dp_rank"] == 0
    assert (load["num_running_reqs"], load["num_waiting_reqs"]) == (1, 1)
    assert load["max_total_num_tokens"] == 6000 and 0 <= load["token_usage"] <= 1
