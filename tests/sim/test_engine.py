"""The scheduler in virtual time: admission, queueing, batching, chunked prefill, the cache."""

from __future__ import annotations

import pytest

from modelserver.sim.engine import (
    DECODE_LOG_INTERVAL,
    Engine,
    Request,
    VirtualClock,
    drive_virtual,
)
from modelserver.sim.perf import CHUNKED_PREFILL_SIZE, PerfModel


def make_engine(max_running: int = 8, cache_tokens: int = 100_000) -> Engine:
    return Engine(PerfModel(), max_running=max_running, cache_tokens=cache_tokens)


def prompt(seed: int, length: int) -> list[int]:
    return [seed * 1_000_003 + i for i in range(length)]


def test_requests_beyond_max_running_wait_in_fifo_order() -> None:
    engine = make_engine(max_running=2)
    requests = [Request(prompt(i, 100), 50, arrival=0.0) for i in range(5)]
    for request in requests:
        engine.submit(request)
    step = engine.begin_step(0.0)
    assert step is not None
    assert [r for r, _ in step.prefill] == requests[:2]
    assert list(engine.queue) == requests[2:]
    drive_virtual(engine, VirtualClock())
    admitted = [r.admitted_at for r in requests]
    assert all(r.done and r.generated == 50 for r in requests)
    assert admitted == sorted(admitted)  # FIFO: nobody overtakes
    assert requests[2].admitted_at is not None and requests[1].finished_at is not None
    assert requests[2].admitted_at >= min(r.finished_at or 0 for r in requests[:2])


def test_decode_step_grows_with_the_running_batch() -> None:
    times = {}
    for batch in (1, 8, 64):
        engine = make_engine(max_running=64, cache_tokens=200_000)
        for i in range(batch):
            engine.submit(Request(prompt(i, 1000), 10, arrival=0.0))
        step = engine.begin_step(0.0)
        while step is not None and step.prefill:
            engine.complete_step(step, 0.0)
            step = engine.begin_step(0.0)
        assert step is not None and len(step.decode) == batch
        times[batch] = step.duration
    assert times[1] < times[8] < times[64]


def test_each_decode_step_gives_every_running_request_one_token() -> None:
    engine = make_engine()
    requests = [Request(prompt(i, 10), 5, arrival=0.0) for i in range(3)]
    for request in requests:
        engine.submit(request)
    step = engine.begin_step(0.0)
    assert step is not None
    engine.complete_step(step, 1.0)
    assert [r.generated for r in requests] == [1, 1, 1]  # prefill yields the first token
    step = engine.begin_step(1.0)
    assert step is not None and step.decode == requests
    engine.complete_step(step, 2.0)
    assert [r.generated for r in requests] == [2, 2, 2]


def test_a_long_prompt_is_prefilled_in_chunks() -> None:
    engine = make_engine()
    request = Request(prompt(1, 2 * CHUNKED_PREFILL_SIZE + 10), 3, arrival=0.0)
    engine.submit(request)
    clock = VirtualClock()
    prefill_steps = 0
    while (step := engine.begin_step(clock.now)) is not None and step.prefill:
        prefill_steps += 1
        clock.now += step.duration
        engine.complete_step(step, clock.now)
    assert prefill_steps == 3
    assert request.first_token_at == clock.now


def test_a_repeated_prefix_is_reported_cached_and_prefills_faster() -> None:
    engine = make_engine()
    clock = VirtualClock()
    shared = prompt(7, 3000)
    first = Request([*shared, 1, 2, 3], 4, arrival=0.0)
    drive_virtual(engine, clock, [first])
    second = Request([*shared, 4, 5, 6], 4, arrival=clock.now)
    drive_virtual(engine, clock, [second])
    assert first.cached_tokens == 0
    assert second.cached_tokens == 3000
    assert first.first_token_at is not None and second.first_token_at is not None
    ttft_cold = first.first_token_at - first.arrival
    ttft_warm = second.first_token_at - second.arrival
    assert ttft_warm < ttft_cold / 3


def test_identical_prompts_arriving_together_do_not_hit_kv_not_computed_yet() -> None:
    engine = make_engine()
    clock = VirtualClock()
    tokens = prompt(5, 3000)
    first, second = Request(tokens, 4, arrival=0.0), Request(list(tokens), 4, arrival=0.0)
    drive_virtual(engine, clock, [first, second])
    assert first.cached_tokens == second.cached_tokens == 0  # one prefill batch, both computed
    third = Request(list(tokens), 4, arrival=clock.now)
    drive_virtual(engine, clock, [third])
    assert third.cached_tokens == 2999  # computed by now: all but the token always recomputed
    assert engine.output_tokens_held() == 0 and engine.cache.locked_size == 0


def test_a_chunked_prefill_caches_each_chunk_as_its_step_ends() -> None:
    engine = make_engine()
    tokens = prompt(6, 3 * CHUNKED_PREFILL_SIZE + 100)
    first = Request(tokens, 4, arrival=0.0)
    engine.submit(first)
    clock = VirtualClock()
    for chunk in (1, 2):
        step = engine.begin_step(clock.now)
        assert step is not None and step.prefill == [(first, CHUNKED_PREFILL_SIZE)]
        assert engine.cache.match(tokens) == (chunk - 1) * CHUNKED_PREFILL_SIZE  # not yet
        clock.now += step.duration
        engine.complete_step(step, clock.now)
        assert engine.cache.match(tokens) == chunk * CHUNKED_PREFILL_SIZE
    # Arrives while the first is still prefilling: it gets what the first computed so far.
    second = Request(list(tokens), 4, arrival=clock.now)
    drive_virtual(engine, clock, [second])
    assert first.done and second.done
    assert 2 * CHUNKED_PREFILL_SIZE <= second.cached_tokens < second.prompt_tokens - 1
    assert second.cached_tokens % CHUNKED_PREFILL_SIZE == 0  # whole chunks, as computed
    assert engine.output_tokens_held() == 0 and engine.cache.locked_size == 0


def test_a_request_aborted_mid_prefill_gives_back_what_it_held() -> None:
    engine = make_engine(cache_tokens=50_000)
    request = Request(prompt(8, 2 * CHUNKED_PREFILL_SIZE), 100, arrival=0.0)
    engine.submit(request)
    step = engine.begin_step(0.0)
    assert step is not None
    engine.complete_step(step, step.duration)
    engine.abort(request)
    assert engine.output_tokens_held() == 0 and engine.cache.locked_size == 0
    assert engine.cache.match(request.tokens) == CHUNKED_PREFILL_SIZE  # the computed chunk stays


def test_a_finished_answer_is_cached_for_the_next_turn() -> None:
    from modelserver.sim.tokenizer import output_ids

    engine = make_engine()
    clock = VirtualClock()
    turn1 = Request(prompt(3, 200), 6, arrival=0.0, words=[1, 2, 3, 4, 5, 6])
    drive_virtual(engine, clock, [turn1])
    turn2_tokens = turn1.tokens + output_ids(turn1.words) + prompt(4, 20)
    assert engine.cache.match(turn2_tokens) == 206


def test_least_recently_used_prefixes_are_evicted_to_admit_new_work() -> None:
    engine = make_engine(max_running=4, cache_tokens=2_000)
    clock = VirtualClock()
    old = Request(prompt(1, 900), 10, arrival=0.0)
    recent = Request(prompt(2, 900), 10, arrival=0.0)
    drive_virtual(engine, clock, [old])
    drive_virtual(engine, clock, [Request(recent.tokens, 10, arrival=clock.now)])
    newcomer = Request(prompt(3, 900), 10, arrival=clock.now)
    drive_virtual(engine, clock, [newcomer])
    assert newcomer.done
    assert engine.cache.size <= 2_000
    assert engine.cache.match(old.tokens) == 0  # least recently used: gone
    assert engine.cache.match(recent.tokens) == 900


def test_a_request_waits_while_running_requests_hold_the_pool() -> None:
    engine = make_engine(max_running=8, cache_tokens=1_000)
    clock = VirtualClock()
    big = Request(prompt(1, 500), 300, arrival=0.0)
    waiting = Request(prompt(2, 300), 100, arrival=0.0)
    engine.submit(big)
    engine.submit(waiting)
    step = engine.begin_step(0.0)
    assert step is not None and [r for r, _ in step.prefill] == [big]
    assert list(engine.queue) == [waiting]  # 800 held + 400 needed > 1000
    drive_virtual(engine, clock)
    assert waiting.done and waiting.admitted_at is not None and big.finished_at is not None
    assert waiting.admitted_at >= big.finished_at


def test_an_aborted_request_releases_its_place() -> None:
    engine = make_engine(max_running=1)
    first = Request(prompt(1, 50), 1000, arrival=0.0)
    second = Request(prompt(2, 50), 5, arrival=0.0)
    engine.submit(first)
    engine.submit(second)
    step = engine.begin_step(0.0)
    assert step is not None
    engine.complete_step(step, 0.1)
    engine.abort(first)
    assert engine.running == [] and engine.cache.locked_size == 0
    drive_virtual(engine, VirtualClock(0.1))
    assert second.done and not first.finished_at


def test_gen_throughput_is_the_last_decode_windows_tokens_over_its_time() -> None:
    engine = make_engine()
    requests = [Request(prompt(i, 100), 100, arrival=0.0) for i in range(4)]
    for request in requests:
        engine.submit(request)
    clock = VirtualClock()
    decode_ends: list[float] = []
    while (step := engine.begin_step(clock.now)) is not None:
        clock.now += step.duration
        engine.complete_step(step, clock.now)
        if step.decode:
            decode_ends.append(clock.now)
        if len(decode_ends) == DECODE_LOG_INTERVAL - 1:
            assert engine.last_gen_throughput == 0  # no window closed yet
        if len(decode_ends) == 2 * DECODE_LOG_INTERVAL:
            break
    window = decode_ends[-1] - decode_ends[DECODE_LOG_INTERVAL - 1]
    assert engine.last_gen_throughput == pytest.approx(4 * DECODE_LOG_INTERVAL / window)


def test_speed_scales_every_step() -> None:
    slow, fast = PerfModel(1.0), PerfModel(4.0)
    assert fast.prefill_time(4000, 4000) * 4 == slow.prefill_time(4000, 4000)
    assert fast.decode_time(32, 32_000) * 4 == slow.decode_time(32, 32_000)


def test_decode_step_grows_with_the_context_the_batch_attends_to() -> None:
    times = {}
    for length in (500, 8000):
        engine = make_engine(max_running=16, cache_tokens=400_000)
        for i in range(16):
            engine.submit(Request(prompt(i, length), 10, arrival=0.0))
        clock = VirtualClock()
        while (step := engine.begin_step(clock.now)) is not None and step.prefill:
            clock.now += step.duration
            engine.complete_step(step, clock.now)
        assert step is not None and len(step.decode) == 16
        times[length] = step.duration
    # 128k tokens of KV (16.8 GB) take about as long to read as the weights (16.1 GB).
    assert times[8000] > 1.5 * times[500]
