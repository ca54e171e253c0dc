"""SGLang's priority scheduling in the simulated engine, on a virtual clock."""

from __future__ import annotations

from modelserver.sim.engine import Engine, Request, VirtualClock, drive_virtual
from modelserver.sim.perf import PerfModel
from modelserver.sim.priority import PriorityScheduling

SLOTS = 4


def engine_with(scheduling: PriorityScheduling | None) -> Engine:
    engine = Engine(PerfModel(), SLOTS, 200_000)
    engine.scheduling = scheduling
    return engine


def request(arrival: float, priority: int, new_tokens: int = 200, seed: int = 0) -> Request:
    tokens = [1000 + seed * 7919 + i for i in range(64)]
    return Request(tokens, new_tokens, arrival, words=[1] * new_tokens, priority=priority)


def flood_then_urgent(
    scheduling: PriorityScheduling | None, urgent_priority: int = 100
) -> tuple[list[Request], Request]:
    engine = engine_with(scheduling)
    batch = [request(0.0, 0, seed=i) for i in range(SLOTS * 2)]
    urgent = request(0.05, urgent_priority, new_tokens=8, seed=99)
    drive_virtual(engine, VirtualClock(), [*batch, urgent])
    return batch, urgent


def test_fifo_makes_an_urgent_request_wait_for_the_whole_batch_ahead_of_it() -> None:
    batch, urgent = flood_then_urgent(None)
    assert urgent.first_token_at is not None
    first_batch_done = min(r.finished_at or 0 for r in batch)
    assert urgent.first_token_at > first_batch_done  # behind the running batch and the queue


def test_priority_scheduling_preempts_a_batch_request_for_an_urgent_one() -> None:
    scheduling = PriorityScheduling()
    batch, urgent = flood_then_urgent(scheduling)
    assert scheduling.preempted >= 1
    assert urgent.first_token_at is not None and urgent.admitted_at is not None
    assert urgent.admitted_at <= 0.05 + 0.05  # the next step or so, not after a batch request
    assert urgent.first_token_at < min(r.finished_at or 0 for r in batch)
    # The preempted request carried on: every batch request got all its tokens, once.
    assert all(r.done and r.generated == r.max_new_tokens for r in batch)


def test_within_the_threshold_priority_orders_the_queue_but_preempts_nobody() -> None:
    scheduling = PriorityScheduling(preemption_threshold=10)
    engine = engine_with(scheduling)
    batch = [request(0.0, 0, seed=i) for i in range(SLOTS * 2)]
    nudged = request(0.05, 10, new_tokens=8, seed=99)  # 10 above: not more than 10
    drive_virtual(engine, VirtualClock(), [*batch, nudged])
    assert scheduling.preempted == 0
    queued_batch = batch[SLOTS:]  # arrived first, but waited behind it
    assert nudged.admitted_at is not None
    assert all((r.admitted_at or 0) >= nudged.admitted_at for r in queued_batch)


def test_low_priority_values_first_flips_the_order() -> None:
    scheduling = PriorityScheduling(low_values_first=True)
    batch, urgent = flood_then_urgent(scheduling, urgent_priority=-100)
    assert scheduling.preempted >= 1
    assert urgent.first_token_at is not None
    assert urgent.first_token_at < min(r.finished_at or 0 for r in batch)


def test_preemption_can_be_turned_off() -> None:
    scheduling = PriorityScheduling(preemption=False)
    batch, urgent = flood_then_urgent(scheduling)
    assert scheduling.preempted == 0
    running_first = batch[:SLOTS]
    assert urgent.admitted_at is not None
    # It waits for a slot, then goes before the batch requests still queued.
    assert urgent.admitted_at >= min(r.finished_at or 0 for r in running_first)
    assert all((r.admitted_at or 0) >= urgent.admitted_at for r in batch[SLOTS:])
