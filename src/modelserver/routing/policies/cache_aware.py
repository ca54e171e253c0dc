"""`cache_aware`: send a conversation where its prefix is likely cached, unless load is
unbalanced. After SGLang's router (sgl-project/sglang
`sgl-model-gateway/src/policies/cache_aware.rs`), with three changes:

* The key is the whole conversation (every message rendered, see `request_key`), not only
  the first message, so turn N+1 follows turn N.
* The "approximate radix tree" is a chain of hashed fixed-size blocks of text (SGLang's
  later versions also match in blocks, `block_size`): block i's key is the hash of block i
  and block i-1's key, so a key names a whole prefix, one dict lookup per block, and LRU
  eviction of blocks bounds memory (`max_blocks` per model).
* No hot spot when loads tie. SGLang sends a cache miss to the worker with the smallest
  tree and breaks load ties by list order; users saw one worker get everything
  (sgl-project/sglang#14305 "death spiral", #15473 and #27547 "always selects the first
  worker", vllm-project/router#179). Here a miss, and the choice among several workers
  holding the same prefix, go to the least weighted load (in flight × learned latency)
  with random tie-breaks; in-flight counts rise the moment a worker is picked.

A fourth change: affinity has a price cap. A worker holding the prefix keeps the request
only while its learned time per output token is within `affinity_max_slowdown` of the
fastest usable worker's; otherwise the request goes to the least weighted load, so a
slower replica holding hot prefixes is not fed past its speed (SGLang's absolute threshold
of 64 requests in flight never trips on a small fleet). Time per token, not in-flight
counts: a batching engine serves a few more requests at almost no cost, so a count says
little until its batch is full, and by then the learned time per token has grown too.

Imbalance, as in SGLang: max_load - min_load > balance_abs_threshold and
max_load > balance_rel_threshold × min_load (loads = requests in flight); then the least
loaded worker is used whatever the cache says, and the tree still learns where it went.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Sequence

from modelserver.config import RouterConfig
from modelserver.routing.policies.base import (
    Policy,
    fleet_default_latency,
    latency_estimate,
    least_loaded,
)
from modelserver.routing.request_key import RequestInfo
from modelserver.routing.worker import Worker


def block_keys(text: str, block_chars: int) -> list[int]:
    """One key per full block of `text`; key i stands for the whole prefix up to block i."""
    keys: list[int] = []
    key = 0
    for start in range(0, len(text) - block_chars + 1, block_chars):
        key = hash((key, text[start : start + block_chars]))
        keys.append(key)
    return keys


class PrefixIndex:
    """Which workers recently received which prefixes (of one model), LRU-bounded."""

    def __init__(self, max_blocks: int) -> None:
        self.max_blocks = max_blocks
        self._owners: OrderedDict[int, set[str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._owners)

    def longest_match(self, keys: list[int], urls: set[str]) -> tuple[set[str], int]:
        """The workers among `urls` holding the longest prefix of `keys`, and its length in
        blocks (0 and an empty set when none holds even the first block)."""
        holders: set[str] = set()
        matched = 0
        alive = urls
        for key in keys:
            owners = self._owners.get(key)
            if not owners:
                break
            common = alive & owners
            if not common:
                break
            alive = holders = common
            matched += 1
        return holders, matched

    def insert(self, keys: list[int], url: str) -> None:
        owners_of = self._owners
        for key in keys:
            owners = owners_of.get(key)
            if owners is None:
                owners_of[key] = {url}
            else:
                owners.add(url)
                owners_of.move_to_end(key)
        while len(owners_of) > self.max_blocks:
            owners_of.popitem(last=False)  # the least recently used block goes first

    def forget(self, url: str) -> None:
        for key in [k for k, owners in self._owners.items() if url in owners]:
            owners = self._owners[key]
            owners.discard(url)
            if not owners:
                del self._owners[key]


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
            holders, matched = index.longest_match(keys, {w.url for w in workers})
            if matched and matched * settings.block_chars / len(request.text) > (
                settings.cache_threshold
            ):
                chosen = least_loaded([w for w in workers if w.url in holders], self.rng)
        if chosen is not None and self._too_slow(chosen, workers):
            chosen = None  # the cache saves a prefill; this worker costs more than that
        if chosen is None:
            chosen = least_loaded(workers, self.rng)
        if keys:
            index.insert(keys, chosen.url)
        return chosen

    def _too_slow(self, holder: Worker, workers: Sequence[Worker]) -> bool:
        default = fleet_default_latency(workers)
        fastest = min(latency_estimate(w, default) for w in workers)
        return latency_estimate(holder, default) > self.settings.affinity_max_slowdown * fastest

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
