"""`cache_aware`: send a conversation where its prefix is likely cached, unless that would
overload the worker holding it. After SGLang's router (sgl-project/sglang
`sgl-model-gateway/src/policies/cache_aware.rs`), with these changes:

* The key is the whole conversation (every message rendered, see `request_key`), not only
  the first message, so turn N+1 follows turn N.
* The "approximate radix tree" is a chain of hashed fixed-size blocks of text (SGLang's
  later versions also match in blocks, `block_size`): block i's key is the hash of block i
  and block i-1's key, so a key names a whole prefix, one dict lookup per block, and LRU
  eviction of blocks bounds memory (`max_blocks` per model). Owners are a bit mask of the
  model's workers: one small int per block instead of a set.
* No hot spot. SGLang sends a cache miss to the worker with the smallest tree, breaks load
  ties by list order, and lets affinity win until one worker has 64 requests more than the
  idlest; users saw one worker get everything (sgl-project/sglang#14305 "death spiral",
  #15473 and #27547 "always selects the first worker", vllm-project/router#179), and so did
  we whenever prompts share a system prompt. Here a miss, and the choice among several
  holders, go to the least weighted load (in flight × learned latency) with random
  tie-breaks; and affinity has a bounded load (Mirrokni, Thorup, Zadimoghaddam,
  "Consistent Hashing with Bounded Loads", SODA 2018; HAProxy's `hash-balance-factor`):
  a holder keeps the request only while its requests in flight stay within
  `affinity_load_factor` × its fair share of all requests in flight (shares by learned
  speed, so a half-speed replica's share is half) plus `affinity_load_slack`. Above that
  the request goes to the least weighted load and the prefix gets a second home.
* Affinity has a price cap too: a holder whose learned time per output token is over
  `affinity_max_slowdown` × the fastest usable worker's does not get it.

SGLang's own imbalance rule stays: max_load - min_load > balance_abs_threshold and
max_load > balance_rel_threshold × min_load (loads = requests in flight) sends the request
to the least loaded worker whatever the cache says; the index still learns where it went.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Iterable, Sequence

from modelserver.config import RouterConfig
from modelserver.routing.policies.base import (
    Policy,
    fleet_default_latency,
    latency_estimate,
    least_loaded,
)
from modelserver.routing.request_key import RequestInfo
from modelserver.routing.worker import Worker

_TINY_LATENCY = 1e-9
"""Floor for a learned latency when it becomes a speed (1 / latency)."""


def block_keys(text: str, block_chars: int) -> list[int]:
    """One key per full block of `text`; key i stands for the whole prefix up to block i."""
    keys: list[int] = []
    key = 0
    for start in range(0, len(text) - block_chars + 1, block_chars):
        key = hash((key, text[start : start + block_chars]))
        keys.append(key)
    return keys


class PrefixIndex:
    """Which workers recently received which prefixes (of one model), LRU-bounded.

    Each worker URL gets one bit; a block's owners are an int mask. A forgotten worker's
    bit is retired, not swept out of every block at once (that would stall the event loop
    for a large index); matches ignore it, and retired bits are swept out together once
    `_SWEEP_AFTER` have piled up, after which they are free again."""

    _SWEEP_AFTER = 32

    def __init__(self, max_blocks: int) -> None:
        self.max_blocks = max_blocks
        self._owners: OrderedDict[int, int] = OrderedDict()
        self._bits: dict[str, int] = {}
        self._retired = 0
        self._retired_count = 0

    def __len__(self) -> int:
        return len(self._owners)

    def _bit(self, url: str) -> int:
        bit = self._bits.get(url)
        if bit is None:
            taken = self._retired
            for used in self._bits.values():
                taken |= used
            bit = ~taken & (taken + 1)  # the lowest free bit
            self._bits[url] = bit
        return bit

    def _mask(self, urls: Iterable[str]) -> int:
        mask = 0
        for url in urls:
            mask |= self._bits.get(url, 0)
        return mask

    def longest_match(self, keys: list[int], urls: Iterable[str]) -> tuple[set[str], int]:
        """The workers among `urls` holding the longest prefix of `keys`, and its length in
        blocks (0 and an empty set when none holds even the first block)."""
        alive = self._mask(urls)
        holders = 0
        matched = 0
        owners_of = self._owners
        for key in keys:
            common = owners_of.get(key, 0) & alive
            if not common:
                break
            alive = holders = common
            matched += 1
        if not holders:
            return set(), 0
        return {url for url, bit in self._bits.items() if bit & holders}, matched

    def insert(self, keys: list[int], url: str) -> None:
        bit = self._bit(url)
        owners_of = self._owners
        for key in keys:
            owners = owners_of.get(key)
            if owners is None:
                owners_of[key] = bit
            else:
                owners_of[key] = owners | bit
                owners_of.move_to_end(key)
        while len(owners_of) > self.max_blocks:
            owners_of.popitem(last=False)  # the least recently used block goes first

    def forget(self, url: str) -> None:
        """`url` holds nothing any more: retire its bit (swept later, in one pass)."""
        bit = self._bits.pop(url, None)
        if bit is None:
            return
        self._retired |= bit
        self._retired_count += 1
        if self._retired_count >= self._SWEEP_AFTER:
            self._sweep()

    def _sweep(self) -> None:
        keep = ~self._retired
        owners_of = self._owners
        for key in [k for k, owners in owners_of.items() if not owners & keep]:
            del owners_of[key]
        for key, owners in owners_of.items():
            owners_of[key] = owners & keep
        self._retired = self._retired_count = 0


class CacheAwarePolicy(Policy):
    name = "cache_aware"
    needs_text = True

    def __init__(self, config: RouterConfig, rng: random.Random) -> None:
        super().__init__(config, rng)
        self.settings = config.cache_aware
        self._indexes: dict[str, PrefixIndex] = {}

    def index(self, model: str) -> PrefixIndex:
        index = self._indexes.get(model)
        if index is None:
            index = self._indexes[model] = PrefixIndex(self.settings.max_blocks)
        return index

    def select(self, workers: Sequence[Worker], request: RequestInfo) -> Worker:
        settings = self.settings
        keys = block_keys(request.text, settings.block_chars) if request.text else []
        index = self.index(request.model)
        chosen: Worker | None = None
        if len(workers) > 1 and not self._imbalanced(workers) and keys:
            holders, matched = index.longest_match(keys, (w.url for w in workers))
            if matched and matched * settings.block_chars / len(request.text) > (
                settings.cache_threshold
            ):
                chosen = least_loaded([w for w in workers if w.url in holders], self.rng)
        if chosen is not None and not self._affinity_pays(chosen, workers):
            chosen = None  # the cache saves a prefill; this worker would cost more than that
        if chosen is None:
            chosen = least_loaded(workers, self.rng)
        if keys:
            index.insert(keys, chosen.url)
        return chosen

    def _affinity_pays(self, holder: Worker, workers: Sequence[Worker]) -> bool:
        """May `holder` take the request for its cached prefix? Not if its learned time per
        token is over `affinity_max_slowdown` x the fastest worker's, nor if one more
        request would put it past its bounded share of the requests in flight (this one
        included), shares weighted by learned speed."""
        settings = self.settings
        default = fleet_default_latency(workers)
        own = max(latency_estimate(holder, default), _TINY_LATENCY)
        fastest = own
        total_speed = 0.0
        in_flight = 1
        for worker in workers:
            latency = max(latency_estimate(worker, default), _TINY_LATENCY)
            fastest = min(fastest, latency)
            total_speed += 1.0 / latency
            in_flight += worker.in_flight
        if own > settings.affinity_max_slowdown * fastest:
            return False
        bound = settings.affinity_load_factor * in_flight * (1.0 / own) / total_speed
        return holder.in_flight + 1 <= bound + settings.affinity_load_slack

    def _imbalanced(self, workers: Sequence[Worker]) -> bool:
        loads = [w.in_flight for w in workers]
        low, high = min(loads), max(loads)
        return (
            high - low > self.settings.balance_abs_threshold
            and high > self.settings.balance_rel_threshold * low
        )

    def on_worker_removed(self, worker: Worker) -> None:
        index = self._indexes.get(worker.model)
        if index is not None:
            index.forget(worker.url)
