"""The router's queue on its own: real `Worker` objects whose in-flight counts the tests set,
an injected clock, places freed by `finished` as the router frees them."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from modelserver.config import BreakerConfig, RouterConfig, parse_fleet
from modelserver.errors import DeadlineExceeded
from modelserver.routing.admission import Admission, Ticket
from modelserver.routing.transport import MockRequest, MockResponse, MockTransport
from modelserver.routing.worker import Worker

MODEL = "m"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fleet_admission(
    workers: int = 2, cap: int = 2, reserved: int = 0, recheck_s: float = 60.0
) -> tuple[Admission, list[Worker]]:
    clock = Clock()
    pool = [
        Worker(f"http://127.0.0.1:{9000 + i}", MODEL, "chat", BreakerConfig(), clock)
        for i in range(workers)
    ]
    config = RouterConfig.model_validate(
        {
            "admission": {
                "enabled": True,
                "max_running": cap,
                "reserved_slots": reserved,
                "recheck_s": recheck_s,
            }
        }
    )
    return Admission(config, {MODEL: pool}, clock), pool


def ticket(admission: Admission, tenant: str, priority: str | int = "batch", weight: float = 1.0,
           size: int = 400) -> Ticket:
    return admission.ticket(MODEL, tenant, priority, weight, size)


class Dispatcher:
    """Plays the router: a request takes a place on the first worker with room (or waits
    for one), and `finish()` ends the oldest running one."""

    def __init__(self, admission: Admission, workers: list[Worker]) -> None:
        self.admission = admission
        self.workers = workers
        self.order: list[str] = []
        self.running: list[tuple[Worker, Ticket]] = []

    async def request(self, t: Ticket, name: str, remaining_s: float = 60.0) -> None:
        while True:
            roomy = self.admission.with_room(self.workers, t)
            if roomy:
                roomy[0].in_flight += 1
                self.running.append((roomy[0], t))
                self.order.append(name)
                return
            await self.admission.wait(t, remaining_s)

    def finish(self, output_tokens: int = 100) -> None:
        worker, t = self.running.pop(0)
        worker.in_flight -= 1
        self.admission.finished(MODEL, t.tenant, output_tokens)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_requests_wait_at_the_cap_and_go_in_order_as_places_free() -> None:
    admission, workers = fleet_admission(workers=2, cap=1)
    d = Dispatcher(admission, workers)
    tasks = [asyncio.create_task(d.request(ticket(admission, "a"), f"r{i}")) for i in range(5)]
    await settle()
    assert d.order == ["r0", "r1"]
    assert admission.waiting(MODEL) == 3
    d.finish()
    await settle()
    assert d.order == ["r0", "r1", "r2"]
    assert sum(w.in_flight for w in workers) == 2  # never past the caps
    for _ in range(3):
        d.finish()
        await settle()
    await asyncio.gather(*tasks)
    assert d.order == ["r0", "r1", "r2", "r3", "r4"]


async def test_a_higher_priority_waiter_goes_before_older_batch_waiters() -> None:
    admission, workers = fleet_admission(workers=1, cap=1)
    d = Dispatcher(admission, workers)
    tasks = [asyncio.create_task(d.request(ticket(admission, "b"), f"batch{i}")) for i in range(3)]
    await settle()
    tasks.append(asyncio.create_task(d.request(ticket(admission, "i", "interactive"), "chat")))
    await settle()
    d.finish()
    await settle()
    assert d.order == ["batch0", "chat"]
    for task in tasks:
        task.cancel()


async def test_equal_weight_tenants_share_places_whatever_their_backlog() -> None:
    admission, workers = fleet_admission(workers=1, cap=1)
    d = Dispatcher(admission, workers)
    # The flooding tenant queues 20 requests before the other sends its 5.
    tasks = [asyncio.create_task(d.request(ticket(admission, "flood"), "flood")) for _ in range(20)]
    await settle()
    tasks += [asyncio.create_task(d.request(ticket(admission, "small"), "small")) for _ in range(5)]
    await settle()
    for _ in range(10):
        d.finish()
        await settle()
    served = d.order[1:11]
    assert served.count("small") == 5, d.order  # half the places while both wait
    for task in tasks:
        task.cancel()
    await settle()


async def test_a_tenant_of_weight_three_gets_three_places_for_each_of_the_other() -> None:
    admission, workers = fleet_admission(workers=1, cap=1)
    d = Dispatcher(admission, workers)
    tasks = [
        asyncio.create_task(d.request(ticket(admission, name, weight=w), name))
        for _ in range(20)
        for name, w in (("heavy", 3.0), ("light", 1.0))
    ]
    await settle()
    for _ in range(16):
        d.finish()
        await settle()
    served = d.order[1:17]
    assert served.count("heavy") == 12 and served.count("light") == 4, served
    for task in tasks:
        task.cancel()
    await settle()


async def test_a_tenant_back_from_idle_gets_no_credit_for_the_time_it_was_away() -> None:
    admission, workers = fleet_admission(workers=1, cap=1)
    d = Dispatcher(admission, workers)
    # "busy" is served alone for a long while; its counter grows.
    for _ in range(10):
        await d.request(ticket(admission, "busy"), "busy")
        d.finish()
    await d.request(ticket(admission, "busy"), "busy")  # holds the place
    tasks = [asyncio.create_task(d.request(ticket(admission, "busy"), "busy")) for _ in range(6)]
    await settle()
    tasks += [asyncio.create_task(d.request(ticket(admission, "late"), "late")) for _ in range(6)]
    await settle()
    for _ in range(6):
        d.finish()
        await settle()
    # "late" joined at busy's counter: the two alternate, late does not take all six.
    assert d.order[-6:].count("late") == 3, d.order
    for task in tasks:
        task.cancel()
    await settle()


async def test_batch_requests_leave_the_reserved_slots_to_interactive_ones() -> None:
    admission, workers = fleet_admission(workers=2, cap=4, reserved=1)
    d = Dispatcher(admission, workers)
    tasks = [asyncio.create_task(d.request(ticket(admission, "b"), "batch")) for _ in range(20)]
    await settle()
    assert [w.in_flight for w in workers] == [3, 3]  # batch holds all it may, and no more
    chat = asyncio.create_task(d.request(ticket(admission, "i", "interactive"), "chat"))
    await settle()
    assert chat.done() and d.order[-1] == "chat"  # went at once, past 14 waiting
    for task in tasks:
        task.cancel()
    await settle()


async def test_a_waiter_past_its_deadline_leaves_and_the_next_one_gets_the_place() -> None:
    admission, workers = fleet_admission(workers=1, cap=1, recheck_s=0.01)
    d = Dispatcher(admission, workers)
    await d.request(ticket(admission, "a"), "first")
    late = asyncio.create_task(d.request(ticket(admission, "a"), "late", remaining_s=0.05))
    patient = asyncio.create_task(d.request(ticket(admission, "b"), "patient"))
    with pytest.raises(DeadlineExceeded, match="in the queue"):
        await late
    assert admission.tenants["a"].left_queue == {"deadline": 1}
    d.finish()
    await patient
    assert d.order == ["first", "patient"]


async def test_a_caller_that_leaves_while_its_place_is_reserved_passes_it_on() -> None:
    admission, workers = fleet_admission(workers=1, cap=1)
    d = Dispatcher(admission, workers)
    await d.request(ticket(admission, "a"), "first")
    leaver = asyncio.create_task(d.request(ticket(admission, "a"), "leaver"))
    stayer = asyncio.create_task(d.request(ticket(admission, "b"), "stayer"))
    await settle()
    d.finish()  # the place is reserved for "leaver", which has not run yet ...
    leaver.cancel()  # ... and it leaves before it does
    with pytest.raises(asyncio.CancelledError):
        await leaver
    await stayer
    assert d.order == ["first", "stayer"]
    assert admission.tenants["a"].left_queue == {"caller_left": 1}
    assert admission.waiting() == 0


async def test_queued_callers_that_leave_free_their_places_at_once() -> None:
    admission, workers = fleet_admission(workers=1, cap=1)
    d = Dispatcher(admission, workers)
    await d.request(ticket(admission, "a"), "first")
    gone = [asyncio.create_task(d.request(ticket(admission, "a"), "gone")) for _ in range(5)]
    await settle()
    assert admission.waiting() == 5
    for task in gone:
        task.cancel()
    await settle()
    assert admission.waiting() == 0
    assert admission.tenants["a"].waiting == 0


async def test_a_worker_without_a_known_cap_is_never_held_back() -> None:
    clock = Clock()
    workers = [Worker("http://127.0.0.1:9000", MODEL, "chat", BreakerConfig(), clock)]
    config = RouterConfig.model_validate({"admission": {"enabled": True}})
    admission = Admission(config, {MODEL: workers}, clock)
    workers[0].in_flight = 10_000
    assert admission.with_room(workers, ticket(admission, "a")) == workers


def test_admission_is_on_by_default_only_for_a_fleet_with_tenants() -> None:
    base = {
        "hosts": [{"name": "h"}],
        "models": [{"name": MODEL, "backend": "sim", "port": 9100}],
    }
    with_tenants = {**base, "gateway": {"tenants": [{"name": "t", "keys": ["k"]}]}}
    for data, expected in ((base, False), (with_tenants, True)):
        fleet = parse_fleet(data)
        admission = Admission(fleet.router, {}, Clock())
        admission.configure_for(fleet)
        assert admission.enabled is expected
        assert admission.priority_models == {MODEL}


def test_the_engine_gets_sglangs_priority_field_only_when_it_takes_one() -> None:
    admission, _ = fleet_admission()
    clock = Clock()
    sglang = Worker("http://s:1", MODEL, "chat", BreakerConfig(), clock, backend="sglang")
    vllm = Worker("http://v:1", MODEL, "chat", BreakerConfig(), clock, backend="vllm")
    body = b'{"model": "m", "messages": [], "priority": 1000}'
    batch = ticket(admission, "b", "batch")
    # The caller's own value is replaced by its tenant's.
    assert orjson.loads(admission.engine_body(sglang, body, batch))["priority"] == 0
    assert admission.engine_body(vllm, body, batch) == body
    admission.low_values_first.add(sglang.url)  # learned from its /server_info
    interactive = ticket(admission, "i", "interactive")
    assert orjson.loads(admission.engine_body(sglang, body, interactive))["priority"] == -100


async def test_above_the_cap_batch_fills_every_slot_and_interactive_goes_past_it() -> None:
    clock = Clock()
    workers = [Worker("http://127.0.0.1:9000", MODEL, "chat", BreakerConfig(), clock)]
    config = RouterConfig.model_validate(
        {"admission": {"enabled": True, "max_running": 4, "reserved_where": "above_cap"}}
    )
    admission = Admission(config, {MODEL: workers}, clock)
    d = Dispatcher(admission, workers)
    tasks = [asyncio.create_task(d.request(ticket(admission, "b"), "batch")) for _ in range(10)]
    await settle()
    assert workers[0].in_flight == 4  # the whole cap: the engine preempts one when needed
    chat = asyncio.create_task(d.request(ticket(admission, "i", "interactive"), "chat"))
    await settle()
    assert chat.done() and workers[0].in_flight == 5
    second = asyncio.create_task(d.request(ticket(admission, "i", "interactive"), "chat"))
    await settle()
    assert not second.done()  # one past the cap per reserved slot, no more
    for task in [*tasks, second]:
        task.cancel()
    await settle()


async def test_caps_and_priority_preemption_are_learned_from_each_engines_server_info() -> None:
    infos = {
        "http://p:1": {"max_running_requests": 4, "enable_priority_scheduling": True},
        "http://f:1": {"max_running_requests": 8, "enable_priority_scheduling": False},
        "http://l:1": {"max_running_requests": 8, "enable_priority_scheduling": True,
                       "schedule_low_priority_values_first": True},
    }

    def engine(request: MockRequest) -> MockResponse:
        if request.path != "/server_info" or request.worker not in infos:
            return MockResponse(status=404, json={"detail": "Not Found"})
        return MockResponse(json=infos[request.worker])

    clock = Clock()
    urls = [*infos, "http://vllm:1"]
    workers = [Worker(url, MODEL, "chat", BreakerConfig(), clock) for url in urls]
    config = RouterConfig.model_validate({"admission": {"enabled": True}})
    admission = Admission(config, {MODEL: workers}, clock)
    transport = MockTransport(engine)
    await admission.learn_caps(workers, transport, {})
    await admission.learn_caps(workers, transport, {})  # asked once: nothing new to learn
    assert admission.learned_caps == {"http://p:1": 4, "http://f:1": 8, "http://l:1": 8}
    assert admission.preempting == {"http://p:1", "http://l:1"}
    assert admission.low_values_first == {"http://l:1"}
    assert len([r for r in transport.requests if r.worker == "http://vllm:1"]) == 1
    preempts, fifo, _, vllm = workers
    # auto: above the cap where the engine preempts, below it elsewhere, none where unknown.
    assert (admission.limit(preempts, 0), admission.limit(preempts, 100)) == (4, 5)
    assert (admission.limit(fifo, 0), admission.limit(fifo, 100)) == (7, 8)
    assert admission.limit(vllm, 0) is None
