"""The scheduler of the simulated engine: continuous batching over a radix prefix cache.

Like SGLang's scheduler (python/sglang/srt/managers/scheduler.py, `get_next_batch_to_run`),
each step is either a prefill batch or a decode batch, and prefill wins when a waiting
request can be admitted:

- waiting requests sit in a FIFO queue; the head is admitted while fewer than `max_running`
  run and the KV pool has room for its uncached prompt plus its `max_new_tokens` (unlocked
  cache entries are evicted, least recently used first, to make room);
- a prefill step takes at most `CHUNKED_PREFILL_SIZE` uncached prompt tokens; a longer
  prompt is prefilled in chunks over several steps; it yields each request's first token;
- the prompt tokens a prefill step computed join the cache when that step ends, as SGLang's
  `cache_unfinished_req` after the forward pass: a request arriving meanwhile with the same
  prefix reuses only what is computed already;
- a decode step gives every running request one more token;
- a finished request's prompt and output stay in the cache, unlocked.

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

from modelserver.sim.perf import CHUNKED_PREFILL_SIZE, PerfModel
from modelserver.sim.radix import Node, RadixCache
from modelserver.sim.tokenizer import output_ids

# SGLang's `--decode-log-interval` default: every this many decode steps it logs, and sets
# `sglang:gen_throughput` to the tokens decoded since the last time over the time since.
DECODE_LOG_INTERVAL = 40


class RequestTooLarge(ValueError):
    """The request can never fit in the KV pool, however empty."""


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

    cached_tokens: int = 0
    prefill_left: int = 0
    generated: int = 0
    held: int = 0  # KV tokens promised to it beyond the cache: prompt still to compute, output
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


class Engine:
    def __init__(self, perf: PerfModel, max_running: int, cache_tokens: int) -> None:
        if max_running < 1:
            raise ValueError(f"max_running must be at least 1, got {max_running}")
        self.perf = perf
        self.max_running = max_running
        self.cache = RadixCache(cache_tokens)
        self.queue: deque[Request] = deque()
        self.running: list[Request] = []
        self.reserved = 0  # KV tokens promised to running requests, not in the cache yet
        self.totals = EngineTotals()
        self.last_hit_rate = 0.0  # of the last prefill batch, as sglang:cache_hit_rate
        self.last_gen_throughput = 0.0  # tokens/s, as sglang:gen_throughput
        self.steps = 0
        self._decode_steps = 0
        self._decoded_since_log = 0
        self._last_log_at: float | None = None

    # --- requests in and out -------------------------------------------------------------

    def submit(self, request: Request) -> None:
        need = request.prompt_tokens + request.max_new_tokens
        if need > self.cache.budget:
            raise RequestTooLarge(
                f"the request needs {need} KV tokens ({request.prompt_tokens} prompt + "
                f"{request.max_new_tokens} new) but the KV pool holds {self.cache.budget}"
            )
        if request.prompt_tokens == 0:
            raise ValueError("the prompt is empty")
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

    def used_tokens(self) -> int:
        """KV tokens that cannot be freed: running requests' prompts and outputs so far.

        As SGLang's `max_total_num_tokens - (available + evictable)` (scheduler
        `_get_token_info`): cached tokens no request holds count as free.
        """
        return self.cache.locked_size + sum(r.generated for r in self.running)

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
        budget = CHUNKED_PREFILL_SIZE
        prefill: list[tuple[Request, int]] = []
        for request in self.running:  # chunked prefills carry on first
            if request.prefill_left and budget:
                take = min(request.prefill_left, budget)
                prefill.append((request, take))
                budget -= take
        admitted_hits = admitted_new = 0
        while self.queue and budget and len(self.running) < self.max_running:
            request = self.queue[0]
            if not self._admit(request, now):
                break  # FIFO: the head waits for room, nobody overtakes it
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
            context = sum(r.prompt_tokens - r.prefill_left + take for r, take in prefill)
            return Step(self.perf.prefill_time(new_tokens, context), prefill, [])
        decode = [r for r in self.running if not r.prefill_left]
        if not decode:
            return None
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
            self._cache_computed_prompt(request, take, now)
            if request.prefill_left:
                continue
            request.first_token_at = now
            if request.max_new_tokens:
                request.generated = 1
            if request.generated >= request.max_new_tokens:
                self._finish(request, now)
                finished = True
            elif request.stream and request.notify:
                request.notify(request)
        if step.decode:
            self._count_decode_step(step, now)
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

    def _admit(self, request: Request, now: float) -> bool:
        cache = self.cache
        matched = cache.match(request.tokens)
        # Hold the cached prefix while making room, so eviction cannot take it.
        prefix_node, _ = cache.insert(request.tokens[:matched], now)
        cache.lock(prefix_node)
        # At least one prompt token is computed, to get the logits of the first output token.
        cached = min(matched, request.prompt_tokens - 1)
        need = request.prompt_tokens - cached + request.max_new_tokens
        shortfall = need - (cache.budget - cache.size - self.reserved)
        if shortfall > 0 and cache.evict(shortfall) < shortfall:
            cache.unlock(prefix_node)
            return False
        request._node = prefix_node
        request.held = need
        request.cached_tokens = cached
        request.prefill_left = request.prompt_tokens - cached
        request.admitted_at = now
        self.reserved += need
        return True

    def _cache_computed_prompt(self, request: Request, computed: int, now: float) -> None:
        """Put the prompt computed so far in the cache; its `computed` new tokens move out of
        the request's promise (fewer join the tree if another request computed them too)."""
        assert request._node is not None
        done = request.prompt_tokens - request.prefill_left
        node, _ = self.cache.insert(request.tokens[:done], now)
        self.cache.lock(node)
        self.cache.unlock(request._node)
        request._node = node
        request.held -= computed
        self.reserved -= computed

    def _release(self, request: Request) -> None:
        assert request._node is not None
        self.cache.unlock(request._node)
        request._node = None
        self.reserved -= request.held
        request.held = 0

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
