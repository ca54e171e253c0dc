"""The scheduler of the simulated engine: continuous batching over a radix prefix cache.

Like SGLang's scheduler (python/sglang/srt/managers/scheduler.py, `get_next_batch_to_run`),
each step is either a prefill batch or a decode batch, and prefill wins when a waiting
request can be admitted:

- waiting requests sit in a FIFO queue; the head is admitted while fewer than `max_running`
  run and SGLang's admission estimate has room for it (`PrefillAdder`,
  python/sglang/srt/managers/schedule_policy.py): the free plus evictable KV tokens, minus
  what the running requests will still need, counted as their remaining `max_new_tokens`
  (clipped at 4,096) times the *new-token ratio*, must exceed the head's uncached prompt
  plus its clipped `max_new_tokens`. The ratio starts at 0.7, falls by (0.7 - 0.7 x 0.14) /
  600 after every decode step down to 0.7 x 0.14, and is back at 0.7 when nothing runs
  (python/sglang/global_config.py and scheduler.py, v0.4). So the engine admits more than
  it could finish if every request ran to its `max_new_tokens`;
- KV tokens are taken when a step needs them, as SGLang's `alloc_token_slots`: a prefill
  step's new prompt tokens, one token per running request for a decode step. When the
  free pool is short, unlocked cache entries are evicted, least recently used first
  (radix_cache.py `evict`), counted as `sglang:evicted_tokens_total`;
- when a decode step still cannot get its tokens, requests are *retracted*
  (schedule_batch.py `retract_decode`): the one with the fewest output tokens (the longest
  prompt among equals) first, until the rest can decode 20 more steps; a retracted request
  frees its output's KV, its prompt stays cached but unlocked (evictable), it goes back to
  the queue and later prefills its prompt and output again. The new-token ratio is then
  reset to (tokens decoded + 20 x running) / their `max_new_tokens` (at most 1);
- a prefill step takes at most `chunked_prefill_size` uncached prompt tokens (8,192, or
  2,048 on a GPU under 25 GB); a longer prompt is prefilled in chunks over several steps;
  it yields each request's first token;
- the prompt tokens a prefill step computed join the cache when that step ends, as SGLang's
  `cache_unfinished_req` after the forward pass: a request arriving meanwhile with the same
  prefix reuses only what is computed already;
- a decode step gives every running request one more token;
- a finished request's prompt and output stay in the cache, unlocked.

A prompt SGLang would refuse (at least `max_req_input_len` = min(context length - 1, pool
- 1) - 5 tokens; managers/tp_worker.py, managers/utils.py `validate_input_length`) raises
`RequestTooLarge` with SGLang's message; a longer `max_new_tokens` than the pool leaves is
cut to what fits (scheduler.py `handle_generate_request`).

The engine keeps no clock: `begin_step(now)` plans a step and says how long it takes,
`complete_step(step, now)` applies it. The server calls them on the asyncio clock;
`drive_virtual` calls them on a virtual clock, so tests run hours of GPU time in
milliseconds and without sleeping.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from modelserver.sim.perf import CHUNKED_PREFILL_SIZE, CONTEXT_LENGTH, PerfModel
from modelserver.sim.priority import PriorityScheduling
from modelserver.sim.radix import Node, RadixCache
from modelserver.sim.tokenizer import output_ids

# SGLang's `--decode-log-interval` default: every this many decode steps it logs, and sets
# `sglang:gen_throughput` to the tokens decoded since the last time over the time since.
DECODE_LOG_INTERVAL = 40


class RequestTooLarge(ValueError):
    """The prompt is at least SGLang's `max_req_input_len` (its 400 Bad Request)."""


@dataclass(frozen=True)
class SchedulerConfig:
    """SGLang's scheduler constants the simulated engine follows (v0.4 defaults; sources in
    the module docstring)."""

    chunked_prefill_size: int = CHUNKED_PREFILL_SIZE
    context_length: int = CONTEXT_LENGTH
    init_new_token_ratio: float = 0.7  # global_config.default_init_new_token_ratio
    min_new_token_ratio_factor: float = 0.14  # default_min_new_token_ratio_factor
    new_token_ratio_decay_steps: int = 600  # default_new_token_ratio_decay_steps
    clip_max_new_tokens: int = 4096  # schedule_policy.CLIP_MAX_NEW_TOKENS_ESTIMATION
    retract_decode_steps: int = 20  # global_config.retract_decode_steps
    estimate_new_tokens: bool = True
    """False: reserve every request's whole `max_new_tokens` at admission (never retracts;
    the simulator before issue 14)."""

    @property
    def min_new_token_ratio(self) -> float:
        return self.init_new_token_ratio * self.min_new_token_ratio_factor

    @property
    def new_token_ratio_decay(self) -> float:
        return (self.init_new_token_ratio - self.min_new_token_ratio) / (
            self.new_token_ratio_decay_steps)


@dataclass(eq=False)
class Request:
    """One generation (or embedding, with `max_new_tokens` 0) request inside the engine."""

    tokens: list[int]
    max_new_tokens: int
    arrival: float
    words: list[int] = field(default_factory=list)  # output word indices, see tokenizer
    spaced_first: bool = False  # continues a text: the first word has its leading space
    stream: bool = False  # notify after every step, not only at the end
    log_metrics: bool = True  # health checks are not counted, as in SGLang
    notify: Callable[[Request], None] | None = None
    priority: int = 0  # SGLang's request field; only read with priority scheduling (priority.py)

    cached_tokens: int = 0
    prefill_left: int = 0
    generated: int = 0
    retractions: int = 0
    context: list[int] = field(default_factory=list)  # what it prefills: prompt (+ output)
    admitted_at: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    done: bool = False
    _node: Node | None = None

    @property
    def prompt_tokens(self) -> int:
        return len(self.tokens)


@dataclass
class Step:
    """A planned forward step: which requests it advances and how long it takes."""

    duration: float
    prefill: list[tuple[Request, int]]  # request, prompt tokens computed in this step
    decode: list[Request]


@dataclass
class EngineTotals:
    """Counters behind SGLang's `sglang:*_total` metrics."""

    requests: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    cached_tokens: int = 0
    retracted_requests: int = 0
    retracted_input_tokens: int = 0
    retracted_output_tokens: int = 0


class Engine:
    def __init__(self, perf: PerfModel, max_running: int, cache_tokens: int,
                 scheduler: SchedulerConfig | None = None) -> None:
        if max_running < 1:
            raise ValueError(f"max_running must be at least 1, got {max_running}")
        self.perf = perf
        self.max_running = max_running
        self.config = scheduler or SchedulerConfig()
        self.cache = RadixCache(cache_tokens)
        # tp_worker.py: max_req_len = min(context_len - 1, max_total_num_tokens - 1),
        # max_req_input_len = max_req_len - 5.
        self.max_req_len = min(self.config.context_length - 1, cache_tokens - 1)
        self.max_req_input_len = self.max_req_len - 5
        self.queue: deque[Request] = deque()
        self.running: list[Request] = []
        self.new_token_ratio = self.config.init_new_token_ratio
        self.last_retracted = 0  # requests retracted by the last decode step: the gauge
        self.totals = EngineTotals()
        self.last_hit_rate = 0.0  # of the last prefill batch, as sglang:cache_hit_rate
        self.last_gen_throughput = 0.0  # tokens/s, as sglang:gen_throughput
        self.steps = 0
        self.scheduling: PriorityScheduling | None = None  # None: FIFO (SGLang's fcfs)
        self._decode_steps = 0
        self._decoded_since_log = 0
        self._last_log_at: float | None = None

    # --- requests in and out -------------------------------------------------------------

    def submit(self, request: Request) -> None:
        if request.prompt_tokens == 0:
            raise ValueError("the prompt is empty")
        if request.prompt_tokens >= self.max_req_input_len:
            raise RequestTooLarge(
                f"Input length ({request.prompt_tokens} tokens) exceeds the maximum allowed "
                f"length ({self.max_req_input_len} tokens). Use a shorter input or enable "
                "--allow-auto-truncate."
            )
        request.max_new_tokens = min(request.max_new_tokens,
                                     self.max_req_len - request.prompt_tokens - 1)
        self.queue.append(request)

    def abort(self, request: Request) -> None:
        """Drop a request whose client went away."""
        if request.done:
            return
        request.done = True
        if request._node is None:
            with contextlib.suppress(ValueError):
                self.queue.remove(request)
            return
        self._release(request)
        self.running.remove(request)

    def has_work(self) -> bool:
        return bool(self.queue or self.running)

    def output_tokens_held(self) -> int:
        """KV of running requests' outputs (not in the cache until they finish)."""
        return sum(r.generated for r in self.running)

    def free_tokens(self) -> int:
        """KV tokens neither cached nor held: SGLang's `available_size()`."""
        return self.cache.budget - self.cache.size - self.output_tokens_held()

    def used_tokens(self) -> int:
        """KV tokens that cannot be freed: running requests' prompts and outputs so far.

        As SGLang's `max_total_num_tokens - (available + evictable)` (scheduler
        `_get_token_info`): cached tokens no request holds count as free.
        """
        return self.cache.locked_size + self.output_tokens_held()

    def token_usage(self) -> float:
        """`used_tokens` over the pool size: sglang:token_usage."""
        return self.used_tokens() / self.cache.budget

    def flush_cache(self) -> bool:
        """Empty the prefix cache; refused (False) while anything runs or waits, as SGLang."""
        if self.has_work():
            return False
        self.cache.reset()
        return True

    # --- stepping ------------------------------------------------------------------------

    def begin_step(self, now: float) -> Step | None:
        """Plan the next step at time `now`; None when there is nothing to do."""
        if self._last_log_at is None:
            self._last_log_at = now  # SGLang starts its decode-stats clock with the scheduler
        if not self.running:
            self.new_token_ratio = self.config.init_new_token_ratio  # idle: scheduler.py
        budget = self.config.chunked_prefill_size
        prefill: list[tuple[Request, int]] = []
        for request in self.running:  # chunked prefills carry on first
            if request.prefill_left and budget:
                take = min(request.prefill_left, budget)
                prefill.append((request, take))
                budget -= take
        if self.scheduling is not None:
            self.scheduling.before_admission(self, now)
        room = self._admission_room()
        admitted_hits = admitted_new = 0
        while self.queue and budget and len(self.running) < self.max_running:
            request = self.queue[0]
            need = self._admit(request, now, room)
            if need is None:
                break  # FIFO: the head waits for room, nobody overtakes it
            room -= need
            self.queue.popleft()
            self.running.append(request)
            take = min(request.prefill_left, budget)
            prefill.append((request, take))
            budget -= take
            admitted_hits += request.cached_tokens
            admitted_new += request.prefill_left
        if admitted_hits + admitted_new:
            self.last_hit_rate = admitted_hits / (admitted_hits + admitted_new)
        if prefill:
            new_tokens = sum(take for _, take in prefill)
            self._make_room(new_tokens)
            context = sum(len(r.context) - r.prefill_left + take for r, take in prefill)
            return Step(self.perf.prefill_time(new_tokens, context), prefill, [])
        decode = [r for r in self.running if not r.prefill_left]
        if not decode:
            return None
        self.last_retracted = 0
        if self._make_room(len(decode)) < len(decode):
            decode = self._retract(decode)
        context = sum(r.prompt_tokens + r.generated for r in decode)
        return Step(self.perf.decode_time(len(decode), context), [], decode)

    def complete_step(self, step: Step, now: float) -> None:
        """Apply a planned step that ended at `now`: emit tokens, finish requests."""
        self.steps += 1
        finished = False
        for request, take in step.prefill:
            if request.done:
                continue
            request.prefill_left -= take
            self._cache_computed_prompt(request, now)
            if request.prefill_left:
                continue
            if request.first_token_at is None:
                request.first_token_at = now
            if request.generated < request.max_new_tokens:
                request.generated += 1
            if request.generated >= request.max_new_tokens:
                self._finish(request, now)
                finished = True
            elif request.stream and request.notify:
                request.notify(request)
        if step.decode:
            self._count_decode_step(step, now)
            config = self.config
            if config.estimate_new_tokens and not self.last_retracted:
                self.new_token_ratio = max(self.new_token_ratio - config.new_token_ratio_decay,
                                           config.min_new_token_ratio)
        for request in step.decode:
            if request.done:
                continue
            request.generated += 1
            if request.generated >= request.max_new_tokens:
                self._finish(request, now)
                finished = True
            elif request.stream and request.notify:
                request.notify(request)
        if finished:
            self.running = [r for r in self.running if not r.done]

    # --- internals -----------------------------------------------------------------------

    def _count_decode_step(self, step: Step, now: float) -> None:
        self._decode_steps += 1
        self._decoded_since_log += sum(1 for r in step.decode if not r.done)
        if self._decode_steps % DECODE_LOG_INTERVAL or self._last_log_at is None:
            return
        gap = now - self._last_log_at
        if gap > 0:
            self.last_gen_throughput = self._decoded_since_log / gap
        self._last_log_at = now
        self._decoded_since_log = 0

    def _estimate(self, request: Request) -> int:
        return min(request.max_new_tokens - request.generated, self.config.clip_max_new_tokens)

    def _admission_room(self) -> float:
        """SGLang's `rem_total_tokens` at the start of a round: free plus evictable tokens,
        minus the running requests' prompt still to compute and their estimated output."""
        ratio = self.new_token_ratio if self.config.estimate_new_tokens else 1.0
        pending = sum(r.prefill_left + self._estimate(r) * ratio for r in self.running)
        return self.cache.budget - self.cache.locked_size - self.output_tokens_held() - pending

    def _admit(self, request: Request, now: float, room: float) -> int | None:
        """Admit the head if `room` allows; returns what it takes from the room, or None."""
        cache = self.cache
        request.context = request.tokens + output_ids(request.words[: request.generated])
        matched = cache.match(request.context)
        # At least one token is computed, to get the logits of the next output token.
        cached = min(matched, len(request.context) - 1)
        need = len(request.context) - cached + self._estimate(request)
        if need >= room:
            return None
        prefix_node, _ = cache.insert(request.context[:cached], now)
        cache.lock(prefix_node)  # a running request's prefix is not evictable
        request._node = prefix_node
        if not request.retractions:
            request.cached_tokens = cached
        request.prefill_left = len(request.context) - cached
        request.admitted_at = now
        return need

    def _make_room(self, tokens: int) -> int:
        """Free pool tokens for a step, evicting unlocked cache LRU; how many are free."""
        short = tokens - self.free_tokens()
        if short > 0:
            self.cache.evict(short)
        return self.free_tokens()

    def _retract(self, decode: list[Request]) -> list[Request]:
        """Decode is out of KV: send requests back to the queue until the rest can decode
        `retract_decode_steps` more steps (schedule_batch.py `retract_decode`)."""
        config = self.config
        order = sorted(decode, key=lambda r: (r.generated, -r.prompt_tokens), reverse=True)
        retracted: list[Request] = []
        while len(order) > 1 and self.free_tokens() < len(order) * config.retract_decode_steps:
            request = order.pop()
            retracted.append(request)
            self.running.remove(request)
            self.totals.retracted_requests += 1
            self.totals.retracted_input_tokens += request.prompt_tokens
            self.totals.retracted_output_tokens += request.generated
            self._release(request)  # its output's KV is freed with it
            request.retractions += 1
            request.prefill_left = 0
            short = len(order) * config.retract_decode_steps - self.free_tokens()
            if short > 0:
                self.cache.evict(short)
        self.queue.extend(retracted)
        self.last_retracted = len(retracted)
        if retracted:
            decoded = sum(r.generated for r in order)
            wanted = sum(r.max_new_tokens for r in order)
            self.new_token_ratio = min(
                1.0, (decoded + config.retract_decode_steps * len(order)) / max(wanted, 1))
        return order

    def _cache_computed_prompt(self, request: Request, now: float) -> None:
        """Put the prompt computed so far in the cache, locked for the request."""
        assert request._node is not None
        done = len(request.context) - request.prefill_left
        node, _ = self.cache.insert(request.context[:done], now)
        self.cache.lock(node)
        self.cache.unlock(request._node)
        request._node = node

    def _release(self, request: Request) -> None:
        assert request._node is not None
        self.cache.unlock(request._node)
        request._node = None

    def _finish(self, request: Request, now: float) -> None:
        request.done = True
        request.finished_at = now
        if request.generated:
            # The output joins the cache (within the room reserved for it), so the next turn
            # of a conversation, which repeats prompt + answer, finds it.
            self.cache.insert(request.tokens + output_ids(request.words[: request.generated]), now)
        self._release(request)
        if request.log_metrics:
            totals = self.totals
            totals.requests += 1
            totals.prompt_tokens += request.prompt_tokens
            totals.generation_tokens += request.generated
            totals.cached_tokens += request.cached_tokens
        if request.notify:
            request.notify(request)


class VirtualClock:
    """A clock that moves only when told to: `clock()` is the current virtual time."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def drive_virtual(engine: Engine, clock: VirtualClock, arrivals: Iterable[Request] = ()) -> None:
    """Run the engine on `clock` until every request in `arrivals` (and any already
    submitted) has finished. Requests join the queue at their `arrival` time; a request that
    arrives during a step waits for the next one, as on a real GPU."""
    pending = deque(sorted(arrivals, key=lambda r: r.arrival))
    while True:
        while pending and pending[0].arrival <= clock.now:
            engine.submit(pending.popleft())
        step = engine.begin_step(clock.now)
        if step is None:
            if not pending:
                return
            clock.now = pending[0].arrival
            continue
        clock.now += step.duration
        engine.complete_step(step, clock.now)
