"""SGLang's priority scheduling, as the simulated engine does it.

Facts from sgl-project/sglang (python/sglang/srt/server_args.py, managers/schedule_policy.py,
managers/scheduler.py):

- a request carries an integer `priority` (the OpenAI routes and /generate take the field);
- `--enable-priority-scheduling` orders the waiting queue by priority, then by arrival;
  larger values first unless `--schedule-low-priority-values-first`;
- with it, a waiting request that finds no room may preempt the running request of the
  lowest priority when the two differ by more than `--priority-scheduling-preemption-threshold`
  (default 10); `--disable-priority-preemption` turns that off. The preempted request frees
  its KV cache (what it computed stays in the radix cache, unlocked) and waits again; when it
  runs again it recomputes what the cache lost and carries on from the tokens it already
  produced.

The engine's hook is `Engine.scheduling` (None: FIFO, SGLang's default `fcfs`), called once
per step before new requests are admitted.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from modelserver.sim.tokenizer import output_ids

if TYPE_CHECKING:
    from modelserver.sim.config import SimConfig
    from modelserver.sim.engine import Engine, Request

DEFAULT_PREEMPTION_THRESHOLD = 10
"""SGLang's `--priority-scheduling-preemption-threshold` default."""


def scheduling_of(config: SimConfig) -> PriorityScheduling | None:
    if not config.priority_scheduling:
        return None
    return PriorityScheduling(
        config.low_priority_values_first, config.priority_preemption, config.preemption_threshold
    )


@dataclass
class PriorityScheduling:
    low_values_first: bool = False
    preemption: bool = True
    preemption_threshold: int = DEFAULT_PREEMPTION_THRESHOLD
    preempted: int = 0
    """Requests preempted so far."""

    def rank(self, request: Request) -> int:
        """Smaller runs sooner."""
        return request.priority if self.low_values_first else -request.priority

    def before_admission(self, engine: Engine, now: float) -> None:
        """Order the waiting queue, then make room for a waiting request that outranks a
        running one by more than the threshold."""
        if not engine.queue:
            return
        engine.queue = deque(sorted(engine.queue, key=lambda r: (self.rank(r), r.arrival)))
        if not self.preemption:
            return
        room = engine.max_running - len(engine.running)
        for waiting in list(engine.queue):
            if room > 0:
                room -= 1  # the engine admits it itself
                continue
            if not engine.running:
                return
            victim = max(engine.running, key=lambda r: (self.rank(r), -r.arrival))
            if self.rank(victim) - self.rank(waiting) <= self.preemption_threshold:
                return  # the queue is in order: nobody later outranks this victim either
            self._preempt(engine, victim, now)

    def _preempt(self, engine: Engine, victim: Request, now: float) -> None:
        if victim.generated:  # what it computed stays cached, as SGLang caches on retract
            engine.cache.insert(victim.tokens + output_ids(victim.words[: victim.generated]), now)
        engine._release(victim)
        engine.running.remove(victim)
        victim.prefill_left = 0
        engine.queue.append(victim)  # after the request it makes room for
        self.preempted += 1
