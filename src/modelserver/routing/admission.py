"""The router's queue: requests wait here when every worker of their model is at its cap.

Admission, per model:

- a worker's running cap is configured (`[router.admission] max_running`) or learned from the
  engine's `/server_info` (`max_running_requests`); a worker with neither is never held back;
- the router's own count of requests in flight on a worker (streams until their last byte)
  is what fills it; a request goes to a worker only while that count is under the cap;
- requests of the batch class (priority 0 and below) leave `reserved_slots` of each worker
  free, so a batch flood never holds every running slot and an interactive request finds one;
- when nothing has room the request waits. Higher priority is served first; within one
  priority, tenants share by tokens served, weighted: the Virtual Token Counter of Sheng et
  al., "Fairness in Serving Large Language Models" (OSDI 2024, Algorithm 2): the backlogged
  tenant whose counter is lowest goes next; a tenant's counter grows by the tokens it is
  served over its weight (prompt tokens ×1 at dispatch, output tokens ×2 as they are
  counted, the paper's w_p = 1, w_q = 2); a tenant that was idle joins at the lowest
  counter among those waiting, so idle time is no credit to spend later;
- a place freed (a request ends, a worker comes back) goes to the next waiter at once,
  reserved for it until it runs; a waiter past its deadline, or whose caller left
  (cancelled), leaves the queue at once and frees its place.

Everything runs on the router's event loop; the clock is injected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from modelserver._tenant_config import PriorityValue, priority_number
from modelserver.config import Fleet, RouterConfig
from modelserver.errors import DeadlineExceeded, WorkerError
from modelserver.routing.policies import usable_workers
from modelserver.routing.transport import Transport
from modelserver.routing.worker import Worker

log = logging.getLogger(__name__)

PROMPT_TOKEN_COST = 1.0
OUTPUT_TOKEN_COST = 2.0
"""VTC's w_p and w_q (Sheng et al., OSDI 2024, section 4): an output token costs the GPU
about twice what a prompt token does."""
CHARS_PER_TOKEN = 4
"""Prompt tokens are estimated from the body's size at dispatch (no tokenizer here)."""
PRIORITY_BACKENDS = frozenset({"sglang", "sim"})
SERVER_INFO = "/server_info"
DEFAULT_TENANT = "default"
Asked = tuple[str, str | None, PriorityValue | None, float]
"""What a caller asked of the queue: model, tenant, priority, weight."""


@dataclass(eq=False)
class Ticket:
    """One request's place in the queue."""

    model: str
    tenant: str
    priority: int
    weight: float = 1.0
    prompt_tokens: int = 0
    granted: bool = False
    """A place was freed and reserved for this request; it has not taken it yet."""
    waited_s: float = 0.0
    explicit: bool = False
    """The caller named the priority (else the default applies)."""
    _future: asyncio.Future[None] | None = None


@dataclass
class TenantUsage:
    """What the queue knows of one tenant (read by metrics and `/admin/tenants`)."""

    counter: float = 0.0
    """VTC virtual counter: weighted tokens served."""
    weight: float = 1.0
    dispatched: int = 0
    running: int = 0
    """Attempts at engines now (while any run, the tenant is not idle)."""
    waiting: int = 0
    queued_total: int = 0
    """Requests that had to wait."""
    queue_seconds: float = 0.0
    left_queue: dict[str, int] = field(default_factory=dict)
    """Waiters that left before their turn, by reason: deadline, caller_left."""


class Admission:
    """The queue of every model of one router. `enabled` false: everything goes at once."""

    def __init__(
        self,
        config: RouterConfig,
        models: Mapping[str, Sequence[Worker]],
        clock: Callable[[], float],
    ) -> None:
        self.settings = config.admission
        self.enabled = bool(self.settings.enabled)
        self._readmit = config.latency.readmit_after_s
        self._models = models
        self._clock = clock
        self.default_priority = priority_number(self.settings.default_priority)
        self.learned_caps: dict[str, int] = {}
        """worker URL -> `max_running_requests` its engine reported."""
        self._no_cap: set[str] = set()
        self.preempting: set[str] = set()
        self.low_values_first: set[str] = set()
        """Worker URLs whose engine serves small priority values first."""
        """Worker URLs whose engine preempts by priority (learned from /server_info)."""
        self.priority_models: set[str] = set()
        """Models whose engines take SGLang's request field `priority` (sglang, sim)."""
        self.tenants: dict[str, TenantUsage] = {}
        self._queues: dict[str, dict[int, dict[str, deque[Ticket]]]] = {}
        self._reserved: dict[str, int] = {}
        self._last_counter = 0.0

    # -- what the router asks ---------------------------------------------------------------

    def ticket(
        self,
        model: str,
        tenant: str | None,
        priority: PriorityValue | None,
        weight: float,
        body_bytes: int,
    ) -> Ticket:
        """`body_bytes`: the request body's size, for an estimate of its prompt tokens."""
        number = self.default_priority if priority is None else priority_number(priority)
        tokens = max(1, body_bytes // CHARS_PER_TOKEN)
        return Ticket(
            model, tenant or DEFAULT_TENANT, number, weight, tokens, explicit=priority is not None
        )

    def configure_for(self, fleet: Fleet) -> None:
        """On by default when the fleet has tenants; which models take `priority`."""
        if self.settings.enabled is None:
            self.enabled = bool(fleet.gateway.tenants)
        self.priority_models = {
            m.name for m in fleet.models if m.backend in PRIORITY_BACKENDS
        }

    def cap(self, worker: Worker) -> int | None:
        if self.settings.max_running is not None:
            return self.settings.max_running
        return self.learned_caps.get(worker.url)

    def limit(self, worker: Worker, priority: int) -> int | None:
        """Most requests of this priority the worker may hold; None: no limit known."""
        cap = self.cap(worker)
        if cap is None:
            return None
        reserved = self.settings.reserved_slots
        where = self.settings.reserved_where
        if where == "above_cap" or (where == "auto" and worker.url in self.preempting):
            # The engine preempts a batch request for them: batch may fill the cap.
            return cap if priority <= 0 else cap + reserved
        if priority <= 0:  # the batch class leaves room for every class above it
            return max(1, cap - reserved)
        return cap

    def with_room(self, candidates: list[Worker], ticket: Ticket) -> list[Worker]:
        """The candidates this request may go to now; [] means: wait (`wait`)."""
        if not self.enabled:
            return candidates
        model = ticket.model
        reserved = self._reserved.get(model, 0)
        granted = ticket.granted
        if granted:  # its own reserved place is taken now (and was charged when granted)
            ticket.granted = False
            reserved -= 1
            self._reserved[model] = reserved
        elif self._waiting_at_or_above(model, ticket.priority):
            return []  # no overtaking: those waiting longer at this priority or above go first
        roomy = [w for w in candidates if self._has_room(w, ticket.priority)]
        if not roomy:
            return []
        if reserved and self._free(roomy, ticket.priority) <= reserved:
            return []  # the free places are held for waiters already granted one
        if not granted:
            self._dispatched(ticket)
        self._usage(ticket.tenant).running += 1
        return roomy

    async def wait(self, ticket: Ticket, remaining_s: float) -> None:
        """Wait for a place. Raises DeadlineExceeded when the deadline passes first; a
        cancelled caller (it left) leaves the queue at once. Every `recheck_s` it looks again
        for room that came without a wake-up (a worker back in rotation), keeping its place."""
        if remaining_s <= 0:
            self._left(ticket, "deadline")
            raise _queue_deadline(ticket, 0.0)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        ticket._future = future
        self._enqueue(ticket)
        deadline = loop.time() + remaining_s
        start = self._clock()
        try:
            while not future.done():
                left = deadline - loop.time()
                if left <= 0:
                    self._dequeue(ticket, "deadline")
                    raise _queue_deadline(ticket, self._clock() - start)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        asyncio.shield(future), min(left, self.settings.recheck_s)
                    )
                if not future.done():
                    self.wake(ticket.model)
        except asyncio.CancelledError:  # the caller left
            self._dequeue(ticket, "caller_left")
            raise
        finally:
            waited = self._clock() - start
            ticket.waited_s += waited
            self._usage(ticket.tenant).queue_seconds += waited

    def finished(self, model: str, tenant: str, output_tokens: int | None) -> None:
        """An attempt ended (its worker's count went down): charge its output tokens to
        the tenant and give the freed place to the next waiter."""
        usage = self.tenants.get(tenant)
        if usage is not None:
            usage.running = max(0, usage.running - 1)
            if output_tokens:
                usage.counter += OUTPUT_TOKEN_COST * output_tokens / usage.weight
        self.wake(model)

    def wake(self, model: str) -> None:
        """Grant the places free now to the waiters, in order."""
        queues = self._queues.get(model)
        if not queues:
            return
        workers = usable_workers(self._models.get(model, ()), self._clock(), self._readmit)
        for priority in sorted(queues, reverse=True):
            by_tenant = queues[priority]
            while by_tenant:
                free = self._free(workers, priority) - self._reserved.get(model, 0)
                if free <= 0:
                    break
                ticket = self._pop_next(by_tenant)
                self._reserved[model] = self._reserved.get(model, 0) + 1
                ticket.granted = True
                # Charged now, not when it runs: the next grant of this same wake-up must
                # already see this tenant's counter grown.
                self._dispatched(ticket)
                assert ticket._future is not None
                if not ticket._future.done():
                    ticket._future.set_result(None)
            if not by_tenant:
                del queues[priority]

    def engine_body(self, worker: Worker, payload: bytes, ticket: Ticket) -> bytes:
        """The body for `worker` with SGLang's request field `priority` set (SGLang and
        simulated engines only, by their backend or `priority_models`: vLLM refuses a
        priority unless started with `--scheduling-policy priority`): the one the caller's
        tenant has, or with admission on the default one, so no caller sets its own. An
        engine that schedules small values first gets it negated, as SGLang's own clients
        do."""
        takes = worker.backend in PRIORITY_BACKENDS or worker.model in self.priority_models
        if not takes or not (self.enabled or ticket.explicit):
            return payload
        try:
            parsed = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return payload
        if not isinstance(parsed, dict):
            return payload
        value = -ticket.priority if worker.url in self.low_values_first else ticket.priority
        return orjson.dumps({**parsed, "priority": value})

    async def learn_caps(
        self, workers: Sequence[Worker], transport: Transport, headers: Mapping[str, Any]
    ) -> None:
        """Ask each worker whose cap is unknown for `max_running_requests` (/server_info).
        An engine without that route (vLLM, llama.cpp) stays without a cap."""
        if not self.enabled or self.settings.max_running is not None:
            return
        for worker in workers:
            if worker.url in self.learned_caps or worker.url in self._no_cap:
                continue
            try:
                answer = await transport.send(
                    "GET", worker.url + SERVER_INFO, headers=headers.get(worker.url), timeout_s=2.0
                )
                data = await answer.read()
            except WorkerError:
                continue
            if answer.status != 200:
                self._no_cap.add(worker.url)  # no such route: not asked again
                continue
            try:
                info = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(info, dict):
                continue
            cap = info.get("max_running_requests")
            if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0:
                self.learned_caps[worker.url] = cap
                log.info("%s runs at most %d requests at once", worker.url, cap)
            # SGLang's flags (server_args.py): larger priority values first by default; an
            # engine scheduling small values first gets our values negated (engine_body).
            if info.get("schedule_low_priority_values_first") is True:
                self.low_values_first.add(worker.url)
            if (
                info.get("enable_priority_scheduling") is True
                and info.get("disable_priority_preemption") is not True
            ):
                self.preempting.add(worker.url)

    def waiting(self, model: str | None = None) -> int:
        return sum(
            len(q)
            for m, queues in self._queues.items()
            if model is None or m == model
            for by_tenant in queues.values()
            for q in by_tenant.values()
        )

    # -- internals --------------------------------------------------------------------------

    def _usage(self, tenant: str) -> TenantUsage:
        usage = self.tenants.get(tenant)
        if usage is None:
            usage = self.tenants[tenant] = TenantUsage()
        return usage

    def _has_room(self, worker: Worker, priority: int) -> bool:
        limit = self.limit(worker, priority)
        return limit is None or worker.in_flight < limit

    def _free(self, workers: Sequence[Worker], priority: int) -> int:
        free = 0
        for worker in workers:
            limit = self.limit(worker, priority)
            if limit is None:
                return 1 << 30
            free += max(0, limit - worker.in_flight)
        return free

    def _waiting_at_or_above(self, model: str, priority: int) -> bool:
        queues = self._queues.get(model)
        return queues is not None and any(p >= priority for p in queues)

    def _dispatched(self, ticket: Ticket) -> None:
        usage = self._usage(ticket.tenant)
        usage.weight = ticket.weight
        usage.dispatched += 1
        usage.counter += PROMPT_TOKEN_COST * ticket.prompt_tokens / ticket.weight
        self._last_counter = usage.counter

    def _enqueue(self, ticket: Ticket) -> None:
        queues = self._queues.setdefault(ticket.model, {})
        by_tenant = queues.setdefault(ticket.priority, {})
        usage = self._usage(ticket.tenant)
        usage.weight = ticket.weight
        if ticket.tenant not in by_tenant and usage.running == 0:
            # VTC's lift: an idle tenant (nothing waiting, nothing running) joins at the
            # lowest counter of those waiting (or the last one served), never below its own.
            # One with requests running keeps its counter: it was served all along, and a
            # tenant of few callers would otherwise lose its share at each empty queue.
            counters = [self.tenants[t].counter for t in by_tenant]
            usage.counter = max(usage.counter, min(counters) if counters else self._last_counter)
        by_tenant.setdefault(ticket.tenant, deque()).append(ticket)
        usage.waiting += 1
        if ticket.waited_s == 0:
            usage.queued_total += 1

    def _pop_next(self, by_tenant: dict[str, deque[Ticket]]) -> Ticket:
        tenant = min(by_tenant, key=lambda t: self.tenants[t].counter)
        queue = by_tenant[tenant]
        ticket = queue.popleft()
        if not queue:
            del by_tenant[tenant]
        self.tenants[tenant].waiting -= 1
        return ticket

    def _dequeue(self, ticket: Ticket, reason: str | None) -> None:
        """Take a waiter out (deadline, caller left, or to look again); a place already
        reserved for it goes to the next one."""
        queues = self._queues.get(ticket.model, {})
        by_tenant = queues.get(ticket.priority, {})
        queue = by_tenant.get(ticket.tenant)
        if queue is not None and ticket in queue:
            queue.remove(ticket)
            self.tenants[ticket.tenant].waiting -= 1
            if not queue:
                del by_tenant[ticket.tenant]
            if not by_tenant:
                queues.pop(ticket.priority, None)
        if reason is None:
            return
        if ticket.granted:
            ticket.granted = False
            self._reserved[ticket.model] -= 1
            self.wake(ticket.model)
        self._left(ticket, reason)

    def _left(self, ticket: Ticket, reason: str) -> None:
        left = self._usage(ticket.tenant).left_queue
        left[reason] = left.get(reason, 0) + 1


def _queue_deadline(ticket: Ticket, waited_s: float) -> DeadlineExceeded:
    return DeadlineExceeded(
        f"model {ticket.model!r}: the request deadline passed after {waited_s:.1f} s"
        " in the queue (every worker was at its running cap)",
        ["queue: deadline"],
        timed_out=True,
    )
