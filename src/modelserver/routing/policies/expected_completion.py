"""`expected_completion`: send a request where it would finish first.

For each candidate worker the policy adds up, in seconds:

* the prefill still queued ahead of it there (uncached prompt tokens sent there, drained
  at the learned prefill speed: a leaky bucket, since the router sees a request's end but
  not its first token) and the wait for a running slot when the worker is at its
  `max_running_requests`;
* the prefill of the part of this prompt the worker does not hold: exact from the engine's
  KV-cache events while its stream is whole (routing/kv_events.py), else the approximate
  tree of `cache_aware` (characters, converted at the prompt's characters per token);
* its own decode: expected output tokens × the worker's time per token at the batch it
  would join, `decode_s × (1 + growth × batch)`.

`decode_s`, `growth` and the prefill time per token are learned per worker from traffic (a
weighted least-squares line of seconds per output token against the requests in flight at
dispatch; time to first token over uncached tokens) and seeded before the first answer by a
short streamed generation per worker (`prepare`), so an opening burst does not treat a
half-speed engine as an equal. Affinity keeps `cache_aware`'s bounded load only as a cap: a
worker over its speed-weighted share ignores its cache, so a hot prefix gets a second home.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from modelserver.config import RouterConfig
from modelserver.routing.kv_events import Endpoints, KvEventIndex
from modelserver.routing.policies.base import Policy
from modelserver.routing.policies.cache_aware import PrefixIndex, block_keys
from modelserver.routing.request_key import RequestInfo
from modelserver.routing.speed_probe import SpeedSample
from modelserver.routing.worker import Worker
from modelserver.sim.tokenizer import apply_chat_template, encode

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4.0
"""Prompt size estimate when no tokenizer is configured."""
_DEFAULT_MAX_RUNNING = 256  # SGLang's usual cap when /server_info does not say
_MAX_PENDING = 4096
_PROBE_ROUNDS = 2
_MIN_PREFILL_SAMPLE = 1024
"""Prompt tokens a request's prefill (and those ahead of it) must reach for its time to
first token to teach the prefill speed."""
_MIN_BATCH_SPREAD = 25.0
"""Variance of the batch sizes seen (requests²) before the slope is fitted, not assumed:
under a steady load the batch moves by a few requests and noise would set the slope."""


@dataclass
class Dispatch:
    """What the policy assumed when it sent a request to a worker."""

    uncached: int
    output: int
    batch: int
    keys: list[int]
    """Block keys of its text: its prefix will be cached there once its prefill ran."""
    prefill_ahead: int = 0
    """Uncached prompt tokens sent there before it and not prefilled yet (estimated)."""
    prefill_s: float = 0.0
    """The prefill seconds per token assumed when it was sent."""


class WorkerModel:
    """Learned speed of one worker: decode seconds per token against its batch, prefill
    seconds per uncached prompt token. Sufficient statistics with exponential forgetting."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.samples = 0
        self._w = self._b = self._bb = self._t = self._bt = 0.0
        self.prefill_s: float | None = None
        self.max_running = _DEFAULT_MAX_RUNNING
        self.backlog = 0.0
        """Uncached prompt tokens sent here and not prefilled yet, as of `backlog_at`: a
        leaky bucket drained at the learned prefill speed (the router does not see each
        request's first token, only its end)."""
        self.backlog_at = 0.0
        self.dispatched: dict[int, Dispatch] = {}
        self.coming: dict[int, int] = {}
        """Block key -> requests in flight here whose text holds it (cached soon)."""

    def add_coming(self, keys: list[int], step: int) -> None:
        coming = self.coming
        for key in keys:
            count = coming.get(key, 0) + step
            if count > 0:
                coming[key] = count
            else:
                coming.pop(key, None)

    def coming_blocks(self, keys: list[int]) -> int:
        """How many leading blocks of `keys` requests in flight here will have cached."""
        matched = 0
        for key in keys:
            if key not in self.coming:
                break
            matched += 1
        return matched

    def drained_backlog(self, now: float, prefill_s: float) -> float:
        elapsed = max(0.0, now - self.backlog_at)
        return max(0.0, self.backlog - elapsed / max(prefill_s, 1e-9))

    def observe_decode(self, seconds_per_token: float, batch: int) -> None:
        keep = 1.0 - self.alpha
        self._w = self._w * keep + 1.0
        self._b = self._b * keep + batch
        self._bb = self._bb * keep + batch * batch
        self._t = self._t * keep + seconds_per_token
        self._bt = self._bt * keep + batch * seconds_per_token
        self.samples += 1

    def observe_prefill(self, seconds_per_token: float) -> None:
        if self.prefill_s is None:
            self.prefill_s = seconds_per_token
        else:
            self.prefill_s += self.alpha * (seconds_per_token - self.prefill_s)

    def line(self, growth_prior: float) -> tuple[float, float] | None:
        """(seconds per token at batch 0, added seconds per request in the batch)."""
        if not self._w:
            return None
        mean_b = self._b / self._w
        mean_t = self._t / self._w
        spread = self._bb / self._w - mean_b * mean_b
        if spread > _MIN_BATCH_SPREAD:  # batch sizes far enough apart to fit the slope
            slope = max(0.0, (self._bt / self._w - mean_b * mean_t) / spread)
        else:
            slope = growth_prior * mean_t / (1.0 + growth_prior * mean_b)
        base = max(mean_t - slope * mean_b, 0.05 * mean_t)
        return base, slope


class ExpectedCompletionPolicy(Policy):
    name = "expected_completion"
    needs_text = True

    def __init__(
        self,
        config: RouterConfig,
        rng: random.Random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(config, rng)
        self._clock = clock
        self.settings = config.expected_completion
        self._indexes: dict[str, PrefixIndex] = {}
        self._models: dict[str, WorkerModel] = {}
        self._output_tokens: dict[str, float] = {}
        self.kv = KvEventIndex(self._endpoints_for, config.kv_events.replay_timeout_s)
        self.kv_enabled = config.kv_events.enabled
        self._tokenize = _sim_tokens if self.settings.tokenizer == "sim" else None
        self._forgetting: set[asyncio.Task[None]] = set()
        self.last_estimates: dict[str, float] = {}
        """The estimates behind the last choice (URL -> seconds), for `status` and tests."""
        self._pending: OrderedDict[int, dict[str, Dispatch]] = OrderedDict()
        """Per request being routed (by id): what each candidate would cost, for
        `on_request_start`; dropped when the request's attempt ends."""

    # --- what the policy knows ---------------------------------------------------------

    def model_of(self, worker: Worker) -> WorkerModel:
        model = self._models.get(worker.url)
        if model is None:
            model = self._models[worker.url] = WorkerModel(self.settings.learning_alpha)
        return model

    def _endpoints_for(self, url: str) -> Endpoints | None:
        return events_endpoints(url, self.config)

    def index(self, model: str) -> PrefixIndex:
        index = self._indexes.get(model)
        if index is None:
            index = self._indexes[model] = PrefixIndex(self.config.cache_aware.max_blocks)
        return index

    # --- choosing ---------------------------------------------------------------------

    def select(self, workers: Sequence[Worker], request: RequestInfo) -> Worker:
        estimate = self.last_estimates = self.estimates(workers, request)
        best = min(estimate.values())
        tied = [w for w in workers if estimate[w.url] <= best * (1 + 1e-9)]
        chosen = tied[0] if len(tied) == 1 else self.rng.choice(tied)
        keys = self._pending[id(request)][chosen.url].keys
        if keys:
            self.index(request.model).insert(keys, chosen.url)
        return chosen

    def estimates(self, workers: Sequence[Worker], request: RequestInfo) -> dict[str, float]:
        """Expected seconds until `request` would be answered, per worker URL; also notes
        what each would cost (`_pending`) for `on_request_start`."""
        text = request.text
        tokens = self._tokens(request)
        prompt = len(tokens) if tokens is not None else int(len(text) / CHARS_PER_TOKEN) + 1
        output = self._expected_output(request)
        keys = self._keys(request)
        cached = self._cached(workers, request, tokens, prompt, keys)
        capped = self._over_share(workers)
        lines = {w.url: self._line(w, workers) for w in workers}
        now = self._clock()
        result: dict[str, float] = {}
        pending = self._pending.setdefault(id(request), {})  # a hedge's copy adds to it
        self._pending.move_to_end(id(request))
        while len(self._pending) > _MAX_PENDING:  # chosen but never started (cancelled)
            self._pending.popitem(last=False)
        for worker in workers:
            model = self.model_of(worker)
            base, slope = lines[worker.url]
            prefill_s = model.prefill_s or base * self.settings.prefill_ratio
            hits = 0 if worker.url in capped else cached.get(worker.url, 0)
            uncached = max(prompt - hits, 1)
            batch = worker.in_flight
            backlog = model.drained_backlog(now, prefill_s)
            wait = backlog * prefill_s
            if batch >= model.max_running:  # a slot frees as fast as the batch finishes
                over = batch - model.max_running + 1
                wait += over * output * (base + slope * model.max_running) / model.max_running
            running = min(batch, model.max_running)
            decode = output * (base + slope * (running + 1))
            # What it costs the requests running there: its prefill stalls their decode
            # steps, and each of their steps grows by one request's share.
            others = running * (uncached * prefill_s + slope * output)
            result[worker.url] = wait + uncached * prefill_s + decode + others
            pending[worker.url] = Dispatch(
                uncached, output, batch, keys, int(backlog), prefill_s
            )
        return result

    def _line(self, worker: Worker, workers: Sequence[Worker]) -> tuple[float, float]:
        growth = self.settings.batch_growth
        line = self.model_of(worker).line(growth)
        if line is not None:
            return line
        known = [m for w in workers if (m := self.model_of(w).line(growth)) is not None]
        if known:  # not measured yet: the fleet's mean, neither shunned nor flooded
            base = sum(b for b, _ in known) / len(known)
            return base, sum(s for _, s in known) / len(known)
        return 1.0, growth

    def _cached(
        self,
        workers: Sequence[Worker],
        request: RequestInfo,
        tokens: list[int] | None,
        prompt: int,
        keys: list[int],
    ) -> dict[str, int]:
        """Cached prompt tokens per worker: exact where its event stream is whole (plus the
        prefixes of requests in flight there, cached by the time this one's prefill runs),
        else the approximate tree's longest match; characters converted to tokens."""
        cached: dict[str, int] = {}
        approximate: list[Worker] = []
        tokens_per_block = self.config.cache_aware.block_chars * prompt / max(len(request.text), 1)
        for worker in workers:
            exact = None
            if self.kv_enabled and tokens is not None:
                exact = self.kv.cached_tokens(worker.url, tokens)
            if exact is None:
                approximate.append(worker)
            else:
                coming = self.model_of(worker).coming_blocks(keys)
                cached[worker.url] = max(exact, min(prompt, int(coming * tokens_per_block)))
        if approximate and keys:
            holders, matched = self.index(request.model).longest_match(
                keys, (w.url for w in approximate)
            )
            for url in holders:
                cached[url] = min(prompt, int(matched * tokens_per_block))
        return cached

    def _over_share(self, workers: Sequence[Worker]) -> set[str]:
        """Workers whose requests in flight, one more included, pass their bounded share
        (`cache_aware`'s affinity bound): their cache is not counted for this request."""
        settings = self.config.cache_aware
        speeds = {w.url: 1.0 / max(self._line(w, workers)[0], 1e-9) for w in workers}
        total_speed = sum(speeds.values())
        in_flight = 1 + sum(w.in_flight for w in workers)
        return {
            w.url
            for w in workers
            if w.in_flight + 1
            > settings.affinity_load_factor * in_flight * speeds[w.url] / total_speed
            + settings.affinity_load_slack
        }

    def _keys(self, request: RequestInfo) -> list[int]:
        if not request.text:
            return []
        return block_keys(request.text, self.config.cache_aware.block_chars)

    def _tokens(self, request: RequestInfo) -> list[int] | None:
        if self._tokenize is None or request.body is None:
            return None
        return self._tokenize(request.path, request.body)

    def _expected_output(self, request: RequestInfo) -> int:
        learned = self._output_tokens.get(request.model)
        expected = int(learned) if learned else self.settings.default_output_tokens
        body = request.body
        if isinstance(body, dict):
            asked = body.get("max_completion_tokens") or body.get("max_tokens")
            if isinstance(asked, int) and asked > 0:
                return min(asked, expected) if learned else asked
        return max(expected, 1)

    # --- learning ---------------------------------------------------------------------

    def on_request_start(self, worker: Worker, request: RequestInfo) -> None:
        pending = self._pending.get(id(request), {}).get(worker.url)
        if pending is None:  # not chosen through `select` (a retry's forced pick)
            pending = Dispatch(1, self._expected_output(request), worker.in_flight - 1, [])
        model = self.model_of(worker)
        model.dispatched[id(request)] = pending
        now = self._clock()
        model.backlog = model.drained_backlog(now, pending.prefill_s) + pending.uncached
        model.backlog_at = now
        model.add_coming(pending.keys, 1)

    def on_request_complete(self, worker: Worker, request: RequestInfo, ok: bool) -> None:
        self._pending.pop(id(request), None)
        model = self.model_of(worker)
        dispatch = model.dispatched.pop(id(request), None)
        if dispatch is not None:
            model.add_coming(dispatch.keys, -1)

    def on_attempt_measured(
        self,
        worker: Worker,
        request: RequestInfo,
        e2e_s: float,
        ttft_s: float | None,
        output_tokens: int | None,
    ) -> None:
        """A successful attempt's times (called before `on_request_complete`)."""
        model = self.model_of(worker)
        dispatch = model.dispatched.get(id(request))
        if dispatch is None or not output_tokens:
            return
        alpha = self.settings.learning_alpha
        mean = self._output_tokens.get(request.model)
        self._output_tokens[request.model] = (
            float(output_tokens) if mean is None else mean + alpha * (output_tokens - mean)
        )
        if ttft_s is not None and output_tokens > 1:
            model.observe_decode((e2e_s - ttft_s) / (output_tokens - 1), dispatch.batch + 1)
            # Its first token waited for the prefills ahead of it and then its own. Only a
            # long prefill says its speed: a short one's TTFT is mostly the decode step it
            # waited behind, and would make every cache miss look dear.
            prefilled = dispatch.prefill_ahead + dispatch.uncached
            if prefilled >= _MIN_PREFILL_SAMPLE:
                model.observe_prefill(ttft_s / prefilled)
        else:
            model.observe_decode(e2e_s / output_tokens, dispatch.batch + 1)

    def on_worker_removed(self, worker: Worker) -> None:
        self._models.pop(worker.url, None)
        index = self._indexes.get(worker.model)
        if index is not None:
            index.forget(worker.url)
        if self.kv_enabled and worker.url in self.kv.subscribers:
            # Its subscription ends in the background; kept referenced until it has.
            task = asyncio.get_running_loop().create_task(self.kv.forget(worker.url))
            self._forgetting.add(task)
            task.add_done_callback(self._forgetting.discard)

    # --- start and end ----------------------------------------------------------------

    async def prepare(
        self,
        workers: Sequence[Worker],
        probe: Callable[[Worker], Awaitable[SpeedSample | None]],
    ) -> None:
        """Before the first request: subscribe to KV events, measure each worker once."""
        if self.kv_enabled:
            for worker in workers:
                self.kv.blocks(worker.url)
        if not self.settings.speed_probe:
            return
        chat = [w for w in workers if w.kind == "chat"]
        rounds = [await asyncio.gather(*(probe(w) for w in chat)) for _ in range(_PROBE_ROUNDS)]
        for i, worker in enumerate(chat):
            samples = [sample for r in rounds if (sample := r[i]) is not None]
            if not samples:
                continue
            # The fastest round: a busy host only ever makes a probe slower than the engine.
            best = min(samples, key=lambda sample: sample.decode_s_per_token)
            model = self.model_of(worker)
            model.observe_decode(best.decode_s_per_token, 1)
            if best.max_running:
                model.max_running = best.max_running

    async def aclose(self) -> None:
        for task in list(self._forgetting):
            await task
        await self.kv.close()


def events_endpoints(url: str, config: RouterConfig) -> Endpoints | None:
    """Where the worker at `url` publishes KV events (`[router.kv_events]`)."""
    settings = config.kv_events
    if not settings.enabled:
        return None
    parts = urlsplit(url)
    events = settings.endpoints.get(url)
    replay = settings.replay_endpoints.get(url)
    if events is None:
        if parts.hostname is None or parts.port is None:
            return None
        if parts.port + max(settings.events_port_offset, settings.replay_port_offset) > 65535:
            return None  # no such port: the launcher gave this engine no events either
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        events = f"tcp://{host}:{parts.port + settings.events_port_offset}"
        replay = f"tcp://{host}:{parts.port + settings.replay_port_offset}"
    return Endpoints(events, replay, settings.topic)


def _sim_tokens(path: str, body: Any) -> list[int] | None:
    """The simulated engine's token ids for a request body (its Llama 3 stand-in)."""
    if not isinstance(body, dict):
        return None
    messages = body.get("messages")
    if isinstance(messages, list):
        if not all(isinstance(m, dict) for m in messages):
            return None
        return apply_chat_template(
            messages, continue_final_message=bool(body.get("continue_final_message"))
        )
    for key in ("prompt", "text"):
        value = body.get(key)
        if isinstance(value, str):
            return encode(value)
    return None
